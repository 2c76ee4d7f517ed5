"""The cart sync's record: Cart PostgreSQL `cart` LEFT JOIN `product` -> Order MongoDB `carts`."""

import dagster as dg

from etl_defs.assets import CART_DB_KEY, ORDER_DB_CARTS, ORDER_DB_KEY
from etl_defs.carts.endpoints import CartSyncEndpoints, cart_schema_problems, order_index_problems
from etl_defs.carts.sensors import build_cart_changes_sensor
from etl_defs.carts.transform import cart_doc_key, cart_key, compare_carts, transform_cart
from etl_defs.pipeline import Databases, DriftCheck, StepDescriptions, SyncPipeline
from etl_defs.run_config import CartSyncOpConfig, SyncOpConfig
from etl_defs.steps.retries import retried_while_unavailable
from etl_defs.sync import Change, SyncEndpoints, SyncScope, row_spec

CART_SYNC = row_spec(
    name="carts",
    transform=transform_cart,
    source_key=cart_key,
    target_key=cart_doc_key,
    compare=compare_carts,
)

CART_CHECKS = (
    DriftCheck(
        "no_missing_carts",
        ORDER_DB_CARTS,
        (Change.MISSING,),
        dg.AssetCheckSeverity.ERROR,
        "carts are in the Cart DB but not in the Order MongoDB",
        "Every cart of the Cart DB has a document in the Order MongoDB's `carts`. Carts the sync rejects "
        "(e.g. an unknown product) are counted as `rejected_source_records`, not here.",
    ),
    DriftCheck(
        "no_outdated_carts",
        ORDER_DB_CARTS,
        (Change.OUTDATED, Change.CHANGED),
        dg.AssetCheckSeverity.ERROR,
        "Order DB carts are older than the Cart DB's or carry old product details",
        "Every Order `carts` document has the Cart DB's version, and at that version the current product "
        "title, price, image, seller and quantity (so `total` is right at checkout). Documents newer than "
        "the Cart DB are counted as `newer_in_target`, not here.",
        reports_newer_in_target=True,
    ),
    DriftCheck(
        "no_orphaned_carts",
        ORDER_DB_CARTS,
        (Change.ORPHANED,),
        dg.AssetCheckSeverity.WARN,
        "Order DB carts are no longer in the Cart DB",
        "Every Order `carts` document still has its cart in the Cart DB. The cart sync deletes orphans only "
        "with `prune_orphans: true`, so this only warns.",
    ),
)


def _endpoints(databases: Databases, scope: SyncScope, config: SyncOpConfig | None) -> SyncEndpoints:
    prune = isinstance(config, CartSyncOpConfig) and config.prune_orphans
    return CartSyncEndpoints(databases[CART_DB_KEY], databases[ORDER_DB_KEY], scope, prune_orphans=prune)


def _schema_problems(databases: Databases) -> list[str]:
    with databases[CART_DB_KEY].connection() as conn:
        return cart_schema_problems(conn) + order_index_problems(databases[ORDER_DB_KEY])


def advance_slot(context: dg.OpExecutionContext, config: CartSyncOpConfig, databases: Databases) -> None:
    """When the run was asked to, mark the slot's changes up to its LSN consumed, now that every write committed."""
    if config.advance_slot_to is None:
        return
    cart_db, lsn = databases[CART_DB_KEY], config.advance_slot_to
    slot = cart_db.replication_slot
    if config.dry_run:
        context.log.info(f"dry run: replication slot {slot} stays where it is (not advanced to {lsn})")
        return
    with retried_while_unavailable(context):
        moved = cart_db.advance_slot(lsn)
    context.log.info(
        f"replication slot {slot} advanced to {lsn}" if moved else f"replication slot {slot} was already at {lsn}"
    )


CART_PIPELINE = SyncPipeline(
    noun="cart",
    spec=CART_SYNC,
    config=CartSyncOpConfig,
    source_db=CART_DB_KEY,
    target_db=ORDER_DB_KEY,
    lock_db=CART_DB_KEY,
    asset=ORDER_DB_CARTS,
    pool=ORDER_DB_KEY,
    batch_size_setting="cart_sync_batch_size",
    cron_setting="cart_sync_cron_schedule",
    checks=CART_CHECKS,
    descriptions=StepDescriptions(
        job=(
            "Copy carts (joined with their products) from the Cart PostgreSQL into the Order MongoDB: insert "
            "missing, update outdated and changed under a version guard, never overwrite a newer cart."
        ),
        check="Check that the Cart PostgreSQL and the Order MongoDB answer, and their tables and indexes fit.",
        split="Cut the cart sync into `parallelism` key ranges of equal size (cart ids are random uuids).",
        sync_range=(
            "Insert missing carts of one key range into the Order DB and update outdated and changed ones under a "
            "version guard, in bulk; count carts newer in the Order DB, orphans (deleted only when pruning) and "
            "rejects."
        ),
        report=(
            "Sum the range steps' figures into the cart sync's report and its one materialization; "
            "then, when asked, advance the replication slot."
        ),
        checks="Plan the cart sync read-only and report missing, outdated and orphaned carts.",
    ),
    endpoints=_endpoints,
    schema_problems=_schema_problems,
    changes_sensor=build_cart_changes_sensor,
    after_report=advance_slot,
)
