"""The Cart service's tables and the Order service's indexes, exactly as those services create them."""

from __future__ import annotations

import psycopg
from pymongo import ASCENDING
from pymongo.database import Database

from etl_defs.products.table import product_table_ddl

CART_SCHEMA_SQL = f"""
{product_table_ddl()};
CREATE TABLE IF NOT EXISTS cart (
    id uuid PRIMARY KEY,
    quantity integer NOT NULL DEFAULT 1,
    "userId" varchar NOT NULL,
    version integer NOT NULL,
    "productId" varchar NOT NULL REFERENCES product(id)
);
"""


def create_cart_schema(conn: psycopg.Connection) -> None:
    """Create the Cart service's `product` and `cart` tables if they do not exist."""
    conn.execute(CART_SCHEMA_SQL)
    conn.commit()


def create_order_indexes(order_db: Database) -> None:
    """Create the Order service's `carts` indexes: `cartId` unique, `userId`."""
    carts = order_db["carts"]
    carts.create_index([("cartId", ASCENDING)], unique=True, name="cartId_1")
    carts.create_index([("userId", ASCENDING)], name="userId_1")
