"""Ops of the product sync."""

from typing import Any

import dagster as dg

from etl_defs.assets import CART_DB_PRODUCT
from etl_defs.ops import check_sync_ready, run_sync_op
from etl_defs.products.endpoints import ProductSyncEndpoints, product_schema_problems
from etl_defs.products.transform import compare_products, product_key, transform_product
from etl_defs.run_config import ProductSyncOpConfig
from etl_defs.sync import SyncScope, SyncSpec
from etl_defs.sync.scope import WHOLE_TABLE
from resources import MongoResource, PostgresResource

PRODUCT_SYNC = SyncSpec(
    name="products",
    transform=transform_product,
    source_key=product_key,
    target_key=product_key,
    compare=compare_products,
)


@dg.op(description="Check that the Product MongoDB and the Cart PostgreSQL answer and the product table fits.")
def check_product_sync_ready(
    context: dg.OpExecutionContext, product_db: MongoResource, cart_db: PostgresResource
) -> None:
    def problems() -> list[str]:
        with cart_db.connection() as conn:
            return product_schema_problems(conn)

    check_sync_ready(
        context,
        pipeline="product",
        databases=[product_db, cart_db],
        target=cart_db.display_name,
        find_problems=problems,
    )


@dg.op(
    ins={"ready": dg.In(dg.Nothing)},
    description=(
        "Insert missing and update changed products (all, or the given keys) in the Cart DB, in bulk; "
        "count orphans and rejects."
    ),
)
def sync_products(
    context: dg.OpExecutionContext, config: ProductSyncOpConfig, product_db: MongoResource, cart_db: PostgresResource
) -> dg.Output[dict[str, Any]]:
    scope = SyncScope.of_keys(config.keys) if config.keys is not None else WHOLE_TABLE
    return run_sync_op(
        context,
        config,
        spec=PRODUCT_SYNC,
        endpoints=ProductSyncEndpoints(product_db, cart_db, scope),
        lock_db=cart_db,
        asset_key=CART_DB_PRODUCT,
    )
