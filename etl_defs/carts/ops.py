"""Ops of the cart sync."""

from collections.abc import Iterator
from typing import Any

import dagster as dg

from etl_defs.assets import ORDER_DB_CARTS
from etl_defs.carts.endpoints import CartSyncEndpoints, cart_schema_problems, order_index_problems
from etl_defs.carts.transform import cart_doc_key, cart_key, compare_carts, transform_cart
from etl_defs.ops import (
    RangeResult,
    check_sync_ready,
    report_sync_op,
    retried_while_unavailable,
    run_range_op,
    split_sync,
)
from etl_defs.run_config import CartSyncOpConfig
from etl_defs.sync import WHOLE_TABLE, KeyRange, SyncScope, SyncSpec
from resources import MongoResource, PostgresResource

#: The concurrency pool of the cart range steps: caps how many write the Order MongoDB at once.
ORDER_DB_POOL = "order_db"

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


def _scope(config: CartSyncOpConfig) -> SyncScope:
    if config.keys is not None:
        return SyncScope.of_keys(config.keys)
    return SyncScope.of_user(config.user_id) if config.user_id is not None else WHOLE_TABLE


@dg.op(
    ins={"ready": dg.In(dg.Nothing)},
    out=dg.DynamicOut(KeyRange),
    description="Cut the cart sync into `parallelism` key ranges of equal size (cart ids are random uuids).",
)
def split_cart_sync(
    context: dg.OpExecutionContext, config: CartSyncOpConfig, cart_db: PostgresResource, order_db: MongoResource
) -> Iterator[dg.DynamicOutput[KeyRange]]:
    yield from split_sync(context, config, CartSyncEndpoints(cart_db, order_db, _scope(config)))


@dg.op(
    pool=ORDER_DB_POOL,
    description=(
        "Insert missing carts of one key range into the Order DB and update outdated and changed ones under a "
        "version guard, in bulk; count carts newer in the Order DB, orphans (deleted only when pruning) and rejects."
    ),
)
def sync_cart_range(
    context: dg.OpExecutionContext,
    config: CartSyncOpConfig,
    key_range: KeyRange,
    cart_db: PostgresResource,
    order_db: MongoResource,
) -> dg.Output[RangeResult]:
    context.log.info(f"cart sync: orphans are {'deleted' if config.prune_orphans else 'only counted'}")
    endpoints = CartSyncEndpoints(
        cart_db, order_db, _scope(config).within(key_range), prune_orphans=config.prune_orphans
    )
    return run_range_op(context, config, spec=CART_SYNC, endpoints=endpoints, lock_db=cart_db, asset_key=ORDER_DB_CARTS)


@dg.op(
    description=(
        "Sum the range steps' figures into the cart sync's report and its one materialization; "
        "then, when asked, advance the replication slot."
    )
)
def report_cart_sync(
    context: dg.OpExecutionContext, config: CartSyncOpConfig, ranges: list[RangeResult], cart_db: PostgresResource
) -> dg.Output[dict[str, Any]]:
    output = report_sync_op(
        context, config, spec=CART_SYNC, scope=_scope(config), results=ranges, asset_key=ORDER_DB_CARTS
    )
    if config.advance_slot_to is not None:
        _advance_slot(context, config, cart_db)
    return output


def sync_carts(ready: Any) -> Any:
    """The cart sync's steps, inside a job's body: split, one step per range, sum. `ready` runs first."""
    ranges = split_cart_sync(ready=ready)
    return report_cart_sync(ranges.map(sync_cart_range).collect())


#: The ops of the cart sync that take its run config (the job's config mapping gives each the same one).
CART_SYNC_OPS = (split_cart_sync, sync_cart_range, report_cart_sync)


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
