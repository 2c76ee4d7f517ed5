"""`cart_changes_sensor`: follow the Cart PostgreSQL's logical decoding and repair the changed carts within seconds.

Each tick peeks at the replication slot (nothing is consumed), turns the changes to `cart`
and `product` into cart ids, and requests one keyed run of `cart_sync_job`, which advances
the slot once its writes committed. How it keeps nothing lost: docs/automation.md.
"""

from __future__ import annotations

from typing import Any

import dagster as dg

from etl_defs.carts.changes import parse_changes
from etl_defs.carts.endpoints import carts_holding
from etl_defs.run_config import CartSyncOpConfig
from etl_defs.settings import SyncSettings
from etl_defs.tags import (
    CART_CHANGES_FULL_TRIGGER,
    CART_CHANGES_TRIGGER,
    CART_SLOT_LOST_TRIGGER,
    IN_FLIGHT_STATUSES,
    OLDEST_CHANGE_TAG,
    TRIGGER_TAG,
    run_key,
    sensor_run_tags,
)
from resources import DatabaseUnavailableError, PostgresResource, ReplicationSlotLostError
from resources.postgres import SlotState

SENSOR_NAME = "cart_changes_sensor"
#: TRIGGER_TAG of the full syncs it requests: for changes it cannot key (a truncate, too many carts), or
#: after the slot was lost.
CHANGES_FULL_TRIGGER = CART_CHANGES_FULL_TRIGGER
SLOT_LOST_TRIGGER = CART_SLOT_LOST_TRIGGER
#: The runs of this sensor that consume the slot: one at a time.
SLOT_CONSUMERS = (CART_CHANGES_TRIGGER, CHANGES_FULL_TRIGGER)
#: The most cart ids one keyed run takes; past it, the tick requests a full sync instead.
MAX_KEYS_PER_RUN = 5000
#: The most changes one tick peeks at (whole transactions: one larger transaction is read whole).
MAX_CHANGES_PER_TICK = 5000
_ENDED_BADLY = (dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED)


def setup_problem(state: SlotState, slot: str) -> str | None:
    """Why logical decoding cannot work on this Cart DB, with what a DBA does about it (None: it can)."""
    if state.wal_level != "logical":
        return (
            f"the Cart DB's wal_level is {state.wal_level}, and logical decoding needs logical: a DBA sets "
            "ALTER SYSTEM SET wal_level = logical and restarts PostgreSQL (see the README)"
        )
    if not state.can_replicate:
        return (
            f"role {state.role} may not use replication slots: a DBA grants it with "
            f"ALTER ROLE {state.role} REPLICATION (see the README)"
        )
    if state.database is not None and state.database != state.current_database:
        return (
            f"replication slot {slot} belongs to database {state.database}, not {state.current_database}: "
            "set CART_CDC_SLOT to another name"
        )
    return None


def _newest_slot_consumer(
    instance: dg.DagsterInstance, job_name: str, statuses: list[dg.DagsterRunStatus] | None = None
) -> dg.DagsterRun | None:
    """The newest run of `job_name` this sensor requested to consume the slot (in one of `statuses`)."""
    filters = dg.RunsFilter(job_name=job_name, tags={TRIGGER_TAG: list(SLOT_CONSUMERS)}, statuses=statuses or [])
    runs = instance.get_runs(filters=filters, limit=1)
    return runs[0] if runs else None


def build_cart_changes_sensor(settings: SyncSettings, cart_sync_job: dg.JobDefinition) -> dg.SensorDefinition:
    """`cart_changes_sensor`: a keyed `cart_sync_job` run for the carts changed since the slot's position."""
    interval = settings.cart_cdc_interval_seconds

    @dg.sensor(
        name=SENSOR_NAME,
        job=cart_sync_job,
        minimum_interval_seconds=interval,
        default_status=settings.default_status(dg.DefaultSensorStatus),
        description=(
            f"Every {interval}s (CART_CDC_INTERVAL_SECONDS), peek at the Cart PostgreSQL's replication slot "
            f"{settings.cart_cdc_slot} (CART_CDC_SLOT) and request a cart_sync_job run for the carts whose row or "
            "product changed; the run advances the slot once its writes committed."
        ),
    )
    def cart_changes_sensor(context: dg.SensorEvaluationContext, cart_db: PostgresResource) -> dg.SensorResult:
        try:
            return _tick(context, cart_db, cart_sync_job.name)
        except DatabaseUnavailableError as error:
            return dg.SensorResult(skip_reason=f"{error}; the slot keeps the changes until the next tick reads them")

    return cart_changes_sensor


def _tick(context: dg.SensorEvaluationContext, cart_db: PostgresResource, job_name: str) -> dg.SensorResult:
    slot = cart_db.replication_slot
    state = cart_db.slot_state()
    problem = setup_problem(state, slot)
    if problem is not None:
        return dg.SensorResult(skip_reason=problem)
    if state.database is None:
        lsn = cart_db.create_slot()
        return dg.SensorResult(
            skip_reason=f"created replication slot {slot} at {lsn}: following cart and product changes from now "
            "on (a full cart_sync_job repairs anything older)"
        )
    if state.wal_status == "lost":
        return _slot_lost(context, cart_db, f"replication slot {slot} is lost (wal_status = lost)")
    running = _newest_slot_consumer(context.instance, job_name, IN_FLIGHT_STATUSES)
    if running is not None:
        return dg.SensorResult(
            skip_reason=f"cart_sync_job run {running.run_id} is still applying the slot's changes "
            f"({running.status.value.lower()}); the slot is read again once that run advanced it or ended "
            "(a run whose worker died is failed by run monitoring, and its changes are requested again)"
        )
    try:
        changes = parse_changes(cart_db.peek_changes(MAX_CHANGES_PER_TICK), schema=state.current_schema)
    except ReplicationSlotLostError as lost:
        return _slot_lost(context, cart_db, str(lost))
    if changes.up_to_lsn is None:
        return dg.SensorResult(skip_reason=f"no change in the Cart DB since the slot's position {state.confirmed_lsn}")
    carts = changes.cart_ids | set(carts_holding(cart_db, sorted(changes.product_ids), MAX_KEYS_PER_RUN + 1))
    if not carts and not changes.needs_full_sync:
        cart_db.advance_slot(changes.up_to_lsn)
        return dg.SensorResult(
            skip_reason=f"{changes.transactions} transactions up to {changes.up_to_lsn} changed no cart "
            f"(products without carts, or other tables): slot {slot} advanced past them"
        )
    # A run that failed left the slot where it was: this span is asked for again, under a new run key.
    newest = _newest_slot_consumer(context.instance, job_name)
    failed = [newest.run_id] if newest is not None and newest.status in _ENDED_BADLY else []
    span = (changes.first_lsn or "", changes.up_to_lsn, *failed)
    tags = {OLDEST_CHANGE_TAG: changes.oldest_commit.isoformat()} if changes.oldest_commit else {}
    summary = (
        f"{changes.changes} changes in {changes.transactions} transactions up to {changes.up_to_lsn}: "
        f"{len(changes.cart_ids)} carts and {len(changes.product_ids)} products changed"
    )
    if changes.needs_full_sync or len(carts) > MAX_KEYS_PER_RUN:
        why = (
            f"{', '.join(sorted(changes.truncated))} truncated"
            if changes.needs_full_sync
            else f"more than {MAX_KEYS_PER_RUN} carts to repair"
        )
        context.log.info(f"{summary}; {why}: requesting a full cart_sync_job that advances the slot")
        full_tags = {**sensor_run_tags(CHANGES_FULL_TRIGGER, keyed=False), **tags}
        config = CartSyncOpConfig.launch_config(advance_slot_to=changes.up_to_lsn)
        return _request(run_key(CHANGES_FULL_TRIGGER, *span), config, full_tags)
    context.log.info(f"{summary}: requesting a sync of {len(carts)} carts")
    config = CartSyncOpConfig.launch_config(keys=sorted(carts), advance_slot_to=changes.up_to_lsn)
    return _request(
        run_key(CART_CHANGES_TRIGGER, *span), config, {**sensor_run_tags(CART_CHANGES_TRIGGER, keyed=True), **tags}
    )


def _request(run_key: str, run_config: dict[str, Any], tags: dict[str, str]) -> dg.SensorResult:
    return dg.SensorResult(run_requests=[dg.RunRequest(run_key=run_key, run_config=run_config, tags=tags)])


def _slot_lost(context: dg.SensorEvaluationContext, cart_db: PostgresResource, why: str) -> dg.SensorResult:
    """Recreate the slot first, then one full sync: every change before the new slot is covered by it."""
    cart_db.drop_slot()
    lsn = cart_db.create_slot()
    context.log.warning(
        f"{why}; recreated it at {lsn} and requesting a full cart_sync_job for the changes it can no longer give"
    )
    # Not asked again by this sensor once the slot is recreated: Dagster's run retries take a failed one again.
    return _request(run_key(SLOT_LOST_TRIGGER, lsn), CartSyncOpConfig.launch_config(), {TRIGGER_TAG: SLOT_LOST_TRIGGER})
