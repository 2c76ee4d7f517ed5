"""What a sync covers: the whole table, one user's carts, or an explicit set of keys, each
optionally cut to a key range (one step of a split sync).

One value, honoured by both pipelines' endpoints on both sides, so a narrowed sync goes
through the same plan, writes, lock and reports as a whole one.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace

from etl_defs.sync.ranges import WHOLE_RANGE, KeyRange

#: What a sync covers (`SyncScope.kind`), recorded with each materialization under `SCOPE_METADATA_KEY`.
TABLE_SCOPE, USER_SCOPE, KEYS_SCOPE = "table", "user", "keys"
SCOPE_METADATA_KEY = "scope"


@dataclass(frozen=True, slots=True)
class SyncScope:
    """The keys a sync reads on both sides. Default: every key.

    `keys` are sorted and unique, in the byte order both sides are merged in. `key_range`
    narrows any of the three to the keys in `[low, high)`.
    """

    user_id: str | None = None
    keys: tuple[str, ...] | None = None
    key_range: KeyRange = WHOLE_RANGE

    def __post_init__(self) -> None:
        if self.user_id is not None and self.keys is not None:
            raise ValueError("a sync scope is one user's carts or a set of keys, not both")
        if self.keys is not None and list(self.keys) != sorted(set(self.keys)):
            raise ValueError("the keys of a sync scope must be sorted and unique (use SyncScope.of_keys)")

    @classmethod
    def of_keys(cls, keys: Iterable[str]) -> SyncScope:
        """The scope of exactly these keys (any order, repeats ignored)."""
        return cls(keys=tuple(sorted(set(keys))))

    @classmethod
    def of_user(cls, user_id: str) -> SyncScope:
        return cls(user_id=user_id)

    def within(self, key_range: KeyRange) -> SyncScope:
        """This scope cut to `key_range`."""
        return replace(self, key_range=key_range)

    @property
    def kind(self) -> str:
        """`table`, `user` or `keys`: recorded with each materialization."""
        if self.keys is not None:
            return KEYS_SCOPE
        return USER_SCOPE if self.user_id is not None else TABLE_SCOPE

    def describe(self) -> str:
        """What the scope covers, for logs."""
        if self.keys is not None:
            head = f"{len(self.keys)} key{'s' if len(self.keys) != 1 else ''}"
        else:
            head = f"user {self.user_id!r}" if self.user_id is not None else "the whole table"
        return head if self.key_range.is_whole else f"{head}, keys in {self.key_range.describe()}"

    def key_chunks(self, size: int, after: str | None = None) -> Iterator[list[str]]:
        """The scope's keys in its range and above `after`, in order, `size` at a time (a keyed scope only)."""
        if self.keys is None:
            raise ValueError("key_chunks() needs a scope of keys")
        keys = [key for key in self.keys if key in self.key_range and (after is None or key > after)]
        for start in range(0, len(keys), size):
            yield keys[start : start + size]


#: Every key: the scope of a sync that is not narrowed.
WHOLE_TABLE = SyncScope()
