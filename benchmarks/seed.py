"""Bulk loads of the benchmark's data into the stack: MongoDB `insert_many` in chunks, PostgreSQL `COPY`."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import islice
from typing import Any

import psycopg
from pymongo import DeleteOne, ReplaceOne
from pymongo.collection import Collection

from benchmarks import data
from benchmarks.data import Drift
from etl_defs.carts.table import CART_COLUMNS, CART_TABLE, ORDER_CARTS
from etl_defs.carts.transform import CartRow
from etl_defs.products.table import PRODUCT_COLUMNS, PRODUCT_TABLE, ProductRow
from local.schema import create_cart_schema, create_order_indexes
from local.stack import CART_DB, ORDER_DB, PRODUCT_DB, LocalStack
from resources.postgres import copy_rows

INSERT_CHUNK = 10_000
WRITE_CHUNK = 1000
#: The schemas dlt loads into (its datasets, and their staging datasets) all start with this.
DLT_SCHEMA_PREFIX = "dlt_"


def chunked(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    """`items` as lists of `size` (the last one shorter)."""
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


def products_collection(stack: LocalStack) -> Collection:
    return stack.mongo_client()[PRODUCT_DB]["products"]


def carts_collection(stack: LocalStack) -> Collection:
    return stack.mongo_client()[ORDER_DB][ORDER_CARTS]


def reset(stack: LocalStack) -> None:
    """Empty every database the benchmark uses (collections, tables, dlt's schemas); no Order indexes yet."""
    client = stack.mongo_client()
    client[PRODUCT_DB]["products"].drop()
    client[ORDER_DB][ORDER_CARTS].drop()
    client.close()
    with psycopg.connect(stack.pg_url(CART_DB)) as conn:
        create_cart_schema(conn)
        conn.execute(f"TRUNCATE {CART_TABLE}, {PRODUCT_TABLE}")
        schemas = conn.execute(
            "SELECT nspname FROM pg_namespace WHERE starts_with(nspname, %s)", (DLT_SCHEMA_PREFIX,)
        ).fetchall()
        for (schema,) in schemas:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
        conn.commit()


def seed_products(stack: LocalStack, products: int) -> None:
    """`products` documents in the Product MongoDB; their drifted rows in the Cart DB (5% missing, 5% stale)."""
    collection = products_collection(stack)
    for chunk in chunked(map(data.product_doc, range(products)), INSERT_CHUNK):
        collection.insert_many(chunk, ordered=False)
    collection.database.client.close()
    with psycopg.connect(stack.pg_url(CART_DB)) as conn:
        copy_rows(conn, PRODUCT_TABLE, PRODUCT_COLUMNS, data.drifted_product_rows(products))
        conn.commit()


def load_products(stack: LocalStack, rows: Iterable[ProductRow]) -> None:
    """Replace the Cart DB's products with `rows` (carts must be empty)."""
    with psycopg.connect(stack.pg_url(CART_DB)) as conn:
        conn.execute(f"TRUNCATE {CART_TABLE}, {PRODUCT_TABLE}")
        copy_rows(conn, PRODUCT_TABLE, PRODUCT_COLUMNS, rows)
        conn.commit()


def load_exact_products(stack: LocalStack, products: int) -> None:
    """Replace the Cart DB's products with exactly what a correct sync leaves (carts must be empty)."""
    load_products(stack, map(data.product_row, range(products)))


def seed_carts(stack: LocalStack, carts: int, products: int) -> None:
    """`carts` carts in the Cart DB and their drifted Order DB documents (5% missing, 5% outdated, 1% stale)."""
    with psycopg.connect(stack.pg_url(CART_DB)) as conn:
        rows = (data.cart_row(index, carts, products) for index in range(carts))
        copy_rows(conn, CART_TABLE, CART_COLUMNS, rows)
        conn.commit()
    collection = carts_collection(stack)
    docs = (
        data.order_doc(data.expected_cart(index, carts, products), data.cart_drift(index))
        for index in range(carts)
        if data.cart_drift(index) is not Drift.MISSING
    )
    for chunk in chunked(docs, INSERT_CHUNK):
        collection.insert_many(chunk, ordered=False)
    collection.database.client.close()
    add_order_indexes(stack)  # after the load: twice as fast as keeping them up to date during it


def add_order_indexes(stack: LocalStack) -> None:
    """The Order service's `carts` indexes (create_order_indexes)."""
    client = stack.mongo_client()
    try:
        create_order_indexes(client[ORDER_DB])
    finally:
        client.close()


def apply_order_drift(stack: LocalStack, drifted: Iterable[tuple[CartRow, Drift]]) -> None:
    """Put the given carts' Order documents back in their drifted state (deleted, or the old content)."""
    collection = carts_collection(stack)
    ops = (
        DeleteOne({"cartId": row.cartId})
        if drift is Drift.MISSING
        else ReplaceOne({"cartId": row.cartId}, data.order_doc(row, drift), upsert=True)
        for row, drift in drifted
    )
    for chunk in chunked(ops, WRITE_CHUNK):
        collection.bulk_write(chunk, ordered=False)
    collection.database.client.close()


def global_drift(carts: int, products: int) -> Iterator[tuple[CartRow, Drift]]:
    """Every drifted cart with its drift, as `seed_carts` planted them."""
    for index in range(carts):
        drift = data.cart_drift(index)
        if drift is not Drift.IN_SYNC:
            yield data.expected_cart(index, carts, products), drift


def focus_user_drift(carts: int, products: int) -> list[tuple[CartRow, Drift]]:
    """The drift the user_id sync repairs: data.FOCUS_DRIFT over FOCUS_USER's carts."""
    indexes = data.focus_carts(carts)
    return [
        (data.expected_cart(index, carts, products), drift)
        for index, drift in zip(indexes, data.FOCUS_DRIFT, strict=False)
    ]


def count_user_carts(stack: LocalStack, user: str) -> int:
    """How many Order documents `user` has."""
    collection = carts_collection(stack)
    try:
        return collection.count_documents({"userId": user})
    finally:
        collection.database.client.close()
