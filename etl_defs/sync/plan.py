"""Pure planning: merge two key-ordered streams of batches and classify every key.

No I/O here. Sources and targets arrive as iterables of batches (lists), each side ordered
by key as strings in byte order (Python `str` comparison is code-point order, which is
UTF-8 byte order, which is PostgreSQL `COLLATE "C"` and ObjectId hex order). A side that
breaks the order fails the run with `KeyOrderError` naming the keys: a silent
misclassification would be far worse.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Generic, TypeVar, cast

Raw = TypeVar("Raw")
Row = TypeVar("Row")
Tgt = TypeVar("Tgt")


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
class SyncSpec(Generic[Raw, Row, Tgt]):
    """The pure, pipeline-specific parts of a sync."""

    name: str
    transform: Callable[[Raw], Row | Rejection]
    source_key: Callable[[Row], str]
    target_key: Callable[[Tgt], str]
    compare: Callable[[Row, Tgt], Change]


@dataclass(slots=True)
class BatchPlan(Generic[Row, Tgt]):
    """The classified keys of one batch: what to write, and what only to count."""

    missing: list[Row] = field(default_factory=list)
    changed: list[tuple[Row, Tgt]] = field(default_factory=list)
    outdated: list[tuple[Row, Tgt]] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    orphaned: list[Tgt] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    newer_in_target: list[tuple[Row, Tgt]] = field(default_factory=list)
    #: The greatest key this plan classifies (None when it holds only unorderable rejections):
    #: every key up to it is in this plan or an earlier one.
    last_key: str | None = None

    @property
    def size(self) -> int:
        """How many keys this plan classifies."""
        return (
            len(self.missing)
            + len(self.changed)
            + len(self.outdated)
            + len(self.unchanged)
            + len(self.orphaned)
            + len(self.rejected)
            + len(self.newer_in_target)
        )

    @property
    def has_updates(self) -> bool:
        """Whether any source row needs writing."""
        return bool(self.missing or self.changed or self.outdated)

    @property
    def source_rows(self) -> int:
        """How many source records this plan covers."""
        return self.size - len(self.orphaned)

    def count(self, change: Change) -> int:
        """How many keys of one class this plan holds (its fields are named after the classes)."""
        return len(getattr(self, change.value))

    def keys(self, change: Change, spec: SyncSpec) -> list[str]:
        """The keys of one class, for reports and samples."""
        match change:
            case Change.MISSING:
                return [spec.source_key(row) for row in self.missing]
            case Change.CHANGED:
                return [spec.source_key(row) for row, _ in self.changed]
            case Change.OUTDATED:
                return [spec.source_key(row) for row, _ in self.outdated]
            case Change.UNCHANGED:
                return list(self.unchanged)
            case Change.ORPHANED:
                return [spec.target_key(row) for row in self.orphaned]
            case Change.REJECTED:
                return [r.key for r in self.rejected]
            case Change.NEWER_IN_TARGET:
                return [spec.source_key(row) for row, _ in self.newer_in_target]


class _OrderGuard:
    """Fails loudly when one side's keys stop increasing."""

    def __init__(self, side: str) -> None:
        self.side = side
        self.previous: str | None = None

    def check(self, key: str) -> None:
        if self.previous is not None and key <= self.previous:
            raise KeyOrderError(
                f"{self.side} keys out of order: {key!r} arrived after {self.previous!r}; "
                'both sides must be ordered by key as bytes (COLLATE "C" / ObjectId order)'
            )
        self.previous = key


def _ordered(batches: Iterable[Sequence[Tgt]], key: Callable[[Tgt], str]) -> Iterator[tuple[str, Tgt]]:
    """Target records as (key, record), checked to arrive in increasing key order."""
    guard = _OrderGuard("target")
    for batch in batches:
        for item in batch:
            current = key(item)
            guard.check(current)
            yield current, item


def _transformed(
    batches: Iterable[Sequence[Raw]], spec: SyncSpec[Raw, Row, Tgt]
) -> Iterator[tuple[str, Row | Rejection]]:
    """Source records as (key, row or rejection); unorderable rejections get key ``""``."""
    guard = _OrderGuard("source")
    for batch in batches:
        for raw in batch:
            result = spec.transform(raw)
            if isinstance(result, Rejection):
                if not result.ordered:
                    yield "", result
                    continue
                current = result.key
            else:
                current = spec.source_key(result)
            guard.check(current)
            yield current, result


def plan_batches(
    spec: SyncSpec[Raw, Row, Tgt],
    source_batches: Iterable[Sequence[Raw]],
    target_batches: Iterable[Sequence[Tgt]],
    batch_size: int,
) -> Iterator[BatchPlan[Row, Tgt]]:
    """Merge both sides and yield plans of at most `batch_size` classified keys.

    Every source record and every target record is classified exactly once. Memory holds
    one plan and one batch of each side, whatever the table sizes. Like the rest of the
    planning this runs lazily: even a bad `batch_size` is reported on the first `next()`.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    merged = _merged(_transformed(source_batches, spec), _ordered(target_batches, spec.target_key))
    yield from _chunked(spec, merged, batch_size)


def _merged(
    source: Iterator[tuple[str, Row | Rejection]], target: Iterator[tuple[str, Tgt]]
) -> Iterator[tuple[str, Row | Rejection | None, Tgt | None]]:
    """Walk both ordered sides once, yielding one `(key, source item, target item)` per key.

    A side that has no record under the key gives None. An unorderable rejection is yielded
    as `("", rejection, None)` where it arrives, without consuming a target record. Each
    side is read one record ahead of what has been yielded.
    """
    upcoming = next(target, None)
    for key, item in source:
        if isinstance(item, Rejection) and not item.ordered:
            yield key, item, None
            continue
        while upcoming is not None and upcoming[0] < key:
            orphan_key, orphan = upcoming
            upcoming = next(target, None)
            yield orphan_key, None, orphan
        if upcoming is not None and upcoming[0] == key:
            matched: Tgt | None = upcoming[1]
            upcoming = next(target, None)
        else:
            matched = None
        yield key, item, matched
    while upcoming is not None:
        orphan_key, orphan = upcoming
        upcoming = next(target, None)
        yield orphan_key, None, orphan


def _classify(
    spec: SyncSpec[Raw, Row, Tgt],
    plan: BatchPlan[Row, Tgt],
    key: str,
    source: Row | Rejection | None,
    target: Tgt | None,
) -> None:
    """Add one merged key to `plan`, under exactly one class."""
    if source is None:
        plan.orphaned.append(cast(Tgt, target))  # an orphan always has its target record
    elif isinstance(source, Rejection):
        plan.rejected.append(source)  # a matched target record is consumed, not orphaned
    elif target is None:
        plan.missing.append(source)
    else:
        change = spec.compare(source, target)
        match change:
            case Change.UNCHANGED:
                plan.unchanged.append(key)
            case Change.CHANGED:
                plan.changed.append((source, target))
            case Change.OUTDATED:
                plan.outdated.append((source, target))
            case Change.NEWER_IN_TARGET:
                plan.newer_in_target.append((source, target))
            case _:
                raise ValueError(f"compare() of {spec.name} returned {change!r} for a pair")


def _chunked(
    spec: SyncSpec[Raw, Row, Tgt],
    merged: Iterator[tuple[str, Row | Rejection | None, Tgt | None]],
    batch_size: int,
) -> Iterator[BatchPlan[Row, Tgt]]:
    """Classify the merged keys into plans, yielding each plan as soon as it holds `batch_size` keys."""
    plan: BatchPlan[Row, Tgt] = BatchPlan()
    size = 0  # plan.size, counted here: each merged key lands in exactly one class
    for key, source, target in merged:
        _classify(spec, plan, key, source, target)
        if key:  # "" is an unorderable rejection, which has no place in the key order
            plan.last_key = key
        size += 1
        if size >= batch_size:
            yield plan
            plan = BatchPlan()
            size = 0
    if size:
        yield plan
