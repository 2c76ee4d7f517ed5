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
from typing import Generic, TypeVar

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


def _out_of_order(side: str, key: str, previous: str) -> KeyOrderError:
    return KeyOrderError(
        f"{side} keys out of order: {key!r} arrived after {previous!r}; "
        'both sides must be ordered by key as bytes (COLLATE "C" / ObjectId order)'
    )


class _Targets(Generic[Tgt]):
    """The target side of the merge: the current record and its key (None once exhausted),
    checked to arrive in strictly increasing key order."""

    __slots__ = ("_batch", "_batches", "_index", "_key_of", "item", "key")

    def __init__(self, batches: Iterable[Sequence[Tgt]], key_of: Callable[[Tgt], str]) -> None:
        self._batches = iter(batches)
        self._key_of = key_of
        self._batch: Sequence[Tgt] = ()
        self._index = -1
        self.key: str | None = None
        self.item: Tgt | None = None
        self.advance()

    def advance(self) -> None:
        """Move to the next record (across batches)."""
        self._index += 1
        while self._index >= len(self._batch):
            batch = next(self._batches, None)
            if batch is None:
                self.key = self.item = None
                return
            self._batch, self._index = batch, 0
        item = self._batch[self._index]
        key = self._key_of(item)
        if self.key is not None and key <= self.key:
            raise _out_of_order("target", key, self.key)
        self.key, self.item = key, item


def plan_batches(
    spec: SyncSpec[Raw, Row, Tgt],
    source_batches: Iterable[Sequence[Raw]],
    target_batches: Iterable[Sequence[Tgt]],
    batch_size: int,
) -> Iterator[BatchPlan[Row, Tgt]]:
    """Merge both sides and yield plans of at most `batch_size` classified keys.

    Every source record and every target record is classified exactly once: one walk of
    both ordered sides, each read one record ahead. A target record whose key is below the
    next source key is an orphan; an unorderable rejection is classified where it arrives,
    without consuming a target record. Memory holds one plan and one batch of each side,
    whatever the table sizes. Like the rest of the planning this runs lazily: even a bad
    `batch_size` is reported on the first `next()`.

    This loop runs once per row of both tables, so it is written as one loop, not a chain
    of generators.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    transform, source_key = spec.transform, spec.source_key
    targets = _Targets(target_batches, spec.target_key)
    plan: BatchPlan[Row, Tgt] = BatchPlan()
    size = 0  # plan.size, counted here: each merged key lands in exactly one class
    previous: str | None = None  # the last ordered source key
    for batch in source_batches:
        for raw in batch:
            result = transform(raw)
            if isinstance(result, Rejection):
                if not result.ordered:
                    plan.rejected.append(result)
                    size += 1
                    if size >= batch_size:
                        yield plan
                        plan, size = BatchPlan(), 0
                    continue
                key = result.key
            else:
                key = source_key(result)
            if previous is not None and key <= previous:
                raise _out_of_order("source", key, previous)
            previous = key
            while targets.key is not None and targets.key < key:
                plan.orphaned.append(targets.item)  # type: ignore[arg-type] - set whenever key is
                plan.last_key = targets.key
                targets.advance()
                size += 1
                if size >= batch_size:
                    yield plan
                    plan, size = BatchPlan(), 0
            if targets.key == key:
                matched: Tgt | None = targets.item
                targets.advance()
            else:
                matched = None
            _classify(spec, plan, key, result, matched)
            plan.last_key = key
            size += 1
            if size >= batch_size:
                yield plan
                plan, size = BatchPlan(), 0
    while targets.key is not None:
        plan.orphaned.append(targets.item)  # type: ignore[arg-type]
        plan.last_key = targets.key
        targets.advance()
        size += 1
        if size >= batch_size:
            yield plan
            plan, size = BatchPlan(), 0
    if size:
        yield plan


def _classify(
    spec: SyncSpec[Raw, Row, Tgt],
    plan: BatchPlan[Row, Tgt],
    key: str,
    source: Row | Rejection,
    target: Tgt | None,
) -> None:
    """Add one source key (and the target record under it, if any) to `plan`, under exactly one class."""
    if isinstance(source, Rejection):
        plan.rejected.append(source)  # a matched target record is consumed, not orphaned
    elif target is None:
        plan.missing.append(source)
    else:
        change = spec.compare(source, target)
        if change is Change.UNCHANGED:
            plan.unchanged.append(key)
        elif change is Change.CHANGED:
            plan.changed.append((source, target))
        elif change is Change.OUTDATED:
            plan.outdated.append((source, target))
        elif change is Change.NEWER_IN_TARGET:
            plan.newer_in_target.append((source, target))
        else:
            raise ValueError(f"compare() of {spec.name} returned {change!r} for a pair")
