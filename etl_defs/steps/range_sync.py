"""One range step of a sync (the whole scope when the run is not split): the shared core, the Dagster way."""

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import dagster as dg

from etl_defs.run_config import SyncOpConfig
from etl_defs.steps.checkpoints import resumed_report, save_checkpoint
from etl_defs.steps.retries import retried_while_unavailable
from etl_defs.steps.termination import make_stop_check
from etl_defs.sync import Change, KeyRange, SyncEndpoints, SyncReport, SyncSpec, SyncStopped, run_sync
from resources import PostgresResource

_FAULT_NOTE = (
    "batches written before the fault stay written; run the sync again once the database is back to repair the rest"
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


def run_range_op(
    context: dg.OpExecutionContext,
    config: SyncOpConfig,
    *,
    spec: SyncSpec,
    endpoints: SyncEndpoints,
    lock_db: PostgresResource,
    asset_key: dg.AssetKey,
) -> dg.Output[RangeResult]:
    """Sync one key range of a run (the whole table when the run is not split).

    A real run holds the pipeline's advisory lock for its run id: the range steps of one run
    share it, and no other run, even one that bypasses the run queue, writes at the same
    time. A database that is unreachable is retried with backoff, and the retry resumes
    after the last key written (see `save_checkpoint`); bad data is never retried (it is
    rejected record by record instead).
    """
    scope = endpoints.scope
    context.log.info(f"{spec.name} sync of {scope.describe()}")
    report = resumed_report(context, spec.name, config.dry_run, asset_key, scope.key_range) or SyncReport(
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
            after_failure=_FAULT_NOTE + range_note,
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
