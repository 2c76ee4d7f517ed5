"""The split of a sync's scope into key ranges, one dynamic output (and so one step) each."""

from collections.abc import Iterator
from typing import Protocol

import dagster as dg

from etl_defs.steps.retries import retried_while_unavailable
from etl_defs.sync import KeyRange, SyncScope, even_points, ranges_between


class SplittableEndpoints(Protocol):
    """Endpoints that can say where to cut their scope into key ranges of about equal size."""

    scope: SyncScope

    def split_points(self, parts: int) -> list[str]:
        """Up to `parts - 1` keys to cut the scope at (`split_sync` cuts a set of keys at their own quantiles)."""
        ...


def range_mapping_key(index: int, count: int) -> str:
    """The step key suffix of a range step: `range_2_of_4`."""
    return f"range_{index + 1}_of_{count}"


def split_sync(
    context: dg.OpExecutionContext, parallelism: int, endpoints: SplittableEndpoints
) -> Iterator[dg.DynamicOutput[KeyRange]]:
    """Cut the sync's scope into at most `parallelism` key ranges, one dynamic output each.

    A set of keys is cut at its own quantiles; the whole table (or one user's carts) at the
    split points the endpoints take from the data.
    """
    scope = endpoints.scope
    with retried_while_unavailable(context):
        keys = scope.keys
        points = even_points(keys, parallelism) if keys is not None else endpoints.split_points(parallelism)
    ranges = ranges_between(points)
    if parallelism > 1:
        shown = ", ".join(key_range.describe() for key_range in ranges)
        context.log.info(
            f"{scope.describe()}: {len(ranges)} key range{'s' if len(ranges) != 1 else ''} "
            f"(parallelism {parallelism}): {shown}"
        )
    for index, key_range in enumerate(ranges):
        yield dg.DynamicOutput(key_range, mapping_key=range_mapping_key(index, len(ranges)))
