"""The floors: each side's read with the sync's own query and nothing else, and a bare bulk write.

A scan decodes every document or row (pymongo builds each dict, psycopg each tuple) and
counts it; it does no transform, comparison or write. `fetch_size` is the documents or
rows per round trip, the same the jobs are given (MONGODB_FETCH_SIZE, POSTGRES_FETCH_SIZE).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import psycopg
from pymongo import UpdateOne

from benchmarks.seed import WRITE_CHUNK, carts_collection, chunked, products_collection
from etl_defs.carts.endpoints import SCAN_SQL as CART_SYNC_SCAN_SQL  # the cart sync's whole-table query
from etl_defs.carts.table import CART_ID_INDEX
from etl_defs.carts.transform import CART_DOC_PROJECTION, CartRow
from etl_defs.products.table import SELECT_PRODUCTS_SQL
from local.stack import CART_DB, LocalStack

#: The five fields the product sync takes from a Product document (dlt's read and the projected bare scan).
PRODUCT_PROJECTION = {"title": 1, "price": 1, "image": 1, "sellerId": 1, "quantity": 1}
#: The product sync's target query (its endpoints add this order to the table's SELECT).
PRODUCT_SCAN_SQL = f'{SELECT_PRODUCTS_SQL} ORDER BY id COLLATE "C"'
#: The cart sync's target query: Order documents with a string cartId, in cartId order.
ORDER_QUERY = {"cartId": {"$type": "string"}}


def _count(items: Iterable[Any]) -> int:
    return sum(1 for _ in items)


def scan_products_source(stack: LocalStack, fetch_size: int) -> int:
    """The product sync's source read: whole documents in `_id` order along the `_id_` index (the embedded
    server serves them faster than the five fields projected, and as fast as in natural order)."""
    collection = products_collection(stack)
    cursor = collection.find({}).sort("_id", 1).hint("_id_").batch_size(fetch_size)
    try:
        return _count(cursor)
    finally:
        collection.database.client.close()


def scan_order_carts(stack: LocalStack, fetch_size: int) -> int:
    """The cart sync's target read: projected Order documents in `cartId` order along `cartId_1`."""
    collection = carts_collection(stack)
    cursor = (
        collection.find(ORDER_QUERY, CART_DOC_PROJECTION).sort("cartId", 1).hint(CART_ID_INDEX).batch_size(fetch_size)
    )
    try:
        return _count(cursor)
    finally:
        collection.database.client.close()


def scan_postgres(stack: LocalStack, query: str, fetch_size: int) -> int:
    """`query`'s rows through a server-side cursor, `fetch_size` at a time."""
    rows = 0
    with psycopg.connect(stack.pg_url(CART_DB)) as conn, conn.cursor(name="bench_scan") as cursor:
        cursor.itersize = fetch_size
        cursor.execute(query)
        while batch := cursor.fetchmany(fetch_size):
            rows += len(batch)
    return rows


def scan_products_target(stack: LocalStack, fetch_size: int) -> int:
    """The product sync's target read."""
    return scan_postgres(stack, PRODUCT_SCAN_SQL, fetch_size)


def scan_carts_source(stack: LocalStack, fetch_size: int) -> int:
    """The cart sync's source read (`cart` LEFT JOIN `product` in `cart.id` order)."""
    return scan_postgres(stack, CART_SYNC_SCAN_SQL, fetch_size)


def _set(row: CartRow, now: datetime) -> dict[str, Any]:
    fields = row.fields()
    del fields["cartId"]
    return {**fields, "updatedAt": now}


def bulk_write_carts(stack: LocalStack, rows: Iterable[CartRow]) -> tuple[int, int]:
    """Unordered `UpdateOne`s by cartId with `$set` of the synced fields and a new `updatedAt`, in chunks.

    Returns (documents matched, write commands). A new `updatedAt` makes every update a real
    modification, as the sync's are.
    """
    collection = carts_collection(stack)
    now = datetime.now(UTC)
    matched = commands = 0
    try:
        for chunk in chunked(rows, WRITE_CHUNK):
            ops = [UpdateOne({"cartId": row.cartId}, {"$set": _set(row, now)}) for row in chunk]
            matched += collection.bulk_write(ops, ordered=False).matched_count
            commands += 1
    finally:
        collection.database.client.close()
    return matched, commands
