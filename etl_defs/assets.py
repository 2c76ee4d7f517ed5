"""The four tables the syncs move data between, as external assets with lineage.

Each table's group is the database it lives in, so the lineage shows three boxes (the
Product MongoDB, the Cart PostgreSQL, the Order MongoDB) and the key's prefix says the same.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import cache

import dagster as dg
from croniter import croniter

from etl_defs.settings import SyncSettings

OWNERS = ["team:data-platform"]

PRODUCT_DB_PRODUCTS = dg.AssetKey(["product_db", "products"])
CART_DB_PRODUCT = dg.AssetKey(["cart_db", "product"])
CART_DB_CART = dg.AssetKey(["cart_db", "cart"])
ORDER_DB_CARTS = dg.AssetKey(["order_db", "carts"])

#: The resource key of each database (and the concurrency pool of the range steps that hit it hardest).
PRODUCT_DB_KEY = "product_db"
CART_DB_KEY = "cart_db"
ORDER_DB_KEY = "order_db"

#: Which database (resource key) holds each table.
DATABASE_OF_ASSET = {
    PRODUCT_DB_PRODUCTS: PRODUCT_DB_KEY,
    CART_DB_PRODUCT: CART_DB_KEY,
    CART_DB_CART: CART_DB_KEY,
    ORDER_DB_CARTS: ORDER_DB_KEY,
}

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

#: A target table is overdue when its last sync is older than this many of its schedule's intervals.
FRESHNESS_INTERVALS = 2
#: What is looked at for a schedule's longest interval: a week and a day of ticks (a weekday-only cron's
#: longest is its weekend), or this many ticks of a frequent one, whichever ends first.
_CRON_SAMPLE_SPAN = timedelta(days=8)
_CRON_SAMPLE_TICKS = 500


@cache  # the assets' policies and alerts_sensor's texts ask for the same crons
def longest_cron_interval(cron: str) -> timedelta:
    """The longest time between two consecutive ticks of `cron` (over its next ticks from a fixed date)."""
    ticks = croniter(cron, datetime(2026, 1, 1, tzinfo=UTC))
    first = previous = ticks.get_next(datetime)
    longest = timedelta(0)
    for _ in range(_CRON_SAMPLE_TICKS):
        following = ticks.get_next(datetime)
        longest = max(longest, following - previous)
        previous = following
        if previous - first > _CRON_SAMPLE_SPAN:
            break
    return longest


def freshness_window(cron: str) -> timedelta:
    """How old a target table's last sync may be: FRESHNESS_INTERVALS of its schedule's longest interval."""
    return FRESHNESS_INTERVALS * longest_cron_interval(cron)


def build_database_assets(settings: SyncSettings) -> list[dg.AssetSpec]:
    """The four tables; each target carries a freshness policy derived from its sync's schedule."""
    product_window = freshness_window(settings.sync_cron_schedule)
    cart_window = freshness_window(settings.cart_sync_cron_schedule)
    return [
        product_db_products,
        cart_db_product.replace_attributes(freshness_policy=dg.FreshnessPolicy.time_window(fail_window=product_window)),
        cart_db_cart,
        order_db_carts.replace_attributes(freshness_policy=dg.FreshnessPolicy.time_window(fail_window=cart_window)),
    ]
