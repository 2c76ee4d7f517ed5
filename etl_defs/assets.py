"""The four tables the syncs move data between, as external assets with lineage."""

from __future__ import annotations

import dagster as dg

GROUP = "shop_databases"
OWNERS = ["team:data-platform"]

PRODUCT_DB_PRODUCTS = dg.AssetKey(["product_db", "products"])
CART_DB_PRODUCT = dg.AssetKey(["cart_db", "product"])
CART_DB_CART = dg.AssetKey(["cart_db", "cart"])
ORDER_DB_CARTS = dg.AssetKey(["order_db", "carts"])

product_db_products = dg.AssetSpec(
    PRODUCT_DB_PRODUCTS,
    description="Products owned by the Product service (MongoDB `products`): the source of truth.",
    group_name=GROUP,
    owners=OWNERS,
    kinds={"mongodb"},
)
cart_db_product = dg.AssetSpec(
    CART_DB_PRODUCT,
    description="The Cart service's copy of each product (PostgreSQL `product`), kept by `product_sync_job`.",
    deps=[PRODUCT_DB_PRODUCTS],
    group_name=GROUP,
    owners=OWNERS,
    kinds={"postgres"},
)
cart_db_cart = dg.AssetSpec(
    CART_DB_CART,
    description="Carts owned by the Cart service (PostgreSQL `cart`).",
    group_name=GROUP,
    owners=OWNERS,
    kinds={"postgres"},
)
order_db_carts = dg.AssetSpec(
    ORDER_DB_CARTS,
    description="The Order service's copy of each cart with its product's details (MongoDB `carts`), kept by `cart_sync_job`.",
    deps=[CART_DB_CART, CART_DB_PRODUCT],
    group_name=GROUP,
    owners=OWNERS,
    kinds={"mongodb"},
)

DATABASE_ASSETS = [product_db_products, cart_db_product, cart_db_cart, order_db_carts]
