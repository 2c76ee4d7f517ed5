"""Exactness checks: the whole target read back and compared with what a correct sync leaves.

Each check streams the target in key order beside the expected records in the same order,
so memory stays flat whatever the size; it returns how many records it compared, how
many differed and a few examples.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime
from itertools import zip_longest
from typing import Any

import psycopg

from benchmarks import data
from benchmarks.seed import carts_collection
from etl_defs.carts.table import CART_ID_INDEX
from etl_defs.products.table import PRODUCT_COLUMN_LIST, PRODUCT_TABLE
from local.stack import CART_DB, LocalStack

EXAMPLES = 3
READ_BATCH = 10_000
TIMESTAMPS = ("createdAt", "updatedAt")


def _compare(found: Iterable[Any], expected: Iterable[Any]) -> dict[str, Any]:
    """Pairwise comparison of two streams in the same order; a missing or extra record counts as a mismatch."""
    checked = mismatches = 0
    examples: list[str] = []
    for got, want in zip_longest(found, expected):
        checked += 1
        if got != want:
            mismatches += 1
            if len(examples) < EXAMPLES:
                examples.append(f"expected {want!r}, found {got!r}"[:400])
    return {"ok": mismatches == 0, "checked": checked, "mismatches": mismatches, "examples": examples}


def _pg_rows(stack: LocalStack, query: str) -> Iterator[tuple[Any, ...]]:
    with psycopg.connect(stack.pg_url(CART_DB)) as conn, conn.cursor(name="bench_verify") as cursor:
        cursor.itersize = READ_BATCH
        cursor.execute(query)
        yield from cursor


def verify_products(stack: LocalStack, products: int, table: str = PRODUCT_TABLE, columns: str = "") -> dict[str, Any]:
    """Every row of `table` equals `data.product_row` (ids in order, no row missing or extra)."""
    query = f'SELECT {columns or PRODUCT_COLUMN_LIST} FROM {table} ORDER BY id COLLATE "C"'
    expected = (tuple(data.product_row(index)) for index in range(products))
    return _compare(_pg_rows(stack, query), expected)


def _synced_fields(doc: Mapping[str, Any]) -> dict[str, Any] | str:
    """The document without `_id` and its timestamps; a description instead when a timestamp is missing."""
    fields = {name: value for name, value in doc.items() if name != "_id" and name not in TIMESTAMPS}
    if not all(isinstance(doc.get(name), datetime) for name in TIMESTAMPS):
        return f"no createdAt/updatedAt datetimes: {dict(doc)!r}"
    return fields


def verify_carts(stack: LocalStack, carts: int, products: int) -> dict[str, Any]:
    """Every Order document equals `data.expected_cart` field for field (total, version included), none extra."""
    order = sorted(range(carts), key=data.cart_id)
    expected = (data.expected_cart(index, carts, products).fields() for index in order)
    collection = carts_collection(stack)
    try:
        docs = collection.find({}).sort("cartId", 1).hint(CART_ID_INDEX).batch_size(READ_BATCH)
        return _compare(map(_synced_fields, docs), expected)
    finally:
        collection.database.client.close()


def current_xid(stack: LocalStack) -> int:
    """A transaction id taken now: a row whose xmin is greater was written afterwards."""
    with psycopg.connect(stack.pg_url(CART_DB)) as conn:
        return int(conn.execute("SELECT pg_current_xact_id()::text").fetchone()[0])


def rows_written_since(stack: LocalStack, xid: int, table: str = PRODUCT_TABLE) -> int:
    """How many rows of `table` were inserted or updated after `xid` (a fresh cluster: no xid wraparound)."""
    with psycopg.connect(stack.pg_url(CART_DB)) as conn:
        return conn.execute(f"SELECT count(*) FROM {table} WHERE xmin::text::bigint > %s", (xid,)).fetchone()[0]
