"""Ops of the product sync."""

from collections.abc import Iterator
from typing import Any

import dagster as dg

from etl_defs.assets import CART_DB_PRODUCT
from etl_defs.ops import RangeResult, check_sync_ready, report_sync_op, run_range_op, split_sync
from etl_defs.products.endpoints import ProductSyncEndpoints, product_schema_problems
from etl_defs.products.transform import compare_products, product_key, transform_product
from etl_defs.run_config import ProductSyncOpConfig
from etl_defs.sync import WHOLE_TABLE, KeyRange, SyncScope, SyncSpec
from resources import MongoResource, PostgresResource

#: The concurrency pool of the product range steps: caps how many read the Product MongoDB at once.
PRODUCT_DB_POOL = "product_db"

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


def _scope(config: ProductSyncOpConfig) -> SyncScope:
    return SyncScope.of_keys(config.keys) if config.keys is not None else WHOLE_TABLE


@dg.op(
    ins={"ready": dg.In(dg.Nothing)},
    out=dg.DynamicOut(KeyRange),
    description="Cut the product sync into `parallelism` key ranges of about equal size (from a sample of _ids).",
)
def split_product_sync(
    context: dg.OpExecutionContext, config: ProductSyncOpConfig, product_db: MongoResource, cart_db: PostgresResource
) -> Iterator[dg.DynamicOutput[KeyRange]]:
    yield from split_sync(context, config, ProductSyncEndpoints(product_db, cart_db, _scope(config)))


@dg.op(
    pool=PRODUCT_DB_POOL,
    description=(
        "Insert missing and update changed products of one key range (all, or the given keys) in the Cart DB, "
        "in bulk; count orphans and rejects."
    ),
)
def sync_product_range(
    context: dg.OpExecutionContext,
    config: ProductSyncOpConfig,
    key_range: KeyRange,
    product_db: MongoResource,
    cart_db: PostgresResource,
) -> dg.Output[RangeResult]:
    endpoints = ProductSyncEndpoints(product_db, cart_db, _scope(config).within(key_range))
    return run_range_op(
        context, config, spec=PRODUCT_SYNC, endpoints=endpoints, lock_db=cart_db, asset_key=CART_DB_PRODUCT
    )


@dg.op(description="Sum the range steps' figures into the product sync's report and its one materialization.")
def report_product_sync(
    context: dg.OpExecutionContext, config: ProductSyncOpConfig, ranges: list[RangeResult]
) -> dg.Output[dict[str, Any]]:
    return report_sync_op(
        context, config, spec=PRODUCT_SYNC, scope=_scope(config), results=ranges, asset_key=CART_DB_PRODUCT
    )


def sync_products(ready: Any) -> Any:
    """The product sync's steps, inside a job's body: split, one step per range, sum. `ready` runs first."""
    ranges = split_product_sync(ready=ready)
    return report_product_sync(ranges.map(sync_product_range).collect())


#: The ops of the product sync that take its run config (the job's config mapping gives each the same one).
PRODUCT_SYNC_OPS = (split_product_sync, sync_product_range, report_product_sync)
