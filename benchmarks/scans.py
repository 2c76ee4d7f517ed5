"""The floors: each side's bare reads, in every shape the server offers, and a bare bulk write.

A scan decodes every document or row (pymongo builds each dict, psycopg each tuple,
pymongoarrow each column) and counts it; it does no transform, comparison or write.
`fetch_size` is the documents or rows per round trip, the same the jobs are given
(MONGODB_FETCH_SIZE, POSTGRES_FETCH_SIZE).

    python -m benchmarks.scans drivers-mongo MONGO_URL FETCH_SIZE
    python -m benchmarks.scans drivers-postgres PG_URL FETCH_SIZE

run the drivers' own work of the product sync in a fresh process (pymongo decoding the five
synced fields; psycopg reading the target rows) and print its rows and CPU seconds (the read
alone, the interpreter's start-up excluded) as JSON.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import psycopg
from pymongo import MongoClient, UpdateOne

from benchmarks.seed import WRITE_CHUNK, carts_collection, chunked, products_collection
from etl_defs.carts.endpoints import SCAN_SQL as CART_SYNC_SCAN_SQL  # the cart sync's whole-table query
from etl_defs.carts.table import CART_ID_INDEX
from etl_defs.carts.transform import CartRow
from etl_defs.products.table import SELECT_PRODUCTS_SQL
from local.stack import CART_DB, PRODUCT_DB, LocalStack
from resources import MongoResource

#: The five fields the product sync takes from a Product document (dlt's read and the projected bare scan).
PRODUCT_PROJECTION = {"title": 1, "price": 1, "image": 1, "sellerId": 1, "quantity": 1}
#: The product sync's target query (its endpoints add this order to the table's SELECT).
PRODUCT_SCAN_SQL = f'{SELECT_PRODUCTS_SQL} ORDER BY id COLLATE "C"'
#: The cart sync's target query: Order documents with a string cartId, in cartId order.
ORDER_QUERY = {"cartId": {"$type": "string"}}


def _count(items: Iterable[Any]) -> int:
    return sum(1 for _ in items)


def _scan_products(stack: LocalStack, fetch_size: int, *, projected: bool, ordered: bool) -> int:
    collection = products_collection(stack)
    cursor = collection.find({}, PRODUCT_PROJECTION if projected else None).batch_size(fetch_size)
    if ordered:
        cursor = cursor.sort("_id", 1).hint("_id_")
    try:
        return _count(cursor)
    finally:
        collection.database.client.close()


def scan_products_source(stack: LocalStack, fetch_size: int) -> int:
    """The product sync's source query: whole documents in `_id` order along the `_id_` index."""
    return _scan_products(stack, fetch_size, projected=False, ordered=True)


def scan_products_natural(stack: LocalStack, fetch_size: int) -> int:
    """Whole documents in natural order (a collection scan, no sort)."""
    return _scan_products(stack, fetch_size, projected=False, ordered=False)


def scan_products_projected(stack: LocalStack, fetch_size: int) -> int:
    """The five synced fields projected, in `_id` order along the `_id_` index (the sync's read before)."""
    return _scan_products(stack, fetch_size, projected=True, ordered=True)


def scan_products_projected_natural(stack: LocalStack, fetch_size: int) -> int:
    """The five synced fields projected, in natural order."""
    return _scan_products(stack, fetch_size, projected=True, ordered=False)


def scan_products_arrow(stack: LocalStack, fetch_size: int) -> int:
    """The product sync's source read and decode: raw BSON batches of whole documents in `_id` order, read
    as the sync reads them (`MongoResource.find_raw_batches`), into Arrow columns."""
    from etl_defs.products.columns import decode_products

    state = stack.state
    product_db = MongoResource(
        url=stack.mongo_url(PRODUCT_DB),
        username=state.mongo_user,
        password=state.mongo_password,
        fetch_size=fetch_size,
        project_fields=False,
    )
    batches = product_db.find_raw_batches("products", {}, None, order_by="_id", hint="_id_", batch_size=fetch_size)
    try:
        return sum(len(decode_products(raw).keys) for raw in batches)
    finally:
        product_db.close()


SYNC_READ = "whole, _id order (the sync's query)"
#: The product source's bare reads (name: scan), the fastest of which the sync is measured against.
PRODUCT_READS = {
    SYNC_READ: scan_products_source,
    "whole, natural order": scan_products_natural,
    "5 fields projected, _id order": scan_products_projected,
    "5 fields projected, natural order": scan_products_projected_natural,
    "pymongoarrow, whole, _id order (the sync's read and decode)": scan_products_arrow,
}


def scan_order_natural(stack: LocalStack, fetch_size: int) -> int:
    """Whole Order documents in natural order (a collection scan, no sort)."""
    collection = carts_collection(stack)
    try:
        return _count(collection.find({}).batch_size(fetch_size))
    finally:
        collection.database.client.close()


def scan_order_carts(stack: LocalStack, fetch_size: int) -> int:
    """The cart sync's target read: whole Order documents in `cartId` order along `cartId_1`."""
    collection = carts_collection(stack)
    cursor = collection.find(ORDER_QUERY).sort("cartId", 1).hint(CART_ID_INDEX).batch_size(fetch_size)
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


def drivers_mongo(url: str, fetch_size: int) -> dict[str, float]:
    """pymongo decoding the five synced fields of every product (projected, natural order): rows and CPU s."""
    client = MongoClient(url)
    collection = client.get_default_database()["products"]
    collection.find_one({}, {"_id": 1})  # connected and authenticated before the clock starts
    started = time.process_time()
    rows = _count(collection.find({}, PRODUCT_PROJECTION).batch_size(fetch_size))
    cpu = time.process_time() - started
    client.close()
    return {"rows": rows, "cpu_s": cpu}


def drivers_postgres(url: str, fetch_size: int) -> dict[str, float]:
    """psycopg reading the target rows through a server-side cursor: rows and CPU s."""
    with psycopg.connect(url) as conn:
        conn.execute("SELECT 1")
        started = time.process_time()
        rows = 0
        with conn.cursor(name="drivers_scan") as cursor:
            cursor.itersize = fetch_size
            cursor.execute(PRODUCT_SCAN_SQL)
            while batch := cursor.fetchmany(fetch_size):
                rows += len(batch)
        return {"rows": rows, "cpu_s": time.process_time() - started}


if __name__ == "__main__":
    work = {"drivers-mongo": drivers_mongo, "drivers-postgres": drivers_postgres}[sys.argv[1]]
    print(json.dumps(work(sys.argv[2], int(sys.argv[3]))))
