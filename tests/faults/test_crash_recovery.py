"""A crash of the orchestrator never stalls a sync: the real daemon, real run workers, SIGKILLed together.

Each test runs `dagster-daemon` on the repo's workspace.yaml and dagster.yaml (the run queue's
per-pipeline limit, run monitoring, run retries), kills the daemon with its code server and
run workers mid-run, as a host restart or an OOM kill does, starts a new daemon, and checks
that the dead run is failed within the bound, that what waited on it moves on, and that the
databases converge with nothing written twice.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from datetime import UTC, datetime
from typing import Any

import dagster as dg
import pytest

from etl_defs.products.table import SELECT_PRODUCTS_SQL, ProductRow
from etl_defs.run_launcher import worker_pid
from etl_defs.settings import SyncSettings
from etl_defs.tags import CART_CHANGES_TRIGGER, PRODUCT_CHANGES_TRIGGER, TRIGGER_TAG
from tests.factories import Cart, expected_doc, expected_row, new_cart, product_doc
from tests.faults.helpers import FaultStack, Orchestrator, write_held_mid_statement
from tests.helpers import copy_carts, copy_products, run_failure_message, wait_until

pytestmark = pytest.mark.faults

#: dagster.yaml's run_monitoring.poll_interval_seconds, plus a new daemon's start-up on a busy two-core machine.
DEAD_RUN_FAILED_WITHIN_S = 15 + 45
#: How long a launched run may take to start on a busy two-core machine (dequeue, code server, run worker).
RUN_START_S = 90
RUN = dg.DagsterRunStatus


def product_rows(faults: FaultStack) -> dict[str, tuple]:
    with faults.cart_conn() as conn:
        return {row[0]: tuple(row) for row in conn.execute(SELECT_PRODUCTS_SQL)}


def expected_products(faults: FaultStack) -> dict[str, tuple]:
    return {str(doc["_id"]): expected_row(doc) for doc in faults.product_db.products.find()}


def test_a_whole_table_sync_killed_with_the_daemon_is_failed_and_the_run_queued_behind_it_converges(
    faults: FaultStack, orchestrator: Orchestrator
) -> None:
    faults.product_db.products.insert_many([product_doc() for _ in range(2000)])
    orchestrator.start()
    # Slowed down (50 keys a batch, 200 ms after each) so that it is still writing when the machine dies.
    dead = orchestrator.launch("product_sync_job", {"batch_size": 50, "batch_pause_ms": 200})
    orchestrator.wait_for_status(dead, RUN.STARTED, timeout=RUN_START_S)
    wait_until("the sync wrote its first batches", lambda: len(product_rows(faults)) >= 100, 60)

    orchestrator.crash()
    written_at_crash = len(product_rows(faults))
    assert 0 < written_at_crash < 2000
    assert orchestrator.status(dead) == RUN.STARTED, "nothing is left to report the crash"
    queued = orchestrator.launch("product_sync_job")  # behind the dead run: one products run at a time
    assert orchestrator.status(queued) == RUN.QUEUED

    orchestrator.start()
    failed_after = orchestrator.wait_for_status(dead, RUN.FAILURE, timeout=DEAD_RUN_FAILED_WITHIN_S)
    assert "the run's worker died: its worker process" in run_failure_message(orchestrator.instance, dead)
    orchestrator.wait_for_status(queued, RUN.SUCCESS, timeout=RUN_START_S + 60)
    orchestrator.wait_until_every_run_ended(timeout=RUN_START_S + 60)

    assert product_rows(faults) == expected_products(faults)
    runs = {run.run_id: run for run in orchestrator.runs("product_sync_job")}
    [retry] = [run for run in runs.values() if run.parent_run_id == dead]
    assert (runs[dead].status, runs[queued].status, retry.status) == (RUN.FAILURE, RUN.SUCCESS, RUN.SUCCESS)
    assert retry.tags["dagster/retry_number"] == "1", "Dagster's run retries took the dead run again, once"
    print(
        f"\nwhole-table product sync: {written_at_crash} of 2000 rows written at the crash; the dead run failed "
        f"{failed_after:.1f}s after the new daemon started; the run queued behind it and the automatic retry "
        "succeeded; runs: " + ", ".join(f"{r.run_id[:8]} {r.status.value}" for r in runs.values())
    )


def test_a_keyed_product_run_whose_worker_dies_alone_or_with_the_daemon_has_its_keys_repaired_again(
    faults: FaultStack, orchestrator: Orchestrator
) -> None:
    docs = [product_doc() for _ in range(30)]
    faults.product_db.products.insert_many(docs)
    with faults.cart_conn() as conn:
        copy_products(conn, [expected_row(doc) for doc in docs])
    orchestrator.start()
    wait_until("product_changes_sensor's first tick", lambda: orchestrator.sensor_ticks(SENSOR) > 0, RUN_START_S)

    # The worker alone killed: its code server sees its child die and fails the run (Dagster's own handling).
    first = docs[:5]
    for doc in first:
        faults.product_db.products.update_one({"_id": doc["_id"]}, {"$inc": {"price": 1000}})
    with write_held_mid_statement(faults, "product", timeout=RUN_START_S):
        [alone] = started_keyed_runs(orchestrator)
        pid, _ = worker_pid(orchestrator.instance, alone.run_id)
        os.kill(pid, signal.SIGKILL)
        orchestrator.wait_for_status(alone.run_id, RUN.FAILURE, timeout=DEAD_RUN_FAILED_WITHIN_S)
    wait_until("the sensor repaired the first keys", lambda: product_rows(faults) == expected_products(faults), 90)

    # The daemon, its code server and the worker killed together: run monitoring fails the run.
    second = docs[5:10]
    for doc in second:
        faults.product_db.products.update_one({"_id": doc["_id"]}, {"$inc": {"price": 1000}})
    with write_held_mid_statement(faults, "product", timeout=RUN_START_S):
        [dead] = started_keyed_runs(orchestrator)
        orchestrator.crash()
    orchestrator.start()
    failed_after = orchestrator.wait_for_status(dead.run_id, RUN.FAILURE, timeout=DEAD_RUN_FAILED_WITHIN_S)
    assert "the run's worker died" in run_failure_message(orchestrator.instance, dead.run_id)
    wait_until("the sensor repaired the second keys", lambda: product_rows(faults) == expected_products(faults), 90)
    orchestrator.wait_until_every_run_ended(timeout=60)

    runs = orchestrator.runs("product_sync_job")
    assert {run.run_id for run in runs if run.status == RUN.FAILURE} == {alone.run_id, dead.run_id}
    assert all(run.parent_run_id is None for run in runs), "keyed runs are asked for again by the sensor, not retried"
    for killed, repriced in ((alone, first), (dead, second)):
        keys = {str(doc["_id"]) for doc in repriced}
        assert set(killed.run_config["keys"]) == keys
        later = [r for r in runs if r.status == RUN.SUCCESS and keys <= set(r.run_config.get("keys", ()))]
        assert later, f"no successful run took the keys of {killed.run_id} again"
    print(
        f"\nkeyed product runs: the worker killed alone failed by its code server; the one killed with the daemon "
        f"failed {failed_after:.1f}s after the new daemon started; runs: "
        + ", ".join(f"{r.run_id[:8]} {r.status.value} ({len(r.run_config.get('keys', ()))} keys)" for r in runs)
    )


SENSOR = "product_changes_sensor"
CART_SENSOR = "cart_changes_sensor"


def started_keyed_runs(orchestrator: Orchestrator) -> list[dg.DagsterRun]:
    """The keyed product runs that are STARTED (the test holds one on its write)."""
    return [
        run
        for run in orchestrator.runs("product_sync_job", **{TRIGGER_TAG: PRODUCT_CHANGES_TRIGGER})
        if run.status == RUN.STARTED
    ]


def order_docs(faults: FaultStack, **projection: int) -> dict[str, dict[str, Any]]:
    return {doc["cartId"]: doc for doc in faults.order_db.carts.find({}, projection or None)}


def expected_carts(faults: FaultStack) -> dict[str, dict[str, Any]]:
    """The Order document of every cart, from the Cart DB as it is now."""
    with faults.cart_conn() as conn:
        rows = conn.execute(
            'SELECT c.id::text, c.quantity, c."userId", c.version, c."productId", '
            'p.id, p.title, p.price, p.image, p."sellerId", p.quantity '
            'FROM cart c JOIN product p ON p.id = c."productId"'
        ).fetchall()
    return {row[0]: expected_doc(Cart(*row[:5]), ProductRow(*row[5:])) for row in rows}


def slot_position(faults: FaultStack, slot: str) -> tuple[bool, int]:
    """Whether the cart slot exists, and how many bytes of WAL it holds back."""
    with faults.cart_conn() as conn:
        row = conn.execute(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint FROM pg_replication_slots "
            "WHERE slot_name = %s",
            (slot,),
        ).fetchone()
    return (row is not None, row[0] if row else 0)


def slot_passed(faults: FaultStack, slot: str, lsn: str) -> bool:
    with faults.cart_conn() as conn:
        row = conn.execute(
            "SELECT confirmed_flush_lsn >= %s::pg_lsn FROM pg_replication_slots WHERE slot_name = %s",
            (lsn, slot),
        ).fetchone()
    return bool(row and row[0])


class ChangeWriter(threading.Thread):
    """An operator's load: every second, 100 carts change in the Cart DB (quantity and version), and every
    fourth second 3 products change price in the Product MongoDB, until `stop` is set."""

    def __init__(self, faults: FaultStack, carts: list[str], products: list[Any]) -> None:
        super().__init__(name="change-writer", daemon=True)
        self.faults, self.carts, self.products = faults, carts, products
        self.stop = threading.Event()
        self.last_write_at = 0.0
        self.writes = 0  # seconds with changes
        self.last_lsn = "0/0"
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            chance = random.Random(21)
            with self.faults.cart_conn() as conn:
                for second in range(10_000):
                    if self.stop.is_set():
                        break
                    conn.execute(
                        "UPDATE cart SET quantity = quantity %% 9 + 1, version = version + 1 "
                        "WHERE id = ANY(%s::uuid[])",
                        (chance.sample(self.carts, 100),),
                    )
                    if second % 4 == 0:
                        for doc in chance.sample(self.products, 3):
                            self.faults.product_db.products.update_one({"_id": doc["_id"]}, {"$inc": {"price": 7}})
                    self.last_write_at = time.monotonic()
                    self.writes += 1
                    self.last_lsn = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0]
                    self.stop.wait(1)
        except BaseException as error:  # noqa: BLE001 - handed to the test thread
            self.error = error


def test_cart_change_capture_converges_after_the_daemon_is_killed_while_a_keyed_cart_run_writes(
    faults: FaultStack, orchestrator: Orchestrator, defs: dg.Definitions, settings: SyncSettings
) -> None:
    slot = settings.cart_cdc_slot
    docs = [product_doc() for _ in range(200)]
    faults.product_db.products.insert_many(docs)
    products = [ProductRow(*expected_row(doc)) for doc in docs]
    carts = [new_cart(products[i % len(products)], quantity=1 + i % 5, userId=f"user-{i % 97}") for i in range(3000)]
    with faults.cart_conn() as conn:
        copy_products(conn, products)
        copy_carts(conn, carts)
    assert defs.resolve_job_def("cart_sync_job").execute_in_process(instance=dg.DagsterInstance.ephemeral()).success
    # Nobody changes the first 50 products, nor the carts holding them: their Order documents must stay byte-identical.
    quiet_products = {p.id for p in products[:50]}
    quiet = {c.id for c in carts if c.productId in quiet_products}
    quiet_before = {key: doc for key, doc in order_docs(faults).items() if key in quiet}
    busy_carts = [c.id for c in carts if c.id not in quiet]

    orchestrator.env["CART_SYNC_BATCH_SIZE"] = "20"  # a keyed run writes in many batches: a crash lands mid-write
    orchestrator.start()
    wait_until("cart_changes_sensor created its slot", lambda: slot_position(faults, slot)[0], RUN_START_S)
    wait_until("product_changes_sensor's first tick", lambda: orchestrator.sensor_ticks(SENSOR) > 0, RUN_START_S)

    writer = ChangeWriter(faults, busy_carts, docs[50:])
    writer.start()
    try:
        writing = wait_for_a_keyed_cart_run_writing(faults, orchestrator, timeout=RUN_START_S + 30)
    finally:
        assert writer.error is None, writer.error
    orchestrator.crash()
    crashed_at, writes_at_crash = time.monotonic(), writer.writes
    wait_until(
        "4 seconds of changes with the daemon down (carts every second, products every fourth)",
        lambda: writer.writes >= writes_at_crash + 4,
        30,
        0.2,
    )
    orchestrator.start()
    ticks = {sensor: orchestrator.sensor_ticks(sensor) for sensor in (SENSOR, CART_SENSOR)}
    failed_after = orchestrator.wait_for_status(writing, RUN.FAILURE, timeout=DEAD_RUN_FAILED_WITHIN_S)
    assert "the run's worker died" in run_failure_message(orchestrator.instance, writing)
    wait_until(
        "the new daemon's change sensors each ticked twice while the changes went on",
        lambda: all(orchestrator.sensor_ticks(sensor) >= before + 2 for sensor, before in ticks.items()),
        RUN_START_S,
        0.5,
    )
    writer.stop.set()
    writer.join(timeout=30)
    assert writer.error is None, writer.error
    assert writer.last_write_at > crashed_at, "the changes went on during the crash and after it"

    wait_until(
        "every product and cart converged and the slot passed the last change",
        lambda: (
            product_rows(faults) == expected_products(faults)
            and order_docs(faults, _id=0, createdAt=0, updatedAt=0) == expected_carts(faults)
            and slot_passed(faults, slot, writer.last_lsn)
        ),
        timeout=300,
        every=1,
    )
    converged_after = time.monotonic() - writer.last_write_at
    orchestrator.wait_until_every_run_ended(timeout=120)

    assert faults.order_db.carts.count_documents({}) == len(faults.order_db.carts.distinct("cartId")) == 3000
    after = order_docs(faults)
    assert {key: after[key] for key in quiet} == quiet_before, "documents nobody changed are byte-identical"
    runs = orchestrator.runs()
    failed = {run.run_id: run for run in runs if run.status != RUN.SUCCESS}
    assert writing in failed
    for run in failed.values():  # the runs in flight when the machine died (a keyed product run, maybe), no other
        assert run.status == RUN.FAILURE
        message = run_failure_message(orchestrator.instance, run.run_id)
        # Started: its worker found dead. Launched but not started yet: dagster.yaml's start timeout.
        assert "the run's worker died" in message or "taking longer than 90 seconds to start" in message, message
    by_kind: dict[str, int] = {}
    for run in runs:
        kind = f"{run.job_name} ({run.tags.get(TRIGGER_TAG, 'ui/terminal')}) {run.status.value}"
        by_kind[kind] = by_kind.get(kind, 0) + 1
    print(
        f"\ncart crash scenario: the keyed cart run {writing} was failed {failed_after:.1f}s after the new daemon "
        f"started; converged {converged_after:.1f}s after the last write; slot holds "
        f"{slot_position(faults, slot)[1]} bytes of WAL; runs: {by_kind}"
    )


def wait_for_a_keyed_cart_run_writing(faults: FaultStack, orchestrator: Orchestrator, timeout: float) -> str:
    """The id of a keyed cart run that has written some of its batches to the Order DB, not all."""
    found: list[str] = []

    def writing() -> bool:
        for run in orchestrator.runs("cart_sync_job", **{TRIGGER_TAG: CART_CHANGES_TRIGGER}):
            record = orchestrator.instance.get_run_record_by_id(run.run_id)
            if run.status != RUN.STARTED or record is None or record.start_time is None:
                continue
            since = datetime.fromtimestamp(record.start_time, UTC)
            if faults.order_db.carts.count_documents({"updatedAt": {"$gt": since}}) > 0:
                found.append(run.run_id)
                return True
        return False

    wait_until("a keyed cart run writing", writing, timeout, every=0.1)
    return found[0]
