"""Dagster glue shared by both syncs' ops: preflight, the split into key ranges, advisory lock, retries,
termination, and the summed figures as metadata."""

import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import dagster as dg

from etl_defs.run_config import SyncOpConfig
from etl_defs.sync import (
    Change,
    KeyRange,
    SyncEndpoints,
    SyncReport,
    SyncScope,
    SyncSpec,
    SyncStopped,
    even_points,
    ranges_between,
    run_sync,
)
from etl_defs.tags import OLDEST_CHANGE_TAG
from resources import DatabaseUnavailableError, MongoResource, PostgresResource

#: A database that went away is retried this often, with exponential backoff.
MAX_CONNECTION_RETRIES = 3
RETRY_BASE_DELAY_S = 2.0
#: How often, at most, a sync asks the instance whether its run is being terminated.
TERMINATION_POLL_S = 1.0
_TERMINATING = (dg.DagsterRunStatus.CANCELING, dg.DagsterRunStatus.CANCELED)
#: A step still running while its run is already FAILURE was orphaned: run monitoring found the run's
#: worker dead (or past its max runtime) and failed the run, and a retry may be on its way.
_ORPHANED = (dg.DagsterRunStatus.FAILURE,)
#: The metadata key that says what a sync covered (`SyncScope.kind`): `table`, `user` or `keys`.
SCOPE_KEY = "scope"


class SplittableEndpoints(Protocol):
    """Endpoints that can say where to cut their scope into key ranges of about equal size."""

    scope: SyncScope

    def split_points(self, parts: int) -> list[str]:
        """Up to `parts - 1` keys to cut the scope at (`split_sync` cuts a set of keys at their own quantiles)."""
        ...


def report_metadata(report: SyncReport, scope: SyncScope) -> dict[str, Any]:
    """Numeric figures (same keys every run, so the UI plots them) plus the scope and sample keys."""
    metadata: dict[str, Any] = dict(report.figures())
    metadata["dry_run"] = report.dry_run
    metadata[SCOPE_KEY] = scope.kind
    if scope.keys is not None:
        metadata["keys"] = len(scope.keys)
    metadata["sample_keys"] = dg.MetadataValue.json(
        {change.value: report.samples[change] for change in Change if report.samples[change]}
    )
    metadata["rejections"] = dg.MetadataValue.json([{"key": r.key, "reason": r.reason} for r in report.rejections])
    return metadata


@contextmanager
def retried_while_unavailable(
    context: dg.OpExecutionContext, after_failure: str = "", before_retry: Callable[[], None] | None = None
) -> Iterator[None]:
    """Turn `DatabaseUnavailableError` into a step retry with exponential backoff, and,
    once retries run out, into a `dg.Failure` whose message names the database.

    Only unreachable databases are retried; bad data never is. `before_retry` runs just
    before a retry is requested (to record where the retry can resume).
    """
    try:
        yield
    except DatabaseUnavailableError as error:
        attempt = context.retry_number
        if attempt >= MAX_CONNECTION_RETRIES:
            # A Failure's description is the step failure's message: the database, not a wrapper.
            note = f"; {after_failure}" if after_failure else ""
            raise dg.Failure(
                description=f"{error} (gave up after {attempt} retries{note})", allow_retries=False
            ) from error
        wait = RETRY_BASE_DELAY_S * 2**attempt
        if before_retry is not None:
            before_retry()
        context.log.warning(f"{error}; retry {attempt + 1} of {MAX_CONNECTION_RETRIES} in {wait:.0f}s")
        raise dg.RetryRequested(max_retries=MAX_CONNECTION_RETRIES, seconds_to_wait=wait) from error


def check_sync_ready(
    context: dg.OpExecutionContext,
    *,
    pipeline: str,
    databases: Sequence[MongoResource | PostgresResource],
    target: str,
    find_problems: Callable[[], list[str]],
) -> None:
    """A sync's preflight: ping each database (retried while unavailable), then fail the run,
    without retries, when `find_problems` reports a schema or index the sync cannot work with."""
    with retried_while_unavailable(context):
        for database in databases:
            context.log.info(f"{database.display_name} answered in {database.ping() * 1000:.1f} ms")
        problems = find_problems()
    if problems:
        raise dg.Failure(
            description=f"{target} cannot take the {pipeline} sync: " + "; ".join(problems), allow_retries=False
        )


@dataclass(frozen=True, slots=True)
class RangeResult:
    """What one range step of a sync did: its report, when it ran, and the CPU its process spent."""

    key_range: KeyRange
    report: SyncReport
    started_at: float  # epoch seconds
    finished_at: float
    cpu_s: float
    pid: int

    def figures(self) -> dict[str, Any]:
        """The range and its main figures, for the run's `ranges` metadata."""
        report = self.report
        return {
            "range": self.key_range.describe(),
            "source_rows": report.source_rows,
            **{change.value: report.counts[change] for change in Change},
            "inserted": report.inserted,
            "updated": report.updated,
            "deleted": report.deleted,
            "duration_s": round(report.duration_s, 3),
            "cpu_s": round(self.cpu_s, 3),
        }


def range_mapping_key(index: int, count: int) -> str:
    """The step key suffix of a range step: `range_2_of_4`."""
    return f"range_{index + 1}_of_{count}"


def split_sync(
    context: dg.OpExecutionContext, config: SyncOpConfig, endpoints: SplittableEndpoints
) -> Iterator[dg.DynamicOutput[KeyRange]]:
    """Cut the sync's scope into at most `config.parallelism` key ranges, one dynamic output each.

    A set of keys is cut at its own quantiles; the whole table (or one user's carts) at the
    split points the endpoints take from the data.
    """
    scope = endpoints.scope
    with retried_while_unavailable(context):
        if scope.keys is not None:
            points = even_points(scope.keys, config.parallelism)
        else:
            points = endpoints.split_points(config.parallelism)
    ranges = ranges_between(points)
    if config.parallelism > 1:
        shown = ", ".join(key_range.describe() for key_range in ranges)
        context.log.info(
            f"{scope.describe()}: {len(ranges)} key range{'s' if len(ranges) != 1 else ''} "
            f"(parallelism {config.parallelism}): {shown}"
        )
    for index, key_range in enumerate(ranges):
        yield dg.DynamicOutput(key_range, mapping_key=range_mapping_key(index, len(ranges)))


def run_range_op(
    context: dg.OpExecutionContext,
    config: SyncOpConfig,
    *,
    spec: SyncSpec,
    endpoints: SyncEndpoints,
    lock_db: PostgresResource,
    asset_key: dg.AssetKey,
) -> dg.Output[RangeResult]:
    """Sync one key range of a run (the whole table when the run is not split), the Dagster way.

    A real run holds the pipeline's advisory lock for its run id: the range steps of one run
    share it, and no other run, even one that bypasses the run queue, writes at the same
    time. A database that is unreachable is retried with backoff, and the retry resumes
    after the last key written (see `save_checkpoint`); bad data is never retried (it is
    rejected record by record instead).
    """
    scope = endpoints.scope
    context.log.info(f"{spec.name} sync of {scope.describe()}")
    fault_note = (
        "batches written before the fault stay written; run the sync again once the database is back to repair the rest"
    )
    report = resumed_report(context, spec, config, asset_key, scope.key_range) or SyncReport(
        pipeline=spec.name, dry_run=config.dry_run
    )
    started_at, cpu_before = time.time(), time.process_time()

    def sync(lock_still_held: Callable[[], None] | None = None) -> SyncReport:
        return run_sync(
            spec,
            endpoints,
            batch_size=config.batch_size,
            dry_run=config.dry_run,
            log=context.log,
            batch_pause_s=config.batch_pause_ms / 1000,
            stop_requested=make_stop_check(context),
            before_write=lock_still_held,
            report=report,
        )

    range_note = "" if scope.key_range.is_whole else f" (range {scope.key_range.describe()})"
    try:
        with retried_while_unavailable(
            context,
            after_failure=fault_note + range_note,
            before_retry=lambda: save_checkpoint(context, report, asset_key, scope.key_range),
        ):
            if config.dry_run:
                report = sync()
            else:
                with lock_db.advisory_lock(spec.name, holder=context.run_id) as lock_still_held:
                    report = sync(lock_still_held)
    except SyncStopped as stopped:
        # Dagster's own way to end a terminated step: the run ends CANCELED, not FAILED.
        context.log.warning(str(stopped))
        raise dg.DagsterExecutionInterruptedError(str(stopped)) from None
    result = RangeResult(
        scope.key_range, report, started_at, time.time(), time.process_time() - cpu_before, os.getpid()
    )
    context.log.info(
        f"{spec.name} sync of keys in {scope.key_range.describe()}: {result.cpu_s:.2f}s of CPU in process {result.pid}"
    )
    return dg.Output(result, metadata={**report.figures(), "cpu_s": round(result.cpu_s, 3)})


def report_sync_op(
    context: dg.OpExecutionContext,
    config: SyncOpConfig,
    *,
    spec: SyncSpec,
    scope: SyncScope,
    results: Sequence[RangeResult],
    asset_key: dg.AssetKey,
) -> dg.Output[dict[str, Any]]:
    """Sum the range steps' reports into the run's one report and, unless a dry run, one materialization."""
    ordered = sorted(results, key=lambda result: (result.key_range.low is not None, result.key_range.low or ""))
    report = SyncReport.merged(spec.name, config.dry_run, [result.report for result in ordered])
    if len(ordered) == 1:
        report.duration_s = ordered[0].report.duration_s  # the sync's own run time, as before the split
    else:  # the wall time from the first range's start to the last one's end
        report.duration_s = max(r.finished_at for r in ordered) - min(r.started_at for r in ordered)
    if len(ordered) > 1:
        context.log.info(f"{len(ordered)} ranges, summed: {report.summary()}")
    metadata = report_metadata(report, scope)
    metadata["parallelism"] = len(ordered)
    metadata["ranges"] = dg.MetadataValue.json([result.figures() for result in ordered])
    if not config.dry_run:
        lag = change_lag_s(context)
        if lag is not None:
            metadata["change_lag_s"] = round(lag, 3)
            context.log.info(
                f"repaired {report.inserted + report.updated} of {len(scope.keys or ())} changed keys; "
                f"{lag:.1f}s from the oldest change to this commit"
            )
        context.log_event(dg.AssetMaterialization(asset_key=asset_key, metadata=metadata))
    return dg.Output(report.figures(), metadata=metadata)


def change_lag_s(context: dg.OpExecutionContext) -> float | None:
    """Seconds from the oldest change a change sensor requested this run for, to now (None: no such tag)."""
    oldest = context.run.tags.get(OLDEST_CHANGE_TAG)
    if oldest is None:
        return None
    try:
        return (datetime.now(UTC) - datetime.fromisoformat(oldest)).total_seconds()
    except ValueError:
        context.log.warning(f"tag {OLDEST_CHANGE_TAG}={oldest!r} is not an ISO timestamp: no lag recorded")
        return None


#: The metadata key of the observation that records how far an interrupted sync got.
CHECKPOINT_KEY = "sync_checkpoint"
#: How many of the asset's latest observations a retry looks through for its range's checkpoint.
_CHECKPOINT_LOOKBACK = 200


def save_checkpoint(
    context: dg.OpExecutionContext, report: SyncReport, asset_key: dg.AssetKey, key_range: KeyRange
) -> None:
    """Record, as an observation of the synced asset in this run, the key through which
    every batch of `key_range` is written and the figures so far, so that the step's retry
    goes on from there instead of from the range's first key. A dry run wrote nothing and
    records nothing."""
    if report.dry_run or report.resume_after is None:
        return
    checkpoint = {**report.checkpoint(), "range": [key_range.low, key_range.high]}
    context.log_event(
        dg.AssetObservation(
            asset_key=asset_key,
            description=f"{report.pipeline} sync interrupted after key {report.resume_after!r}; retried from there",
            metadata={CHECKPOINT_KEY: dg.MetadataValue.json(checkpoint)},
        )
    )


def resumed_report(
    context: dg.OpExecutionContext, spec: SyncSpec, config: SyncOpConfig, asset_key: dg.AssetKey, key_range: KeyRange
) -> SyncReport | None:
    """On a retry of the step, the report its earlier attempt checkpointed for `key_range` in this run, if any."""
    if context.retry_number == 0 or config.dry_run:
        return None
    records = context.instance.fetch_observations(
        dg.AssetRecordsFilter(asset_key=asset_key), limit=_CHECKPOINT_LOOKBACK
    )
    for record in records.records:
        observation = record.asset_observation
        if record.run_id != context.run_id or observation is None or CHECKPOINT_KEY not in observation.metadata:
            continue
        checkpoint = observation.metadata[CHECKPOINT_KEY].value
        if checkpoint.get("range") != [key_range.low, key_range.high]:
            continue
        return SyncReport.from_checkpoint(spec.name, config.dry_run, checkpoint)
    return None


def make_stop_check(context: dg.OpExecutionContext) -> Callable[[], str | None]:
    """The check the sync runs before each batch: is this run being terminated (the UI's Terminate), or
    has it been failed under this step (an orphaned step process, whose run worker died)?

    A launched run is also interrupted by a signal, but nothing can signal a run started
    with `dagster job execute`: Dagster only marks it CANCELING. So the sync reads its run's
    status itself, at most every `TERMINATION_POLL_S` seconds.
    """
    last_check = time.monotonic()

    def requested() -> str | None:
        nonlocal last_check
        now = time.monotonic()
        if now - last_check < TERMINATION_POLL_S:
            return None
        last_check = now
        try:
            run = context.instance.get_run_by_id(context.run_id)
        except Exception as error:  # noqa: BLE001 - a best-effort check must not fail the sync
            context.log.warning(f"could not read this run's status to check for termination: {error}")
            return None
        if run is not None and run.status in _TERMINATING:
            return f"termination requested: the run is {run.status.value}"
        if run is not None and run.status in _ORPHANED:
            return "this step's run was already marked failed (its worker was found dead, or ran past its max runtime)"
        return None

    return requested
