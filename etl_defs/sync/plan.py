"""Pure planning: merge two key-ordered streams of batches and classify every key.

No I/O here. Sources and targets arrive as iterables of batches, each side ordered by key as
strings in byte order (Python `str` comparison is code-point order, which is UTF-8 byte
order, which is PostgreSQL `COLLATE "C"` and ObjectId hex order). A side that breaks the
order fails the run with `KeyOrderError` naming the keys: a silent misclassification would
be far worse.

The merge works a batch at a time, not a row at a time: it cuts both sides at the same key
(by binary search on the keys) and hands each pair of slices to the pipeline's `classify`.
What a batch of records is, is the pipeline's choice: a list of rows (the cart sync) or a
columnar Arrow table (the product sync, which then never builds a Python object per value
of the rows it leaves alone). `row_spec` builds the classification of row lists from a
per-row transform and compare.
"""

from __future__ import annotations

import operator
from bisect import bisect_right
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from itertools import pairwise
from typing import Any, Generic, TypeVar

Raw = TypeVar("Raw")
Row = TypeVar("Row")
Tgt = TypeVar("Tgt")
Records = TypeVar("Records")


class Change(StrEnum):
    """What a key needs: the classes every sync reports."""

    MISSING = "missing"  # in the source, not in the target: insert
    CHANGED = "changed"  # in both, target differs: update
    OUTDATED = "outdated"  # in both, target is an older version: update
    UNCHANGED = "unchanged"  # in both, equal: nothing to do
    ORPHANED = "orphaned"  # in the target only
    REJECTED = "rejected"  # the source record cannot be transformed
    NEWER_IN_TARGET = "newer_in_target"  # the target is ahead of the source: never touched


class KeyOrderError(RuntimeError):
    """One side of the merge did not arrive in strictly increasing key order."""


@dataclass(frozen=True, slots=True)
class Rejection:
    """A source record the target cannot take, and why.

    `key` is the record's key as text; `ordered` is false when that key cannot take part in
    the ordered merge (for example a product `_id` that is not an ObjectId).
    """

    key: str
    reason: str
    ordered: bool = True


@dataclass(frozen=True, slots=True)
class Keyed(Generic[Records]):
    """Records of one side in strictly increasing key order: `keys[i]` is the key of the
    `i`-th record of `records` (a list, or an Arrow table; anything `len()` and slicing work on)."""

    keys: list[str]
    records: Records

    def __len__(self) -> int:
        return len(self.keys)

    def part(self, start: int, stop: int) -> Keyed[Records]:
        return Keyed(self.keys[start:stop], self.records[start:stop])  # type: ignore[index]


@dataclass(frozen=True, slots=True)
class SourceBatch(Generic[Records]):
    """One source batch, transformed: the rows the target can take and the records it cannot.

    `keys` is every orderable key of the batch (rows and ordered rejections) as it arrived,
    for the order check; `rows.keys` are those of the rows alone.
    """

    rows: Keyed[Records]
    rejected: list[Rejection]
    keys: list[str]


@dataclass(slots=True)
class BatchPlan(Generic[Row, Tgt]):
    """The classified keys of one batch: what to write, and what only to count.

    The fields hold the pipeline's records (lists, or Arrow tables): `missing` the source rows
    to insert; `changed`, `outdated` and `newer_in_target` the pairs found (as the pipeline
    keeps them); `orphaned` the target records; `unchanged` the keys (a list, or an Arrow array).
    """

    missing: Any = field(default_factory=list)
    changed: Any = field(default_factory=list)
    outdated: Any = field(default_factory=list)
    unchanged: Any = field(default_factory=list)
    orphaned: Any = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    newer_in_target: Any = field(default_factory=list)
    #: The greatest key this plan classifies (None when it holds only unorderable rejections):
    #: every key up to it is in this plan or an earlier one.
    last_key: str | None = None

    @property
    def size(self) -> int:
        """How many keys this plan classifies."""
        return sum(self.count(change) for change in Change)

    @property
    def has_updates(self) -> bool:
        """Whether any source row needs writing."""
        return bool(len(self.missing) or len(self.changed) or len(self.outdated))

    @property
    def source_rows(self) -> int:
        """How many source records this plan covers."""
        return self.size - len(self.orphaned)

    def count(self, change: Change) -> int:
        """How many keys of one class this plan holds (its fields are named after the classes)."""
        return len(getattr(self, change.value))

    def keys(self, change: Change, spec: SyncSpec) -> list[str]:
        """The keys of one class, for reports and samples."""
        if change is Change.REJECTED:
            return [r.key for r in self.rejected]
        records = getattr(self, change.value)
        return spec.record_keys(change, records) if len(records) else []


@dataclass(frozen=True, slots=True)
class SyncSpec(Generic[Raw, Row, Tgt]):
    """The pure, pipeline-specific parts of a sync, a batch at a time.

    - `source`: one batch as read from the source -> its rows (in key order) and rejections;
    - `target`: one batch as read from the target -> its records in key order;
    - `concat`: several target record batches -> one (list `+`, `pyarrow.concat_tables`);
    - `classify`: the source rows and the target records of the same key interval, and the
      keys of the source records rejected in it (their target records are consumed, not
      orphaned) -> a plan with every one of them in exactly one class;
    - `record_keys`: the keys of one class's records in a plan (of its keys, for `unchanged`), for reports.
    """

    name: str
    source: Callable[[Any], SourceBatch[Any]]
    target: Callable[[Any], Keyed[Any]]
    concat: Callable[[list[Any]], Any]
    classify: Callable[[Keyed[Any], Keyed[Any], set[str]], BatchPlan[Row, Tgt]]
    record_keys: Callable[[Change, Any], list[str]]


#: The end of the source batches.
_END = object()


def _out_of_order(side: str, key: str, previous: str) -> KeyOrderError:
    return KeyOrderError(
        f"{side} keys out of order: {key!r} arrived after {previous!r}; "
        'both sides must be ordered by key as bytes (COLLATE "C" / ObjectId order)'
    )


def check_order(side: str, keys: list[str], previous: str | None) -> None:
    """Raise `KeyOrderError` naming the first pair of `keys` (after `previous`) not strictly increasing."""
    if previous is not None and keys and keys[0] <= previous:
        raise _out_of_order(side, keys[0], previous)
    if all(map(operator.lt, keys, keys[1:])):  # the usual case, checked without a Python step per key
        return
    for before, key in pairwise(keys):
        if key <= before:
            raise _out_of_order(side, key, before)


class _TargetWindow(Generic[Tgt]):
    """The target records read but not yet classified, read on as far as a plan needs."""

    def __init__(self, spec: SyncSpec, batches: Iterable[Any]) -> None:
        self._spec = spec
        self._batches = iter(batches)
        self._buffer: Keyed[Any] | None = None
        self._exhausted = False
        self._last: str | None = None

    def _pull(self) -> bool:
        """Read the next target batch into the buffer; False when there is none."""
        while not self._exhausted:
            raw = next(self._batches, None)
            if raw is None:
                self._exhausted = True
                return False
            batch = self._spec.target(raw)
            if not len(batch):
                continue
            check_order("target", batch.keys, self._last)
            self._last = batch.keys[-1]
            if self._buffer is None or not len(self._buffer):
                self._buffer = batch
            else:
                records = self._spec.concat([self._buffer.records, batch.records])
                self._buffer = Keyed(self._buffer.keys + batch.keys, records)
            return True
        return False

    def take(self, bound: str | None, limit: int) -> tuple[Keyed[Any] | None, bool]:
        """The next records with keys up to `bound` (every one left when None), at most `limit`
        of them; and whether records up to `bound` may be left behind (the limit cut it short)."""
        while not self._exhausted and (
            self._buffer is None
            or (
                len(self._buffer) < limit and (bound is None or not len(self._buffer) or self._buffer.keys[-1] <= bound)
            )
        ):
            if not self._pull():
                break
        buffer = self._buffer
        if buffer is None or not len(buffer):
            return None, False
        stop = min(len(buffer), limit)
        if bound is not None:
            stop = bisect_right(buffer.keys, bound, 0, stop)
        if stop == 0:
            return None, False
        if bound is None:
            left_behind = stop < len(buffer) or not self._exhausted
        else:
            left_behind = stop == limit and (buffer.keys[stop] <= bound if stop < len(buffer) else not self._exhausted)
        taken, self._buffer = buffer.part(0, stop), buffer.part(stop, len(buffer))
        return taken, left_behind


def plan_batches(
    spec: SyncSpec[Raw, Row, Tgt],
    source_batches: Iterable[Any],
    target_batches: Iterable[Any],
    batch_size: int,
) -> Iterator[BatchPlan[Row, Tgt]]:
    """Merge both sides and yield plans, each of at most `batch_size` source rows (plus the
    records rejected among them) and at most `batch_size` target records.

    Every source record and every target record is classified exactly once. A plan covers a
    key interval: the source rows and rejections in it, and every target record in it. The
    cut is found by binary search on the keys; the pipeline's `classify` pairs the two
    slices. An unorderable rejection is classified in the plan of the batch it arrives in,
    without consuming a target record. Memory holds a few batches of each side, whatever the
    table sizes. Like the rest of the planning this runs lazily: even a bad `batch_size` is
    reported on the first `next()`.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    targets: _TargetWindow[Tgt] = _TargetWindow(spec, target_batches)
    previous: str | None = None  # the last ordered source key
    batches = iter(source_batches)
    raw = next(batches, _END)
    while raw is not _END:
        batch = spec.source(raw)
        raw = next(batches, _END)  # one batch ahead: the last one's last plan also takes the orphans after it
        check_order("source", batch.keys, previous)
        if batch.keys:
            previous = batch.keys[-1]
        rows = batch.rows
        ordered = [r for r in batch.rejected if r.ordered]
        unordered = [r for r in batch.rejected if not r.ordered]
        start = 0
        while start < len(rows) or ordered or unordered:
            plan_unordered, unordered = unordered[:batch_size], unordered[batch_size:]
            stop, rejecting, bound = _cut(rows.keys, start, [r.key for r in ordered], batch_size - len(plan_unordered))
            if raw is _END and stop == len(rows) and rejecting == len(ordered):
                found, left_behind = targets.take(None, batch_size)  # the source's end: every target record left
                if found is not None and (bound is None or found.keys[-1] > bound) and not left_behind:
                    bound = found.keys[-1]
            elif bound is not None:
                found, left_behind = targets.take(bound, batch_size)
            else:
                found, left_behind = None, False
            if left_behind and found is not None:
                # Too many target records in the interval: cut it at the last one taken.
                bound = found.keys[-1]
                stop = bisect_right(rows.keys, bound, start, stop)
                rejecting = bisect_right([r.key for r in ordered], bound, 0, rejecting)
            rejected, ordered = ordered[:rejecting], ordered[rejecting:]
            plan = _plan(spec, rows.part(start, stop), found, rejected)
            plan.rejected = plan_unordered + rejected
            plan.last_key = bound
            start = stop
            yield plan
    while True:
        found, _ = targets.take(None, batch_size)
        if found is None:
            return
        yield BatchPlan(orphaned=found.records, last_key=found.keys[-1])


def _cut(keys: list[str], start: int, rejected: list[str], room: int) -> tuple[int, int, str | None]:
    """Where the next plan ends: `room` keys from `keys[start:]` (the rows) and `rejected` (the
    ordered rejections left, few), merged in key order. Returns the rows' stop, how many
    rejections, and the greatest key taken (None when none is)."""
    if not rejected:
        stop = min(len(keys), start + room)
        return stop, 0, keys[stop - 1] if stop > start else None
    row, rejection = start, 0
    while row - start + rejection < room and (row < len(keys) or rejection < len(rejected)):
        if rejection < len(rejected) and (row >= len(keys) or rejected[rejection] < keys[row]):
            rejection += 1
        else:
            row += 1
    taken = ([keys[row - 1]] if row > start else []) + ([rejected[rejection - 1]] if rejection else [])
    return row, rejection, max(taken) if taken else None


def _plan(spec: SyncSpec, rows: Keyed[Any], found: Keyed[Any] | None, rejected: list[Rejection]) -> BatchPlan:
    """Classify one key interval: orphans only when it holds no source row, else the pipeline's `classify`."""
    if found is not None and not len(rows):
        consumed = {r.key for r in rejected}
        if not consumed:
            return BatchPlan(orphaned=found.records)
        left = [i for i, key in enumerate(found.keys) if key not in consumed]
        return BatchPlan(orphaned=spec.concat([found.records[i : i + 1] for i in left]) if left else [])
    if not len(rows):
        return BatchPlan()
    return spec.classify(rows, found if found is not None else Keyed([], []), {r.key for r in rejected})


def row_spec(
    name: str,
    transform: Callable[[Raw], Row | Rejection],
    source_key: Callable[[Row], str],
    target_key: Callable[[Tgt], str],
    compare: Callable[[Row, Tgt], Change],
) -> SyncSpec[Raw, Row, Tgt]:
    """The spec of a pipeline whose records are Python rows in lists, from a per-row transform and compare."""

    def source(raws: Sequence[Raw]) -> SourceBatch[list[Row]]:
        rows: list[Row] = []
        row_keys: list[str] = []
        rejected: list[Rejection] = []
        keys: list[str] = []
        for raw in raws:
            result = transform(raw)
            if isinstance(result, Rejection):
                rejected.append(result)
                if result.ordered:
                    keys.append(result.key)
                continue
            key = source_key(result)
            rows.append(result)
            row_keys.append(key)
            keys.append(key)
        return SourceBatch(Keyed(row_keys, rows), rejected, keys)

    def target(records: Sequence[Tgt]) -> Keyed[list[Tgt]]:
        return Keyed(list(map(target_key, records)), list(records))

    def classify(rows: Keyed[list[Row]], found: Keyed[list[Tgt]], consumed: set[str]) -> BatchPlan[Row, Tgt]:
        plan: BatchPlan[Row, Tgt] = BatchPlan()
        by_key = dict(zip(found.keys, found.records, strict=True))
        for key, row in zip(rows.keys, rows.records, strict=True):
            matched = by_key.pop(key, None)
            if matched is None:
                plan.missing.append(row)
                continue
            change = compare(row, matched)
            if change is Change.UNCHANGED:
                plan.unchanged.append(key)
            elif change is Change.CHANGED:
                plan.changed.append((row, matched))
            elif change is Change.OUTDATED:
                plan.outdated.append((row, matched))
            elif change is Change.NEWER_IN_TARGET:
                plan.newer_in_target.append((row, matched))
            else:
                raise ValueError(f"compare() of {name} returned {change!r} for a pair")
        plan.orphaned = [record for key, record in by_key.items() if key not in consumed]
        return plan

    def record_keys(change: Change, records: list[Any]) -> list[str]:
        if change is Change.UNCHANGED:
            return list(records)
        if change is Change.MISSING:
            return [source_key(row) for row in records]
        if change is Change.ORPHANED:
            return [target_key(record) for record in records]
        return [source_key(row) for row, _ in records]

    return SyncSpec(
        name=name,
        source=source,
        target=target,
        concat=lambda parts: [record for part in parts for record in part],
        classify=classify,
        record_keys=record_keys,
    )
