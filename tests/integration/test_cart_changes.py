"""cart_changes_sensor and keyed cart syncs, on real PostgreSQL 15 (logical decoding) and SecantusDB.

The sensor is evaluated through `build_sensor_context` against a real instance, and each
run it requests is executed for real with its run config and tags, as the daemon would.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import psycopg
import pytest

from etl_defs.carts.sensors import CHANGES_FULL_TRIGGER, MAX_KEYS_PER_RUN, SLOT_LOST_TRIGGER
from etl_defs.carts.table import CartTableRow
from etl_defs.definitions import build_definitions
from etl_defs.jobs import InvalidRunConfigError
from etl_defs.settings import SyncSettings
from etl_defs.tags import (
    CART_CHANGES_TRIGGER,
    KEYED_REPAIR_MAX_RUNTIME_S,
    MAX_RETRIES_TAG,
    MAX_RUNTIME_TAG,
    OLDEST_CHANGE_TAG,
    TRIGGER_TAG,
)
from local.stack import CART_DB, MAX_SLOT_WAL_KEEP_SIZE, LocalStack, free_port
from resources import PostgresResource
from tests.factories import expected_doc, new_cart, new_product
from tests.helpers import Databases, copy_carts, copy_products, monitor_started_run, run_failure_message
from tests.integration.helpers import LogLines, started_on_this_machine, sync_lock_held_elsewhere

SENSOR = "cart_changes_sensor"


def tick(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    cart_db: PostgresResource | None = None,
    log: list[str] | None = None,
) -> dg.SensorResult:
    """One evaluation of the sensor, as the daemon runs it (against another Cart DB, when given)."""
    sensor = defs.resolve_sensor_def(SENSOR)
    resources = {**defs.resources, **({"cart_db": cart_db} if cart_db is not None else {})}
    with dg.build_sensor_context(instance=instance, resources=resources) as context:
        if log is not None:
            context.log.addHandler(LogLines(log))
        result = sensor(context)
    assert isinstance(result, dg.SensorResult)
    return result


def skipped(result: dg.SensorResult) -> str:
    assert result.run_requests == [], result.run_requests
    assert result.skip_reason is not None
    return result.skip_reason.skip_message


def execute(defs: dg.Definitions, instance: dg.DagsterInstance, request: dg.RunRequest) -> dg.ExecuteInProcessResult:
    job = defs.resolve_job_def("cart_sync_job")
    return job.execute_in_process(
        run_config=request.run_config, tags=request.tags, instance=instance, raise_on_error=False
    )


@pytest.fixture()
def slot(settings: SyncSettings) -> str:
    """The replication slot of the cart change capture."""
    return settings.cart_cdc_slot


@pytest.fixture()
def no_slot(dbs: Databases, slot: str) -> Iterator[None]:
    """No replication slot before and after the test (a slot left behind would keep WAL)."""

    def drop() -> None:
        with dbs.cart_conn() as conn:
            conn.execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = %s", (slot,)
            )

    drop()
    yield
    drop()


def slot_lsn(dbs: Databases, slot: str) -> str:
    with dbs.cart_conn() as conn:
        row = conn.execute("SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s", (slot,))
        return row.fetchone()[0]


def order_docs(dbs: Databases) -> dict[str, dict[str, Any]]:
    return {doc["cartId"]: doc for doc in dbs.order_db.carts.find({}, {"_id": 0, "createdAt": 0, "updatedAt": 0})}


def insert_carts(dbs: Databases, *carts: CartTableRow) -> None:
    with dbs.cart_conn() as conn:
        copy_carts(conn, carts)


def in_step(
    dbs: Databases, defs: dg.Definitions, instance: dg.DagsterInstance, carts: int = 8
) -> tuple[list, list[CartTableRow]]:
    """Products and carts in the Cart DB, copied into the Order DB by a full cart sync."""
    products = [new_product() for _ in range(3)]
    with dbs.cart_conn() as conn:
        copy_products(conn, products)
    rows = [new_cart(products[i % 3], version=1) for i in range(carts)]
    insert_carts(dbs, *rows)
    assert defs.resolve_job_def("cart_sync_job").execute_in_process(instance=instance).success
    return products, rows


def test_a_tick_requests_one_run_for_exactly_the_changed_carts_which_repairs_them_and_advances_the_slot(
    dbs: Databases, instance: dg.DagsterInstance, no_slot: None, defs: dg.Definitions, slot: str
) -> None:
    products, carts = in_step(dbs, defs, instance, carts=9)
    created = skipped(tick(defs, instance))
    assert f"created replication slot {slot}" in created

    with dbs.cart_conn() as conn:
        added = new_cart(products[0], quantity=4)
        copy_carts(conn, [added])
        conn.execute("UPDATE cart SET version = 2, quantity = 7 WHERE id = %s", (carts[0].id,))
        conn.execute("DELETE FROM cart WHERE id = %s", (carts[1].id,))
        conn.execute("UPDATE product SET price = price + 50 WHERE id = %s", (products[2].id,))
    repriced = [cart for cart in carts if cart.productId == products[2].id]
    assert len(repriced) == 3
    before = slot_lsn(dbs, slot)

    second = tick(defs, instance)

    [request] = second.run_requests
    expected = {added.id, carts[0].id, carts[1].id, *(cart.id for cart in repriced)}
    assert set(request.run_config["keys"]) == expected
    assert request.tags[TRIGGER_TAG] == CART_CHANGES_TRIGGER and OLDEST_CHANGE_TAG in request.tags
    result = execute(defs, instance, request)
    assert result.success
    figures = result.output_for_node("report_cart_sync")
    assert (figures["missing"], figures["outdated"], figures["changed"], figures["orphaned"]) == (1, 1, 3, 1)
    docs = order_docs(dbs)
    price = {p.id: p for p in products}
    new_price = products[2]._replace(price=products[2].price + 50)
    assert docs[added.id] == expected_doc(added, price[added.productId])
    assert docs[carts[0].id] == expected_doc(carts[0]._replace(version=2, quantity=7), price[carts[0].productId])
    for cart in repriced:
        assert docs[cart.id] == expected_doc(cart, new_price)
        assert docs[cart.id]["total"] == new_price.price * cart.quantity
    assert carts[1].id in docs, "a deleted cart is an orphan, left alone without prune_orphans"
    assert slot_lsn(dbs, slot) == request.run_config["advance_slot_to"] != before

    assert "no change in the Cart DB" in skipped(tick(defs, instance))


def test_a_run_that_fails_before_committing_leaves_the_slot_and_the_next_tick_asks_again(
    dbs: Databases, instance: dg.DagsterInstance, no_slot: None, defs: dg.Definitions, slot: str
) -> None:
    _, carts = in_step(dbs, defs, instance, carts=3)
    tick(defs, instance)
    with dbs.cart_conn() as conn:
        conn.execute("UPDATE cart SET version = 5 WHERE id = %s", (carts[2].id,))
    [request] = tick(defs, instance).run_requests
    before = slot_lsn(dbs, slot)

    with sync_lock_held_elsewhere(dbs, "carts"):  # a full cart sync holds it, started in a terminal
        failed = execute(defs, instance, request)

    assert not failed.success
    assert slot_lsn(dbs, slot) == before
    assert order_docs(dbs)[carts[2].id]["version"] == 1
    [again] = tick(defs, instance).run_requests
    assert again.run_config == request.run_config
    assert again.run_key != request.run_key, "a new run key, or the daemon would skip the request as launched"
    assert execute(defs, instance, again).success
    assert order_docs(dbs)[carts[2].id]["version"] == 5


def test_a_tick_waits_while_a_run_is_applying_the_slots_changes(
    dbs: Databases, instance: dg.DagsterInstance, no_slot: None, defs: dg.Definitions
) -> None:
    tick(defs, instance)
    job = defs.resolve_job_def("cart_sync_job")
    running = instance.create_run_for_job(
        job, status=dg.DagsterRunStatus.STARTED, tags={TRIGGER_TAG: CART_CHANGES_TRIGGER}
    )

    assert f"cart_sync_job run {running.run_id} is still applying the slot's changes" in skipped(tick(defs, instance))


def test_a_burst_lands_in_bounded_runs_and_every_change_lands(
    dbs: Databases, instance: dg.DagsterInstance, no_slot: None, defs: dg.Definitions
) -> None:
    product = new_product()
    with dbs.cart_conn() as conn:
        copy_products(conn, [product])
    tick(defs, instance)
    carts = [new_cart(product, version=1) for _ in range(20_000)]
    with dbs.cart_conn() as conn:
        for start in range(0, len(carts), 1000):  # 20 transactions of 1000 inserts
            with conn.transaction():
                copy_carts(conn, carts[start : start + 1000])

    runs = 0
    while (result := tick(defs, instance)).run_requests:
        [request] = result.run_requests
        assert len(request.run_config["keys"]) <= MAX_KEYS_PER_RUN
        assert execute(defs, instance, request).success
        runs += 1
        assert runs <= 20_000 // MAX_KEYS_PER_RUN + 1
    assert runs == 20_000 // MAX_KEYS_PER_RUN, "transactions of 1000 fill each run's 5000 exactly"
    docs = order_docs(dbs)
    assert {cart.id for cart in carts} <= set(docs)
    assert all(docs[cart.id] == expected_doc(cart, product) for cart in carts[::997])


def test_a_truncate_requests_one_full_sync_that_advances_the_slot(
    dbs: Databases, instance: dg.DagsterInstance, no_slot: None, defs: dg.Definitions, slot: str
) -> None:
    in_step(dbs, defs, instance, carts=2)
    tick(defs, instance)
    with dbs.cart_conn() as conn:
        conn.execute("TRUNCATE cart")

    [request] = tick(defs, instance).run_requests

    assert request.tags[TRIGGER_TAG] == CHANGES_FULL_TRIGGER and "keys" not in request.run_config
    # Asked again by the sensor when it fails, never retried by Dagster as well; bounded as a whole-table sync.
    assert request.tags[MAX_RETRIES_TAG] == "0" and MAX_RUNTIME_TAG not in request.tags
    assert execute(defs, instance, request).success
    assert slot_lsn(dbs, slot) == request.run_config["advance_slot_to"]


def test_a_lost_slot_is_recreated_first_then_one_full_sync_is_requested(
    dbs: Databases, instance: dg.DagsterInstance, no_slot: None, defs: dg.Definitions, slot: str
) -> None:
    tick(defs, instance)
    with dbs.cart_conn() as conn:
        conn.execute("ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'")
        conn.execute("SELECT pg_reload_conf()")
        try:
            for _ in range(4):  # WAL past the bound: the checkpoint removes what the slot still needed
                conn.execute("UPDATE product SET quantity = quantity")
                conn.execute("SELECT pg_switch_wal()")
            conn.execute("CHECKPOINT")
            status = conn.execute("SELECT wal_status FROM pg_replication_slots WHERE slot_name = %s", (slot,))
            assert status.fetchone()[0] == "lost"
        finally:
            conn.execute(f"ALTER SYSTEM SET max_slot_wal_keep_size = '{MAX_SLOT_WAL_KEEP_SIZE}'")
            conn.execute("SELECT pg_reload_conf()")
    log: list[str] = []

    [request] = tick(defs, instance, log=log).run_requests

    assert request.tags == {TRIGGER_TAG: SLOT_LOST_TRIGGER} and request.run_config == {}
    assert any("is lost" in line and "recreated it at" in line for line in log), log
    assert "no change in the Cart DB" in skipped(tick(defs, instance)), "the new slot gives changes again"


def test_a_role_without_replication_is_told_what_to_grant(
    dbs: Databases, instance: dg.DagsterInstance, no_slot: None, defs: dg.Definitions, slot: str
) -> None:
    with dbs.cart_conn() as conn:
        conn.execute("DROP ROLE IF EXISTS cart_reader")
        conn.execute("CREATE ROLE cart_reader LOGIN PASSWORD 'reader-pw'")
    url = dbs.stack.pg_url(CART_DB).replace(f"{dbs.stack.state.pg_password}@", "reader-pw@")
    url = url.replace("://shop:", "://cart_reader:")
    reader = PostgresResource(url=url, replication_slot=slot)
    try:
        reason = skipped(tick(defs, instance, reader))
    finally:
        reader.dispose()

    assert reason == (
        "role cart_reader may not use replication slots: a DBA grants it with ALTER ROLE cart_reader REPLICATION "
        "(see the README)"
    )


def test_wal_level_replica_is_told_what_to_set(
    instance: dg.DagsterInstance, tmp_path: Path, defs: dg.Definitions, slot: str
) -> None:
    (tmp_path / "replica").mkdir()
    replica = LocalStack(tmp_path / "replica", free_port(), free_port(), "replica-pw", wal_level="replica")
    replica.start_postgres()
    try:
        database = replica.pg_url("postgres")
        with psycopg.connect(database) as conn:
            assert conn.execute("SHOW wal_level").fetchone()[0] == "replica"
        cart_db = PostgresResource(url=database, replication_slot=slot)
        try:
            reason = skipped(tick(defs, instance, cart_db))
        finally:
            cart_db.dispose()
    finally:
        replica.clean()  # stops it and deletes its files

    assert reason.startswith("the Cart DB's wal_level is replica, and logical decoding needs logical")


def test_cart_keys_and_the_lsn_are_checked_before_the_run(instance: dg.DagsterInstance, defs: dg.Definitions) -> None:
    job = defs.resolve_job_def("cart_sync_job")
    for config, message in [
        (
            {"keys": ["not-a-uuid"]},
            "keys=['not-a-uuid']: cart ids are uuids (8-4-4-4-12 hex digits); not: 'not-a-uuid'",
        ),
        ({"keys": [new_cart("p").id], "user_id": "u"}, "give user_id or keys, not both"),
        ({"advance_slot_to": "12"}, "advance_slot_to='12': is not a PostgreSQL LSN (like 0/15302A0)"),
    ]:
        with pytest.raises(InvalidRunConfigError) as refused:
            job.execute_in_process(run_config=config, instance=instance)
        assert message in str(refused.value)
    assert instance.get_runs() == []


def test_the_sensor_follows_its_settings(settings: SyncSettings) -> None:
    custom = settings.model_copy(update={"cart_cdc_interval_seconds": 9, "enable_scheduler": False})

    sensor = build_definitions(custom).resolve_sensor_def(SENSOR)

    assert sensor.minimum_interval_seconds == 9
    assert sensor.default_status == dg.DefaultSensorStatus.STOPPED
    assert sensor.job_name == "cart_sync_job"


def test_a_run_whose_worker_died_is_failed_by_run_monitoring_and_its_changes_are_requested_again(
    dbs: Databases,
    monitored_instance: dg.DagsterInstance,
    no_slot: None,
    worker_process: subprocess.Popen,
    defs: dg.Definitions,
    slot: str,
) -> None:
    instance = monitored_instance
    _, carts = in_step(dbs, defs, instance, carts=3)
    tick(defs, instance)
    with dbs.cart_conn() as conn:
        conn.execute("UPDATE cart SET version = 5 WHERE id = %s", (carts[2].id,))
    [request] = tick(defs, instance).run_requests
    assert (request.tags[MAX_RETRIES_TAG], request.tags[MAX_RUNTIME_TAG]) == ("0", str(KEYED_REPAIR_MAX_RUNTIME_S))
    before = slot_lsn(dbs, slot)
    run_id = started_on_this_machine(defs, instance, request, "cart_sync_job", worker_process.pid)

    # In flight: its worker lives, so run monitoring leaves it, and the sensor waits for it.
    monitor_started_run(instance, run_id)
    assert instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.STARTED
    assert f"run {run_id} is still applying the slot's changes (started)" in skipped(tick(defs, instance))

    # Dead: its worker was killed with its code server; the next pass of run monitoring fails the run.
    worker_process.kill()
    worker_process.wait()
    monitor_started_run(instance, run_id)
    assert instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.FAILURE
    assert f"the run's worker died: its worker process {worker_process.pid}" in run_failure_message(instance, run_id)

    # Failed: its changes are still in the slot, requested again under a new run key.
    assert slot_lsn(dbs, slot) == before
    [again] = tick(defs, instance).run_requests
    assert again.run_config == request.run_config
    assert again.run_key != request.run_key
    assert execute(defs, instance, again).success
    assert order_docs(dbs)[carts[2].id]["version"] == 5
    assert slot_lsn(dbs, slot) == request.run_config["advance_slot_to"]
