"""Ops of the cart sync."""

from typing import Any

import dagster as dg

from etl_defs.assets import ORDER_DB_CARTS
from etl_defs.carts.endpoints import CartSyncEndpoints, cart_schema_problems, order_index_problems
from etl_defs.carts.transform import cart_doc_key, cart_key, compare_carts, transform_cart
from etl_defs.ops import check_sync_ready, retried_while_unavailable, run_sync_op
from etl_defs.run_config import CartSyncOpConfig
from etl_defs.sync import SyncScope, SyncSpec
from etl_defs.sync.scope import WHOLE_TABLE
from resources import MongoResource, PostgresResource

CART_SYNC = SyncSpec(
    name="carts",
    transform=transform_cart,
    source_key=cart_key,
    target_key=cart_doc_key,
    compare=compare_carts,
)


@dg.op(description="Check that the Cart PostgreSQL and the Order MongoDB answer, and their tables and indexes fit.")
def check_cart_sync_ready(context: dg.OpExecutionContext, cart_db: PostgresResource, order_db: MongoResource) -> None:
    def problems() -> list[str]:
        with cart_db.connection() as conn:
            return cart_schema_problems(conn) + order_index_problems(order_db)

    check_sync_ready(
        context,
        pipeline="cart",
        databases=[cart_db, order_db],
        target=f"{cart_db.display_name} -> {order_db.display_name}",
        find_problems=problems,
    )


@dg.op(
    ins={"ready": dg.In(dg.Nothing)},
    description=(
        "Insert missing carts into the Order DB and update outdated and changed ones under a version guard, "
        "in bulk; count carts newer in the Order DB, orphans (deleted only when pruning) and rejects."
    ),
)
def sync_carts(
    context: dg.OpExecutionContext, config: CartSyncOpConfig, cart_db: PostgresResource, order_db: MongoResource
) -> dg.Output[dict[str, Any]]:
    if config.keys is not None:
        scope = SyncScope.of_keys(config.keys)
    else:
        scope = SyncScope.of_user(config.user_id) if config.user_id is not None else WHOLE_TABLE
    context.log.info(f"cart sync: orphans are {'deleted' if config.prune_orphans else 'only counted'}")
    output = run_sync_op(
        context,
        config,
        spec=CART_SYNC,
        endpoints=CartSyncEndpoints(cart_db, order_db, scope, prune_orphans=config.prune_orphans),
        lock_db=cart_db,
        asset_key=ORDER_DB_CARTS,
    )
    if config.advance_slot_to is not None:
        _advance_slot(context, config, cart_db)
    return output


def _advance_slot(context: dg.OpExecutionContext, config: CartSyncOpConfig, cart_db: PostgresResource) -> None:
    """Mark the slot's changes up to the run's LSN consumed, now that every write committed."""
    slot, lsn = cart_db.replication_slot, config.advance_slot_to
    if config.dry_run:
        context.log.info(f"dry run: replication slot {slot} stays where it is (not advanced to {lsn})")
        return
    with retried_while_unavailable(context):
        moved = cart_db.advance_slot(lsn)  # type: ignore[arg-type]
    context.log.info(
        f"replication slot {slot} advanced to {lsn}" if moved else f"replication slot {slot} was already at {lsn}"
    )
