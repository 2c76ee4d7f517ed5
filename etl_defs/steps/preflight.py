"""A sync's first step: do its databases answer, and do their tables and indexes fit?"""

from collections.abc import Callable, Sequence

import dagster as dg

from etl_defs.steps.retries import retried_while_unavailable
from resources import MongoResource, PostgresResource


def check_sync_ready(
    context: dg.OpExecutionContext,
    *,
    pipeline: str,
    databases: Sequence[MongoResource | PostgresResource],
    target: str,
    find_problems: Callable[[], list[str]],
) -> None:
    """Ping each database (retried while unavailable), then fail the run, without retries, when
    `find_problems` reports a schema or index the sync cannot work with."""
    with retried_while_unavailable(context):
        for database in databases:
            context.log.info(f"{database.display_name} answered in {database.ping() * 1000:.1f} ms")
        problems = find_problems()
    if problems:
        raise dg.Failure(
            description=f"{target} cannot take the {pipeline} sync: " + "; ".join(problems), allow_retries=False
        )
