"""The Cart DB's changes to `cart` and `product`, as the replication slot's `test_decoding` lines give them.

Pure parsing: which cart ids and product ids changed, whether a table was truncated, and
the LSN of the last commit read (the point a run advances the slot to once its writes
committed). The keyed sync re-reads the current rows, so only the keys matter.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from etl_defs.carts.table import CART_TABLE
from etl_defs.products.table import PRODUCT_TABLE

#: `table public.cart: UPDATE: id[uuid]:'…' quantity[integer]:2 …` (and `TRUNCATE: (no-flags)`).
_CHANGE = re.compile(r"^table (?P<schema>[^ ]+)\.(?P<table>[^ :]+): (?P<op>INSERT|UPDATE|DELETE|TRUNCATE):")
#: The `id` column, first in both tables, after the operation (or an UPDATE's old key and new tuple).
_ID = re.compile(r"(?:(?:INSERT|UPDATE|DELETE): |old-key: |new-tuple: )id\[[^\]]*\]:'((?:[^']|'')*)'")
#: `COMMIT 730 (at 2026-12-02 05:30:00.123456+00)`.
_COMMIT = re.compile(r"^COMMIT(?: \d+)?(?: \(at (?P<at>[^)]+)\))?$")


@dataclass
class CartChanges:
    """What one peek of the slot holds for the cart sync."""

    cart_ids: set[str] = field(default_factory=set)
    product_ids: set[str] = field(default_factory=set)
    truncated: set[str] = field(default_factory=set)  # tables emptied: their keys are unknown
    changes: int = 0  # row changes to `cart` or `product`
    transactions: int = 0
    first_lsn: str | None = None
    up_to_lsn: str | None = None  # the LSN of the last COMMIT read
    oldest_commit: datetime | None = None

    @property
    def needs_full_sync(self) -> bool:
        return bool(self.truncated)


def parse_changes(rows: Iterable[tuple[str, str]], schema: str = "public") -> CartChanges:
    """The cart and product keys in `(lsn, line)` rows of `pg_logical_slot_peek_changes` (test_decoding)."""
    found = CartChanges()
    for lsn, line in rows:
        if found.first_lsn is None:
            found.first_lsn = lsn
        commit = _COMMIT.match(line)
        if commit:
            found.transactions += 1
            found.up_to_lsn = lsn
            at = commit.group("at")
            if at and found.oldest_commit is None:
                found.oldest_commit = _commit_time(at)
            continue
        change = _CHANGE.match(line)
        if change is None or change.group("schema").strip('"') != schema:
            continue
        table = change.group("table").strip('"')
        if table not in (CART_TABLE, PRODUCT_TABLE):
            continue
        found.changes += 1
        if change.group("op") == "TRUNCATE":
            found.truncated.add(table)
            continue
        keys = {value.replace("''", "'") for value in _ID.findall(line)}
        (found.cart_ids if table == CART_TABLE else found.product_ids).update(keys)
    return found


def _commit_time(text: str) -> datetime | None:
    """`2026-12-02 05:30:00.123456+00` as an aware datetime (None when PostgreSQL spelled it otherwise)."""
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None
