"""A drift report computed directly from both databases (not through the sync core).

Deliberately naive (whole tables in memory): it is a check for demo-sized data, used to
show "before" and "after" counts.
"""

from __future__ import annotations

import psycopg

from etl_defs.products.table import SELECT_PRODUCTS_SQL, ProductRow
from etl_defs.products.transform import transform_product
from local.demo_data import order_doc_fields
from local.stack import CART_DB, ORDER_DB, PRODUCT_DB, LocalStack


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


#: Cart columns the report reads: the cart, then its product's (all None when the row is gone).
CART_JOIN_SQL = (
    'SELECT c.id::text, c.quantity, c."userId", c.version, c."productId", '
    'p.title, p.price, p.image, p."sellerId", p.quantity '
    'FROM cart c LEFT JOIN product p ON p.id = c."productId"'
)


def cart_drift(cart_rows: list[tuple], order_docs: list[dict]) -> dict[str, int]:
    """Counts of missing, outdated, stale, newer and orphaned Order carts, and unsyncable carts.

    Written independently of the sync's transform: the expected document comes from `order_doc_fields`.
    """
    in_order = {doc.get("cartId"): doc for doc in order_docs}
    figures = dict.fromkeys(
        [
            "carts_in_cart_db",
            "unsyncable",
            "missing_in_order_db",
            "outdated_in_order_db",
            "stale_in_order_db",
            "newer_in_order_db",
            "orphaned_in_order_db",
        ],
        0,
    )
    figures["carts_in_cart_db"] = len(cart_rows)
    for cart_id, quantity, user_id, version, product_id, title, price, image, seller_id, stock in cart_rows:
        if title is None or quantity <= 0 or price < 0:
            figures["unsyncable"] += 1
            continue
        cart = (cart_id, quantity, user_id, version, product_id)
        expected = order_doc_fields(cart, (product_id, title, price, image, seller_id, stock))
        doc = in_order.get(cart_id)
        if doc is None:
            figures["missing_in_order_db"] += 1
        elif not isinstance(doc.get("version"), int | float) or doc["version"] < version:
            figures["outdated_in_order_db"] += 1
        elif doc["version"] > version:
            figures["newer_in_order_db"] += 1
        elif any(doc.get(name) != value for name, value in expected.items()):
            figures["stale_in_order_db"] += 1
    cart_ids = {row[0] for row in cart_rows}
    figures["orphaned_in_order_db"] = sum(1 for key in in_order if key not in cart_ids)
    return figures


def drift_report(stack: LocalStack) -> str:
    """One line per figure, for the terminal: products, then carts."""
    client = stack.mongo_client()
    try:
        docs = list(client[PRODUCT_DB]["products"].find())
        carts = list(client[ORDER_DB]["carts"].find({}, {"_id": 0}))
    finally:
        client.close()
    with psycopg.connect(stack.pg_url(CART_DB)) as conn:
        rows = conn.execute(SELECT_PRODUCTS_SQL).fetchall()
        cart_rows = conn.execute(CART_JOIN_SQL).fetchall()
    figures = {**product_drift(docs, rows), **cart_drift(cart_rows, carts)}
    return "\n".join(f"  {name:<22} {value}" for name, value in figures.items())
