"""The four tables the syncs move data between, as external assets with lineage.

Each table's group is the database it lives in, so the lineage shows three boxes (the
Product MongoDB, the Cart PostgreSQL, the Order MongoDB) and the key's prefix says the same.
"""

from __future__ import annotations

import dagster as dg

OWNERS = ["team:data-platform"]

PRODUCT_DB_PRODUCTS = dg.AssetKey(["product_db", "products"])
CART_DB_PRODUCT = dg.AssetKey(["cart_db", "product"])
CART_DB_CART = dg.AssetKey(["cart_db", "cart"])
ORDER_DB_CARTS = dg.AssetKey(["order_db", "carts"])

#: The group of each database's tables: where it lives, in the lineage's words.
PRODUCT_MONGODB = "product_service_mongodb"
CART_POSTGRESQL = "cart_service_postgresql"
ORDER_MONGODB = "order_service_mongodb"

product_db_products = dg.AssetSpec(
    PRODUCT_DB_PRODUCTS,
    description="Product MongoDB, collection `products`: the Product service's products, the source of truth.",
    group_name=PRODUCT_MONGODB,
    owners=OWNERS,
    kinds={"mongodb"},
)
cart_db_product = dg.AssetSpec(
    CART_DB_PRODUCT,
    description="Cart PostgreSQL, table `product`: the Cart service's copy of each product, kept by "
    "`product_sync_job`.",
    deps=[PRODUCT_DB_PRODUCTS],
    group_name=CART_POSTGRESQL,
    owners=OWNERS,
    kinds={"postgres"},
)
cart_db_cart = dg.AssetSpec(
    CART_DB_CART,
    description="Cart PostgreSQL, table `cart`: the carts the Cart service owns.",
    group_name=CART_POSTGRESQL,
    owners=OWNERS,
    kinds={"postgres"},
)
order_db_carts = dg.AssetSpec(
    ORDER_DB_CARTS,
    description="Order MongoDB, collection `carts`: the Order service's copy of each cart with its product's "
    "details, kept by `cart_sync_job`.",
    deps=[CART_DB_CART, CART_DB_PRODUCT],
    group_name=ORDER_MONGODB,
    owners=OWNERS,
    kinds={"mongodb"},
)

DATABASE_ASSETS = [product_db_products, cart_db_product, cart_db_cart, order_db_carts]
