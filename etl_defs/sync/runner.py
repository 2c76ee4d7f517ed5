"""The one sync loop both pipelines run: plan a batch, write it, report, repeat."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol

from etl_defs.sync.plan import BatchPlan, Change, Raw, Rejection, Row, SyncSpec, Tgt, plan_batches

SAMPLE_KEYS = 5
MAX_REPORTED_REJECTIONS = 100
MAX_LOGGED_REJECTIONS = 1000
#: The classes that hold a target record (see `SyncReport.target_rows`).
TARGET_CLASSES = (Change.CHANGED, Change.OUTDATED, Change.UNCHANGED, Change.ORPHANED, Change.NEWER_IN_TARGET)


@dataclass(slots=True)
class WriteResult:
    """What one batch's writes did (counted by the database, not assumed)."""

    inserted: int = 0
    updated: int = 0
    deleted: int = 0
    newer_in_target: int = 0  # the guarded write found the target newer meanwhile
    rejected: list[Rejection] = field(default_factory=list)  # the database refused these


class SyncStopped(RuntimeError):
    """The sync was asked to stop and did, between two batches: every written batch is whole."""


class SyncEndpoints(Protocol[Raw, Row, Tgt]):
    """The I/O of a sync: read both sides in key order, write one plan."""

    #: Whether `write` deletes a plan's orphans (otherwise they are only counted).
    prunes_orphans: bool

    def source_batches(self, batch_size: int) -> Iterator[Sequence[Raw]]: ...

    def target_batches(self, batch_size: int) -> Iterator[Sequence[Tgt]]: ...

    def write(self, plan: BatchPlan[Row, Tgt]) -> WriteResult: ...


@dataclass
class SyncReport(Generic[Row, Tgt]):
    """Figures of one sync run, with sample keys per class."""

    pipeline: str
    dry_run: bool
    counts: dict[Change, int] = field(default_factory=lambda: dict.fromkeys(Change, 0))
    samples: dict[Change, list[str]] = field(default_factory=lambda: {c: [] for c in Change})
    rejections: list[Rejection] = field(default_factory=list)
    inserted: int = 0
    updated: int = 0
    deleted: int = 0
    newer_in_target_at_write: int = 0
    rejected_at_write: int = 0
    batches: int = 0
    duration_s: float = 0.0

    @property
    def source_rows(self) -> int:
        return sum(n for change, n in self.counts.items() if change is not Change.ORPHANED)

    @property
    def target_rows(self) -> int:
        """Target records read: those paired with a source row, and the orphans.

        A target record under a rejected source key is consumed by that rejection, so it is
        not counted here.
        """
        return sum(self.counts[change] for change in TARGET_CLASSES)

    @property
    def rows_per_s(self) -> float:
        return self.source_rows / self.duration_s if self.duration_s > 0 else 0.0

    def add_plan(self, plan: BatchPlan, spec: SyncSpec) -> None:
        for change in Change:
            keys = plan.keys(change, spec)
            self.counts[change] += len(keys)
            room = SAMPLE_KEYS - len(self.samples[change])
            if room > 0:
                self.samples[change].extend(keys[:room])
        self._add_rejections(plan.rejected)

    def add_write(self, result: WriteResult) -> None:
        self.inserted += result.inserted
        self.updated += result.updated
        self.deleted += result.deleted
        self.newer_in_target_at_write += result.newer_in_target
        self.rejected_at_write += len(result.rejected)
        self._add_rejections(result.rejected)

    def _add_rejections(self, rejections: list[Rejection]) -> None:
        room = MAX_REPORTED_REJECTIONS - len(self.rejections)
        if room > 0:
            self.rejections.extend(rejections[:room])

    def figures(self) -> dict[str, float | int]:
        """Numeric figures under the same keys every run, so the UI can plot them."""
        return {
            "source_rows": self.source_rows,
            **{change.value: self.counts[change] for change in Change},
            "inserted": self.inserted,
            "updated": self.updated,
            "deleted": self.deleted,
            "newer_in_target_at_write": self.newer_in_target_at_write,
            "rejected_at_write": self.rejected_at_write,
            "batches": self.batches,
            "duration_s": round(self.duration_s, 3),
            "rows_per_s": round(self.rows_per_s, 1),
        }

    def summary(self) -> str:
        """One line for logs and the terminal."""
        head = "DRY RUN (nothing written)" if self.dry_run else "applied"
        done = written(self.inserted, self.updated, self.deleted)
        return (
            f"{self.pipeline} sync {head}: source_rows={self.source_rows}, {classes(self.counts)}; {done}; "
            f"{self.duration_s:.2f}s, {self.rows_per_s:.0f} rows/s"
        )


def classes(counts: Mapping[Change, int]) -> str:
    """`missing=.., changed=.., ...`: every class, in one order, for the summary and the batch lines."""
    return ", ".join(f"{change.value}={counts[change]}" for change in Change)


def written(inserted: int, updated: int, deleted: int) -> str:
    return f"inserted={inserted}, updated={updated}, deleted={deleted}"


def run_sync(
    spec: SyncSpec[Raw, Row, Tgt],
    endpoints: SyncEndpoints[Raw, Row, Tgt],
    *,
    batch_size: int,
    dry_run: bool,
    log: logging.Logger | Any,
    batch_pause_s: float = 0.0,
    stop_requested: Callable[[], str | None] | None = None,
) -> SyncReport[Row, Tgt]:
    """Plan every batch and, unless `dry_run`, write it before reading on.

    Each write is one transaction (PostgreSQL) or one guarded bulk write (MongoDB), so a
    run that stops between batches leaves no half-written batch behind. `stop_requested`
    is asked before each batch; when it gives a reason, the sync raises `SyncStopped` there
    (and an error it raises ends the sync there too).
    """
    report: SyncReport[Row, Tgt] = SyncReport(pipeline=spec.name, dry_run=dry_run)
    started = time.perf_counter()
    source = endpoints.source_batches(batch_size)
    target = endpoints.target_batches(batch_size)
    plans = plan_batches(spec, source, target, batch_size)
    rejection_log = _RejectionLog(spec.name, log)
    try:
        for plan in plans:
            _stop_if_requested(spec, report, stop_requested)
            report.batches += 1
            report.add_plan(plan, spec)
            rejection_log.add(plan.rejected)
            result = WriteResult()
            if not dry_run and _needs_write(plan, endpoints):
                result = _write(spec, endpoints, plan, report, log)
            log.info(_batch_line(spec, report.batches, plan, result))
            if batch_pause_s > 0 and not dry_run:
                time.sleep(batch_pause_s)
    finally:
        # Release both reads now, not whenever the garbage collector finalizes them.
        _close_streams(spec, log, source, target)
    rejection_log.log_overflow()
    report.duration_s = time.perf_counter() - started
    log.info(report.summary())
    return report


class _RejectionLog:
    """Logs source rejections one warning each, up to `MAX_LOGGED_REJECTIONS` in a run, then counts the rest."""

    def __init__(self, pipeline: str, log: logging.Logger | Any) -> None:
        self.pipeline = pipeline
        self.logger = log
        self.count = 0

    def add(self, rejections: list[Rejection]) -> None:
        for rejection in rejections:
            if self.count < MAX_LOGGED_REJECTIONS:
                self.logger.warning(f"{self.pipeline}: rejected {rejection.key}: {rejection.reason}")
            self.count += 1

    def log_overflow(self) -> None:
        """One warning for the rejections past the limit, if there were any."""
        if self.count > MAX_LOGGED_REJECTIONS:
            self.logger.warning(f"{self.pipeline}: {self.count - MAX_LOGGED_REJECTIONS} more rejections not logged")


def _stop_if_requested(spec: SyncSpec, report: SyncReport, stop_requested: Callable[[], str | None] | None) -> None:
    """Raise `SyncStopped`, saying what was written so far, when `stop_requested` gives a reason."""
    if stop_requested is not None and (reason := stop_requested()):
        raise SyncStopped(
            f"{spec.name} sync stopped between batches ({reason}) after {report.batches} batches: "
            f"{written(report.inserted, report.updated, report.deleted)}; the next run repairs the rest"
        )


def _needs_write(plan: BatchPlan, endpoints: SyncEndpoints) -> bool:
    """Whether `plan` has anything to write: source rows, or orphans these endpoints prune."""
    return bool(plan.has_updates or (plan.orphaned and endpoints.prunes_orphans))


def _write(
    spec: SyncSpec, endpoints: SyncEndpoints, plan: BatchPlan, report: SyncReport, log: logging.Logger | Any
) -> WriteResult:
    """Write one plan, add what it did to `report`, and log each record the target refused."""
    result = endpoints.write(plan)
    report.add_write(result)
    for rejection in result.rejected:
        log.warning(f"{spec.name}: rejected by the target {rejection.key}: {rejection.reason}")
    return result


def _batch_line(spec: SyncSpec, number: int, plan: BatchPlan, result: WriteResult) -> str:
    """The log line of one batch: its classes, then what was written."""
    return (
        f"{spec.name} batch {number}: source_rows={plan.source_rows}, "
        f"{classes({change: plan.count(change) for change in Change})}; "
        f"{written(result.inserted, result.updated, result.deleted)}"
    )


def _close_streams(spec: SyncSpec, log: logging.Logger | Any, *streams: object) -> None:
    """Close the endpoints' read streams (cursors, pooled connections) at the end of a sync.

    After a fault, closing a cursor on a dead connection fails too: that is logged at debug
    level rather than raised over the error that stopped the sync.
    """
    for stream in streams:
        close = getattr(stream, "close", None)
        if close is None:
            continue
        try:
            close()
        except Exception as error:  # noqa: BLE001 - the sync already ended; keep its own error
            log.debug(f"{spec.name}: closing a read stream after the sync ended failed: {error}")
