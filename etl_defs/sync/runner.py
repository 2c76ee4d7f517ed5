"""The one sync loop both pipelines run: plan a batch, write it, report, repeat.

Both sides are read ahead on threads of their own (`readahead`), so the databases serve the
next batches while this loop writes the current one; the plans are made on a third thread,
so the next batch is classified while the current one's write waits on the target. The
writes stay on the loop's own thread.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol

from etl_defs.sync.plan import BatchPlan, Change, Raw, Rejection, Row, SyncSpec, Tgt, plan_batches
from etl_defs.sync.readahead import ReadAhead
from etl_defs.sync.scope import SyncScope

#: Batches each side is read ahead of the plan (bounded: memory stays O(batch)).
READ_AHEAD_BATCHES = 2
#: Plans made ahead of the write.
PLANS_AHEAD = 1
#: Seconds between two progress lines of a long sync.
PROGRESS_INTERVAL_S = 5.0
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
    #: The keys both sides are read for.
    scope: SyncScope

    def source_batches(self, batch_size: int, after: str | None = None) -> Iterator[Sequence[Raw]]:
        """Source records in key order (only keys greater than `after`, when given)."""
        ...

    def target_batches(self, batch_size: int, after: str | None = None) -> Iterator[Sequence[Tgt]]:
        """Target records in key order (only keys greater than `after`, when given)."""
        ...

    def estimated_source_rows(self) -> int | None:
        """Roughly how many source records a whole sync reads (from metadata, no scan), for progress lines."""
        ...

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
    #: Every key up to this one is planned and, unless a dry run, written: a sync started
    #: from this report reads on after it (a retried step resumes instead of starting over).
    resume_after: str | None = None

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
            count = plan.count(change)
            self.counts[change] += count
            room = SAMPLE_KEYS - len(self.samples[change])
            if room > 0 and count:
                self.samples[change].extend(plan.keys(change, spec)[:room])
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

    @classmethod
    def merged(cls, pipeline: str, dry_run: bool, reports: Sequence[SyncReport]) -> SyncReport:
        """One report of the parts of a split sync, in key order: figures summed, samples and
        rejections taken in key order up to their limits. `duration_s` is the caller's (the wall time)."""
        total: SyncReport = cls(pipeline=pipeline, dry_run=dry_run)
        for part in reports:
            for change in Change:
                total.counts[change] += part.counts[change]
                room = SAMPLE_KEYS - len(total.samples[change])
                total.samples[change].extend(part.samples[change][: max(room, 0)])
            total._add_rejections(part.rejections)
            for name in _CHECKPOINTED:
                if name != "duration_s":
                    setattr(total, name, getattr(total, name) + getattr(part, name))
        return total

    def checkpoint(self) -> dict[str, Any]:
        """This report as JSON-able data, to resume from with `from_checkpoint`."""
        return {
            "resume_after": self.resume_after,
            "counts": {change.value: n for change, n in self.counts.items()},
            "samples": {change.value: keys for change, keys in self.samples.items()},
            "rejections": [[r.key, r.reason, r.ordered] for r in self.rejections],
            **{name: getattr(self, name) for name in _CHECKPOINTED},
        }

    @classmethod
    def from_checkpoint(cls, pipeline: str, dry_run: bool, data: Mapping[str, Any]) -> SyncReport:
        """The report a `checkpoint()` was taken of, to go on from."""
        report: SyncReport = cls(pipeline=pipeline, dry_run=dry_run, resume_after=data["resume_after"])
        report.counts = {change: int(data["counts"].get(change.value, 0)) for change in Change}
        report.samples = {change: list(data["samples"].get(change.value, [])) for change in Change}
        report.rejections = [Rejection(key, reason, ordered) for key, reason, ordered in data["rejections"]]
        for name in _CHECKPOINTED:
            setattr(report, name, type(getattr(report, name))(data[name]))
        return report

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


#: The `SyncReport` fields a checkpoint carries as they are.
_CHECKPOINTED = (
    "inserted",
    "updated",
    "deleted",
    "newer_in_target_at_write",
    "rejected_at_write",
    "batches",
    "duration_s",
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
    before_write: Callable[[], None] | None = None,
    report: SyncReport[Row, Tgt] | None = None,
) -> SyncReport[Row, Tgt]:
    """Plan every batch and, unless `dry_run`, write it before planning the next.

    Each write is one transaction (PostgreSQL) or one guarded bulk write (MongoDB), so a
    run that stops between batches leaves no half-written batch behind. `stop_requested`
    is asked before each batch; when it gives a reason, the sync raises `SyncStopped` there
    (and an error it raises ends the sync there too). `before_write` runs before each
    write (the lock check). Given a `report` of an interrupted sync, the sync goes on after
    its `resume_after` key and adds to its figures; the report passed in is the one updated,
    so after an error it says how far the sync got.
    """
    if report is None:
        report = SyncReport(pipeline=spec.name, dry_run=dry_run)
    started = time.perf_counter()
    already = report.duration_s
    after = report.resume_after
    if after is not None:
        log.info(f"{spec.name} sync resumes after key {after!r} ({report.source_rows} source rows done before)")
    progress = _Progress(spec.name, log, endpoints.estimated_source_rows(), report)
    source = ReadAhead(endpoints.source_batches(batch_size, after), depth=READ_AHEAD_BATCHES, name="sync-source")
    target = ReadAhead(endpoints.target_batches(batch_size, after), depth=READ_AHEAD_BATCHES, name="sync-target")
    plans = ReadAhead(plan_batches(spec, source, target, batch_size), depth=PLANS_AHEAD, name="sync-plan")
    rejection_log = _RejectionLog(spec.name, log)
    try:
        for plan in plans:
            _stop_if_requested(spec, report, stop_requested)
            rejection_log.add(plan.rejected)
            if not dry_run and _needs_write(plan, endpoints):
                if before_write is not None:
                    before_write()
                _write(spec, endpoints, plan, report, log)
            report.batches += 1
            report.add_plan(plan, spec)
            if plan.last_key is not None:
                report.resume_after = plan.last_key
            report.duration_s = already + time.perf_counter() - started
            progress.tick()
            if batch_pause_s > 0 and not dry_run:
                time.sleep(batch_pause_s)
    finally:
        # Stop the planning, then both read-aheads (they close their cursors), not whenever the process exits.
        _close_streams(spec, log, plans, source, target)
    rejection_log.log_overflow()
    report.duration_s = already + time.perf_counter() - started
    log.info(report.summary())
    return report


class _Progress:
    """A progress line every `PROGRESS_INTERVAL_S`: rows done of the estimated total, the current rate, ETA.

    The rate is measured over the window since the previous line (or since the first
    batch): a server that prepares its whole answer before the first batch (the embedded
    one does) makes a rate since the start meaningless at first, and a current rate is
    what an ETA needs.
    """

    def __init__(self, pipeline: str, log: logging.Logger | Any, total: int | None, report: SyncReport) -> None:
        self.pipeline = pipeline
        self.logger = log
        self.total = total
        self.report = report
        self.window: tuple[float, int] | None = None  # (time, rows done) where the current window began

    def tick(self) -> None:
        now = time.perf_counter()
        if self.window is None:
            self.window = (now, self.report.source_rows)
            return
        began, rows_then = self.window
        if now - began < PROGRESS_INTERVAL_S:
            return
        self.logger.info(self.line((self.report.source_rows - rows_then) / (now - began) if now > began else 0.0))
        self.window = (now, self.report.source_rows)

    def line(self, rate: float) -> str:
        report = self.report
        done = report.source_rows
        head = f"{self.pipeline} sync progress: {done:,} source rows"
        if self.total:
            # The total is the database's estimate: a table that grew can pass 100%.
            left = max(self.total - done, 0)
            eta = f"ETA {_duration(left / rate)}" if rate > 0 else "ETA unknown"
            head += f" of ~{self.total:,} ({min(done / self.total, 1.0):.0%}), {rate:,.0f} rows/s, {eta}"
        else:
            head += f", {rate:,.0f} rows/s"
        return f"{head}; {written(report.inserted, report.updated, report.deleted)}"


def _duration(seconds: float) -> str:
    """`1h02m`, `3m05s` or `42s`."""
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


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
) -> None:
    """Write one plan, add what it did to `report`, and log each record the target refused."""
    result = endpoints.write(plan)
    report.add_write(result)
    for rejection in result.rejected:
        log.warning(f"{spec.name}: rejected by the target {rejection.key}: {rejection.reason}")


def _close_streams(spec: SyncSpec, log: logging.Logger | Any, *streams: ReadAhead) -> None:
    """Close the read-aheads (and with them the cursors and pooled connections) at the end of a sync.

    Every one is asked to stop before any is waited for: the planning thread may be waiting on
    a side. After a fault, closing a cursor on a dead connection fails too: that is logged at
    debug level rather than raised over the error that stopped the sync.
    """
    for stream in streams:
        stream.stop()
    for stream in streams:
        try:
            stream.close()
        except Exception as error:  # noqa: BLE001 - the sync already ended; keep its own error
            log.debug(f"{spec.name}: closing a read stream after the sync ended failed: {error}")
