"""Key ranges `[low, high)` for splitting one sync into steps that run side by side.

Pure arithmetic on keys as strings in byte order, the order both sides are merged in.
Split points come from the data (a sample of the source's keys) or, for random uuids,
from even prefixes; `ranges_between` turns them into ranges that never overlap and
together cover every key, including keys outside the normal alphabet.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import pairwise

#: The most ranges one sync run is split into.
MAX_PARALLELISM = 64


@dataclass(frozen=True, slots=True)
class KeyRange:
    """The keys `low <= key < high`; an open end (None) reaches past every key on that side.

    The first range of a split has no `low` and the last no `high`, so keys that sort before
    or after every split point (`''`, `zzz`, a MongoDB `_id` of another BSON type) still
    belong to exactly one range.
    """

    low: str | None = None
    high: str | None = None

    def __post_init__(self) -> None:
        if self.low is not None and self.high is not None and not self.low < self.high:
            raise ValueError(f"a key range needs low < high, got [{self.low!r}, {self.high!r})")

    @property
    def is_whole(self) -> bool:
        """Whether this range holds every key."""
        return self.low is None and self.high is None

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str):
            return False
        return (self.low is None or self.low <= key) and (self.high is None or key < self.high)

    def describe(self) -> str:
        """`[6b0f..., 6c12...)`, with `start` and `end` for the open ends."""
        low = "start" if self.low is None else self.low
        high = "end" if self.high is None else self.high
        return f"[{low}, {high})"


#: Every key.
WHOLE_RANGE = KeyRange()


def ranges_between(points: Iterable[str]) -> list[KeyRange]:
    """The ranges the split points cut the key space into: one more than the distinct points."""
    bounds: list[str | None] = [None, *sorted(set(points)), None]
    return [KeyRange(low, high) for low, high in pairwise(bounds)]


def even_points(sorted_keys: Sequence[str], parts: int) -> list[str]:
    """At most `parts - 1` split points that cut `sorted_keys` (a sample, or the keys themselves)
    into `parts` runs of nearly equal length. Fewer when there are fewer distinct keys."""
    if parts < 1:
        raise ValueError(f"parts must be at least 1, got {parts}")
    count = len(sorted_keys)
    points = {sorted_keys[count * part // parts] for part in range(1, parts) if count * part // parts > 0}
    return sorted(points)


def uuid_points(parts: int) -> list[str]:
    """`parts - 1` uuids that cut the uuid space into `parts` equal ranges (for random uuids)."""
    if parts < 1:
        raise ValueError(f"parts must be at least 1, got {parts}")
    return [str(uuid.UUID(int=(part << 128) // parts)) for part in range(1, parts)]
