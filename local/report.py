"""A drift report computed directly from both databases (not through the sync core).

Deliberately naive (whole tables in memory): it is a check for demo-sized data, used to
show "before" and "after" counts.
"""

from __future__ import annotations

import psycopg
from pymongo import MongoClient

from etl_defs.products.transform import ProductRow, transform_product
from local.stack import CART_DB, PRODUCT_DB, LocalStack


def product_drift(product_docs: list[dict], cart_rows: list[tuple]) -> dict[str, int]:
    """Counts of missing, stale, orphaned and malformed products."""
    in_cart = {row[0]: ProductRow._make(row) for row in cart_rows}
    expected = [transform_product(doc) for doc in product_docs]
    rows = [row for row in expected if isinstance(row, ProductRow)]
    source_ids = {row.id for row in rows}
    return {
        "products_in_mongodb": len(product_docs),
        "malformed": len(expected) - len(rows),
        "missing_in_cart_db": sum(1 for row in rows if row.id not in in_cart),
        "stale_in_cart_db": sum(1 for row in rows if row.id in in_cart and in_cart[row.id] != row),
        "orphaned_in_cart_db": sum(1 for key in in_cart if key not in source_ids),
    }


def drift_report(stack: LocalStack) -> str:
    """One line per figure, for the terminal."""
    client = MongoClient(stack.mongo_url(PRODUCT_DB))
    try:
        docs = list(client[PRODUCT_DB]["products"].find())
    finally:
        client.close()
    with psycopg.connect(stack.pg_url(CART_DB)) as conn:
        rows = conn.execute('SELECT id, title, price, image, "sellerId", quantity FROM product').fetchall()
    figures = product_drift(docs, rows)
    return "\n".join(f"  {name:<22} {value}" for name, value in figures.items())
