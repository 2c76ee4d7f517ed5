"""The product sync's record: Product MongoDB `products` -> Cart PostgreSQL `product`."""

import dagster as dg
import pyarrow as pa

from etl_defs.assets import CART_DB_KEY, CART_DB_PRODUCT, PRODUCT_DB_KEY
from etl_defs.pipeline import Databases, DriftCheck, StepDescriptions, SyncPipeline
from etl_defs.products.columns import classify_products, decode_products, product_records, record_keys
from etl_defs.products.endpoints import ProductSyncEndpoints, product_schema_problems
from etl_defs.products.sensors import build_product_changes_sensor
from etl_defs.run_config import ProductSyncOpConfig, SyncOpConfig
from etl_defs.sync import Change, SyncEndpoints, SyncScope, SyncSpec

PRODUCT_SYNC = SyncSpec(
    name="products",
    source=decode_products,
    target=product_records,
    concat=pa.concat_tables,
    classify=classify_products,
    record_keys=record_keys,
)

PRODUCT_CHECKS = (
    DriftCheck(
        "no_missing_products",
        CART_DB_PRODUCT,
        (Change.MISSING,),
        dg.AssetCheckSeverity.ERROR,
        "products are in the Product MongoDB but not in the Cart DB",
        "Every product of the Product MongoDB has a row in the Cart DB's `product` table. "
        "Products the sync rejects (bad data) are counted as `rejected_source_records`, not here.",
    ),
    DriftCheck(
        "no_stale_products",
        CART_DB_PRODUCT,
        (Change.CHANGED, Change.OUTDATED),
        dg.AssetCheckSeverity.ERROR,
        "products differ between the Product MongoDB and the Cart DB (title, price, image, seller or quantity)",
        "Every `product` row equals its Product MongoDB document (title, price, image, sellerId, quantity).",
    ),
    DriftCheck(
        "no_orphaned_products",
        CART_DB_PRODUCT,
        (Change.ORPHANED,),
        dg.AssetCheckSeverity.WARN,
        "Cart DB products are no longer in the Product MongoDB",
        "Every `product` row still exists in the Product MongoDB. Orphans are left in place by the sync "
        "(carts may still reference them), so this only warns.",
    ),
)


def _endpoints(databases: Databases, scope: SyncScope, config: SyncOpConfig | None) -> SyncEndpoints:
    return ProductSyncEndpoints(databases[PRODUCT_DB_KEY], databases[CART_DB_KEY], scope)


def _schema_problems(databases: Databases) -> list[str]:
    with databases[CART_DB_KEY].connection() as conn:
        return product_schema_problems(conn)


PRODUCT_PIPELINE = SyncPipeline(
    noun="product",
    spec=PRODUCT_SYNC,
    config=ProductSyncOpConfig,
    source_db=PRODUCT_DB_KEY,
    target_db=CART_DB_KEY,
    lock_db=CART_DB_KEY,
    asset=CART_DB_PRODUCT,
    pool=PRODUCT_DB_KEY,
    batch_size_setting="sync_batch_size",
    cron_setting="sync_cron_schedule",
    checks=PRODUCT_CHECKS,
    descriptions=StepDescriptions(
        job="Copy products from the Product MongoDB into the Cart PostgreSQL: insert missing, update changed.",
        check="Check that the Product MongoDB and the Cart PostgreSQL answer and the product table fits.",
        split="Cut the product sync into `parallelism` key ranges of about equal size (from a sample of _ids).",
        sync_range=(
            "Insert missing and update changed products of one key range (all, or the given keys) in the Cart DB, "
            "in bulk; count orphans and rejects."
        ),
        report="Sum the range steps' figures into the product sync's report and its one materialization.",
        checks="Plan the product sync read-only and report missing, stale and orphaned products.",
    ),
    endpoints=_endpoints,
    schema_problems=_schema_problems,
    changes_sensor=build_product_changes_sensor,
)
