"""The Cart service's tables and the Order service's indexes, exactly as those services create them."""

from __future__ import annotations

import psycopg
from pymongo import ASCENDING
from pymongo.database import Database

from etl_defs.carts.table import ORDER_CART_INDEXES, ORDER_CARTS, cart_table_ddl
from etl_defs.products.table import product_table_ddl

CART_SCHEMA_SQL = f"{product_table_ddl()};\n{cart_table_ddl()};\n"


def create_cart_schema(conn: psycopg.Connection) -> None:
    """Create the Cart service's `product` and `cart` tables if they do not exist."""
    conn.execute(CART_SCHEMA_SQL)
    conn.commit()


def create_order_indexes(order_db: Database) -> None:
    """Create the Order service's `carts` indexes: `cartId` unique, `userId`."""
    carts = order_db[ORDER_CARTS]
    for name, field, unique in ORDER_CART_INDEXES:
        carts.create_index([(field, ASCENDING)], unique=unique, name=name)
