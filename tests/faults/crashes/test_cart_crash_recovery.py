"""A crash of the orchestrator never stalls the cart change capture: the real daemon, its code server and a keyed
cart run writing, SIGKILLed together while the Cart DB and the Product MongoDB keep changing; a new daemon's
runs converge, and Order documents nobody changed stay byte-identical (the product syncs' crashes:
test_crash_recovery.py and test_keyed_crash_recovery.py).
"""

from __future__ import annotations

import math
import random
import threading
import time
from datetime import UTC, datetime
from typing import Any

import dagster as dg
import pytest

from etl_defs.carts.sensors import MAX_CHANGES_PER_TICK
from etl_defs.carts.table import CartTableRow
from etl_defs.products.table import ProductRow
from etl_defs.settings import SyncSettings
from etl_defs.tags import CART_CHANGES_TRIGGER, KEYED_REPAIR_TRIGGERS, TRIGGER_TAG
from tests.factories import expected_doc, expected_row, new_cart, product_doc
from tests.faults.helpers import (
    CDC_INTERVAL_S,
    DAEMON_START_S,
    DEAD_RUN_FAILED_WITHIN_S,
    KEYED_REPAIR_S,
    RUN_START_S,
    SCENARIO_TIMEOUT_S,
    FaultStack,
    Orchestrator,
    cart_db_products,
    expected_products,
    launch_failure,
)
from tests.helpers import copy_carts, copy_products, run_failure_message, wait_until

pytestmark = [pytest.mark.faults, pytest.mark.timeout(SCENARIO_TIMEOUT_S)]

RUN = dg.DagsterRunStatus
SENSOR = "product_changes_sensor"
CART_SENSOR = "cart_changes_sensor"


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
    return {row[0]: expected_doc(CartTableRow(*row[:5]), ProductRow(*row[5:])) for row in rows}


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


def lsn_value(lsn: str) -> int:
    high, low = lsn.split("/")
    return (int(high, 16) << 32) + int(low, 16)


def slot_reads_left(faults: FaultStack, slot: str, writer: ChangeWriter) -> int:
    """How many reads of the cart change sensor (MAX_CHANGES_PER_TICK changes each) the writer's changes that the
    slot has not passed yet take: counted from the writer's own log, never by peeking at the slot (a slot has one
    reader at a time: a peek here would fail a tick of the sensor)."""
    with faults.cart_conn() as conn:
        [confirmed] = conn.execute(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s", (slot,)
        ).fetchone()
    passed = max((count for lsn, count in writer.written if lsn <= lsn_value(confirmed)), default=0)
    return max(1, math.ceil((writer.changes - passed) / MAX_CHANGES_PER_TICK))


class ChangeWriter(threading.Thread):
    """An operator's load: every second, `carts_per_second` carts change in the Cart DB (quantity and version), and
    every fourth second 3 products change price in the Product MongoDB, until `stop` is set."""

    #: Until the crash: a keyed cart run of hundreds of carts, in many batches, which the crash catches mid-write.
    CARTS_PER_SECOND = 100
    #: From the crash on. At 100 a second the new daemon found about 19,000 changes in the slot on one busy core, four
    #: reads of MAX_CHANGES_PER_TICK, each with its keyed run of about 2,000 carts: the scenario alone took up to 22
    #: minutes of the suite. The changes still go on through the crash and the new daemon's ticks.
    CARTS_PER_SECOND_AFTER_CRASH = 10

    def __init__(self, faults: FaultStack, carts: list[str], products: list[Any]) -> None:
        super().__init__(name="change-writer", daemon=True)
        self.faults, self.carts, self.products = faults, carts, products
        self.stop = threading.Event()
        self.last_write_at = 0.0
        self.carts_per_second = self.CARTS_PER_SECOND
        self.writes = 0  # seconds with changes
        self.changes = 0  # cart changes so far
        self.last_lsn = "0/0"
        self.written: list[tuple[int, int]] = []  # after each second of changes: the WAL position, the changes so far
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
                        (chance.sample(self.carts, self.carts_per_second),),
                    )
                    self.changes += self.carts_per_second
                    if second % 4 == 0:
                        for doc in chance.sample(self.products, 3):
                            self.faults.product_db.products.update_one({"_id": doc["_id"]}, {"$inc": {"price": 7}})
                    self.last_write_at = time.monotonic()
                    self.writes += 1
                    self.last_lsn = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0]
                    self.written.append((lsn_value(self.last_lsn), self.changes))
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

    usual_batch_size = orchestrator.env["CART_SYNC_BATCH_SIZE"]
    orchestrator.env["CART_SYNC_BATCH_SIZE"] = "20"  # a keyed run writes in many batches: a crash lands mid-write
    orchestrator.start()
    wait_until("cart_changes_sensor created its slot", lambda: slot_position(faults, slot)[0], DAEMON_START_S)
    wait_until("product_changes_sensor's first tick", lambda: orchestrator.sensor_ticks(SENSOR) > 0, DAEMON_START_S)

    writer = ChangeWriter(faults, busy_carts, docs[50:])
    writer.start()
    try:
        writing = wait_for_a_keyed_cart_run_writing(faults, orchestrator, timeout=KEYED_REPAIR_S)
    finally:
        assert writer.error is None, writer.error
    orchestrator.crash()
    crashed_at, writes_at_crash = time.monotonic(), writer.writes
    writer.carts_per_second = ChangeWriter.CARTS_PER_SECOND_AFTER_CRASH
    wait_until(
        "4 seconds of changes with the daemon down (carts every second, products every fourth)",
        lambda: writer.writes >= writes_at_crash + 4,
        30,
        0.2,
    )
    # The new daemon's runs write in the suite's usual batches: 20-cart batches (a journal wait each) made a keyed
    # repair of 2,000 carts take 94 s on one busy core.
    orchestrator.env["CART_SYNC_BATCH_SIZE"] = usual_batch_size
    orchestrator.start()
    ticks = {sensor: orchestrator.sensor_ticks(sensor) for sensor in (SENSOR, CART_SENSOR)}
    orchestrator.wait_until_monitoring()
    failed_after = orchestrator.wait_for_status(writing, RUN.FAILURE, timeout=DEAD_RUN_FAILED_WITHIN_S)
    assert "the run's worker died" in run_failure_message(orchestrator.instance, writing)
    wait_until(
        "the new daemon's change sensors each ticked twice while the changes went on",
        lambda: all(orchestrator.sensor_ticks(sensor) >= before + 2 for sensor, before in ticks.items()),
        DAEMON_START_S,
        0.5,
    )
    writer.stop.set()
    writer.join(timeout=30)
    assert writer.error is None, writer.error
    assert writer.last_write_at > crashed_at, "the changes went on during the crash and after it"

    reads = slot_reads_left(faults, slot, writer)
    converged_after = wait_until_converged(faults, orchestrator, slot, writer, reads)
    start_s, run_s = orchestrator.slowest_successful_run()
    orchestrator.wait_until_every_run_ended(timeout=2 * (start_s + run_s))  # the run in flight, one queued behind it

    assert faults.order_db.carts.count_documents({}) == len(faults.order_db.carts.distinct("cartId")) == 3000
    after = order_docs(faults)
    assert {key: after[key] for key in quiet} == quiet_before, "documents nobody changed are byte-identical"
    runs = orchestrator.runs()
    failed = {run.run_id: run for run in runs if run.status != RUN.SUCCESS}
    assert writing in failed
    launch_failed = {}
    for run in failed.values():
        assert run.status == RUN.FAILURE
        message = run_failure_message(orchestrator.instance, run.run_id)
        # The runs in flight when the machine died: started, its worker found dead; launched but not started yet,
        # dagster.yaml's start timeout. Or a run the busy code server did not start within Dagster's launch deadline
        # (README, "Testing"): it never ran, and its keys were requested again (converged above).
        if "the run's worker died" not in message and "taking longer than 90 seconds to start" not in message:
            launch_failed[run.run_id] = launch_failure(orchestrator.instance, run.run_id)
            assert launch_failed[run.run_id] is not None, message
            assert run.tags.get(TRIGGER_TAG) in KEYED_REPAIR_TRIGGERS, run.tags
    by_kind: dict[str, int] = {}
    for run in runs:
        kind = f"{run.job_name} ({run.tags.get(TRIGGER_TAG, 'ui/terminal')}) {run.status.value}"
        by_kind[kind] = by_kind.get(kind, 0) + 1
    print(
        f"\ncart crash scenario: the keyed cart run {writing} was failed {failed_after:.1f}s after the new daemon's "
        f"run monitoring ran; converged {converged_after:.1f}s after the last write, the slot then {reads} reads "
        f"behind (runs here took up to "
        f"{start_s:.0f}s to start and {run_s:.0f}s to run); slot holds "
        f"{slot_position(faults, slot)[1]} bytes of WAL; runs: {by_kind}; failed at launch: {launch_failed}"
    )


def convergence_bound(orchestrator: Orchestrator, reads: int) -> float:
    """The README's bound on convergence after the last change, with what runs take and how often the sensors really
    tick on this machine: a run the crash caught starting is failed by the start timeout; then, for the products and
    then for the carts they reprice, the change sensor's next tick and two runs, each started and run (the one in
    flight, then the one the last change asked for); and for each further read of MAX_CHANGES_PER_TICK changes the
    slot held at the last change, one more tick, start and run."""
    start_s, run_s = orchestrator.slowest_successful_run()
    tick_s = max(CDC_INTERVAL_S, orchestrator.slowest_tick(SENSOR, CART_SENSOR))
    return RUN_START_S + 2 * (tick_s + 2 * (start_s + run_s)) + (reads - 1) * (tick_s + start_s + run_s)


def wait_until_converged(
    faults: FaultStack, orchestrator: Orchestrator, slot: str, writer: ChangeWriter, reads: int
) -> float:
    """Wait until every product and cart converged and the slot passed the last change, within `convergence_bound`
    of the last change (the bound grows when a slower run succeeds meanwhile); returns the seconds it took."""
    while not (
        cart_db_products(faults) == expected_products(faults)
        and order_docs(faults, _id=0, createdAt=0, updatedAt=0) == expected_carts(faults)
        and slot_passed(faults, slot, writer.last_lsn)
    ):
        waited = time.monotonic() - writer.last_write_at
        if waited >= RUN_START_S:  # the bound's least value: only past it is the bound worth reading the runs for
            bound = convergence_bound(orchestrator, reads)
            assert waited < bound, f"not converged {waited:.0f}s after the last change (bound {bound:.0f}s)"
        time.sleep(1)
    return time.monotonic() - writer.last_write_at


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
