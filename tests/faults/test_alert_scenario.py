"""Nothing fails silently: the real daemon, a real webhook receiver on loopback, the Cart PostgreSQL stopped.

One scenario, in the order an operator's night goes: syncs fail while the Cart DB is down
(one launched through the queue and retried by Dagster, one run in a terminal); the Cart DB
comes back and the syncs heal; a drift check fails and heals; the cart change capture loses
its replication slot, then errors on every tick after a bad migration; a table goes past its
freshness. Each incident is alerted once, and
once more when resolved, however many ticks pass; no alert carries a secret.
"""

from __future__ import annotations

import json
import threading

import dagster as dg
import pytest

from etl_defs.alerts import ALERTS_SENSOR_TICK_S, DELIVERY_BUDGET_S
from etl_defs.settings import SyncSettings
from etl_defs.steps.retries import MAX_CONNECTION_RETRIES, RETRY_BASE_DELAY_S
from etl_defs.tags import CART_SLOT_LOST_TRIGGER, TRIGGER_TAG
from local.stack import MAX_SLOT_WAL_KEEP_SIZE
from tests.factories import product_doc
from tests.faults.helpers import (
    DAEMON_START_S,
    RUN_START_S,
    SCENARIO_TIMEOUT_S,
    FaultStack,
    Orchestrator,
    not_started,
)
from tests.helpers import TEST_SECRETS, WebhookReceiver, run_failure_message, wait_until

RUN = dg.DagsterRunStatus
#: An incident is sent on alerts_sensor's next tick, within its delivery budget.
SENT_WITHIN_S = ALERTS_SENSOR_TICK_S + DELIVERY_BUDGET_S
#: A sync's step gives up on a database that stays away after its retries' backoff (2 + 4 + 8 s).
RETRIES_S = sum(RETRY_BASE_DELAY_S * 2**retry for retry in range(MAX_CONNECTION_RETRIES))
#: A launched run's failure (or success) alerted: its start, its step's retries, then the next tick's delivery.
ALERTED_WITHIN_S = RUN_START_S + RETRIES_S + SENT_WITHIN_S
#: The product sync's cron runs every minute: cart_db/product is overdue 2 minutes after its last sync, which the
#: freshness daemon (every 5 s here) finds within the cron's minute, and alerts_sensor sends.
OVERDUE_WITHIN_S = 2 * 60 + 60 + SENT_WITHIN_S
#: The cart change sensor's last 3 ticks (every CDC_INTERVAL_S, each evaluation within Dagster's 60 s sensor
#: timeout on a busy machine) failing, or its next one passing, then sent.
SENSOR_FAILING_S = 60 + SENT_WITHIN_S
#: A hang detector for a command in a terminal (`dagster job execute`, `launch`, `sensor start`).
TERMINAL_S = 300
pytestmark = [pytest.mark.faults, pytest.mark.timeout(SCENARIO_TIMEOUT_S)]


def lose_the_slot(faults: FaultStack, slot: str) -> None:
    """WAL past max_slot_wal_keep_size, then a checkpoint: the slot's WAL is removed (wal_status = lost)."""
    with faults.cart_conn() as conn:
        conn.execute("ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'")
        conn.execute("SELECT pg_reload_conf()")
        try:
            for _ in range(4):
                conn.execute("UPDATE product SET quantity = quantity")
                conn.execute("SELECT pg_switch_wal()")
            conn.execute("CHECKPOINT")
            status = conn.execute(
                "SELECT wal_status FROM pg_replication_slots WHERE slot_name = %s", (slot,)
            ).fetchone()
            assert status == ("lost",), status
        finally:
            conn.execute(f"ALTER SYSTEM SET max_slot_wal_keep_size = '{MAX_SLOT_WAL_KEEP_SIZE}'")
            conn.execute("SELECT pg_reload_conf()")


def test_each_incident_is_alerted_once_and_resolved_once(
    faults: FaultStack, alerting_orchestrator: Orchestrator, webhook: WebhookReceiver, settings: SyncSettings
) -> None:
    daemon = alerting_orchestrator
    daemon.start()
    wait_until("alerts_sensor's first tick", lambda: daemon.sensor_ticks("alerts_sensor") > 0, DAEMON_START_S, 0.5)

    # 1. The Cart DB is down: a sync launched through the queue, and one run in a terminal, both fail.
    faults.main.stop_postgres()
    launched = daemon.launch("product_sync_job")
    executed: dict[str, object] = {}
    terminal = threading.Thread(target=lambda: executed.update(done=daemon.execute("cart_sync_job")))
    terminal.start()
    product_failed = webhook.wait_for("sync_failed:product_sync_job", timeout=ALERTED_WITHIN_S)
    terminal.join(timeout=TERMINAL_S)
    assert executed["done"].returncode != 0
    cart_failed = webhook.wait_for("sync_failed:cart_sync_job", timeout=ALERTED_WITHIN_S)
    assert webhook.attempts > len(webhook.bodies), "the webhook's HTTP 500 was retried"
    for alert, job in ((product_failed, "product_sync_job"), (cart_failed, "cart_sync_job")):
        assert alert["job"] == job and alert["severity"] == "error" and alert["kind"] == "sync_failed"
        assert job in alert["text"], alert["text"]
        assert alert["link"] == f"http://dagster-admin.example.internal/runs/{alert['run_id']}"
    assert product_failed["run_id"] == launched
    # Each alert names its run's own cause: the Cart DB, once the run's worker runs; or, for a run that a machine too
    # busy (CI's, as the suite starts) did not start within dagster.yaml's start timeout, Dagster's reason for failing
    # it (README, "Testing").
    assert "Cart PostgreSQL" in cart_failed["text"], cart_failed["text"]
    never_ran = not_started(daemon.instance, launched)
    cause = run_failure_message(daemon.instance, launched).splitlines()[0][:80] if never_ran else "Cart PostgreSQL"
    assert cause in product_failed["text"], (product_failed["text"], never_ran)
    wait_until(  # Dagster's run retries take the launched run twice more: the same incident, no new alert
        "the launched run and its two retries failed",
        lambda: [run.status for run in daemon.runs("product_sync_job")] == [RUN.FAILURE] * 3,
        2 * ALERTED_WITHIN_S,
        0.5,
    )

    # 2. The Cart DB is back: the next syncs succeed and resolve both incidents.
    faults.main.start_postgres()
    faults.product_db.products.insert_many([product_doc() for _ in range(3)])
    validation = daemon.launch("validation_job")
    check_failed = webhook.wait_for("check_failed:cart_db/product:no_missing_products", timeout=ALERTED_WITHIN_S)
    assert check_failed["check"] == "no_missing_products" and check_failed["asset"] == "cart_db/product"
    assert check_failed["count"] == "3" and "3 products are in the Product MongoDB" in check_failed["text"]
    assert check_failed["run_id"] == validation
    synced = daemon.launch("product_sync_job")
    assert daemon.execute("cart_sync_job").returncode == 0
    assert webhook.wait_for("sync_failed:product_sync_job", "resolved", ALERTED_WITHIN_S)["run_id"] == synced
    webhook.wait_for("sync_failed:cart_sync_job", "resolved", ALERTED_WITHIN_S)
    # validate_after_sync_sensor validates the sync's writes: the check passes again.
    webhook.wait_for("check_failed:cart_db/product:no_missing_products", "resolved", timeout=ALERTED_WITHIN_S)

    # 3. Cart change capture loses its slot: the full sync it requests is alerted, and resolves it.
    daemon.start_sensor("cart_changes_sensor")
    with faults.cart_conn() as conn:
        wait_until(
            "cart_changes_sensor created its slot",
            lambda: (
                conn.execute(
                    "SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", (settings.cart_cdc_slot,)
                ).fetchone()
                is not None
            ),
            DAEMON_START_S,  # the sensor's first evaluation, once started
            0.5,
        )
    lose_the_slot(faults, settings.cart_cdc_slot)
    lost = webhook.wait_for("changes_lost:cart_sync_job", timeout=ALERTED_WITHIN_S)
    [full] = daemon.runs("cart_sync_job", **{TRIGGER_TAG: CART_SLOT_LOST_TRIGGER})
    assert lost["run_id"] == full.run_id and "replication slot was lost" in lost["text"]
    assert webhook.wait_for("changes_lost:cart_sync_job", "resolved", ALERTED_WITHIN_S)["run_id"] == full.run_id

    # 4. A migration renamed the `cart` table: cart_changes_sensor errors on every tick that sees a product change.
    with faults.cart_conn() as conn:
        conn.execute("ALTER TABLE cart RENAME TO cart_renamed")
        try:
            conn.execute("UPDATE product SET price = price + 1 WHERE id = (SELECT min(id) FROM product)")
            failing = webhook.wait_for("sensor_failing:cart_changes_sensor", timeout=SENSOR_FAILING_S)
        finally:  # the fault stack is the next tests' too
            conn.execute("ALTER TABLE cart_renamed RENAME TO cart")
        assert failing["sensor"] == "cart_changes_sensor"
        assert "failed on its last 3 ticks" in failing["text"] and 'relation "cart" does not exist' in failing["text"]
    webhook.wait_for("sensor_failing:cart_changes_sensor", "resolved", timeout=SENSOR_FAILING_S)

    # 5. Nothing syncs the products for 2 minutes (twice SYNC_CRON_SCHEDULE's minute): cart_db/product is overdue.
    overdue = webhook.wait_for("table_overdue:cart_db/product", timeout=OVERDUE_WITHIN_S)
    freshness = daemon.instance.get_freshness_state_records([dg.AssetKey(["cart_db", "product"])])
    assert freshness[dg.AssetKey(["cart_db", "product"])].freshness_state.value == "FAIL"
    assert "cart_db/product is overdue: not synced within 0:02:00 (twice SYNC_CRON_SCHEDULE" in overdue["text"]
    daemon.launch("product_sync_job")
    webhook.wait_for("table_overdue:cart_db/product", "resolved", timeout=ALERTED_WITHIN_S)

    # Once per incident and status, over all the ticks of the scenario; no secret in any body, nor in the
    # daemon's log (where the sensor logs what it sends).
    ticks = daemon.sensor_ticks("alerts_sensor")
    assert ticks >= 10, ticks
    seen = [(body["incident"], body["status"]) for body in webhook.bodies]
    assert len(seen) == len(set(seen)), seen
    assert set(seen) == {
        (incident, status)
        for incident in (
            "sync_failed:product_sync_job",
            "sync_failed:cart_sync_job",
            "check_failed:cart_db/product:no_missing_products",
            "changes_lost:cart_sync_job",
            "table_overdue:cart_db/product",
            "sensor_failing:cart_changes_sensor",
        )
        for status in ("firing", "resolved")
    }, seen
    everything = json.dumps(webhook.bodies) + "".join(
        log.read_text(errors="replace") for log in daemon.home.glob("daemon-*.log")
    )
    for secret in (*TEST_SECRETS, WebhookReceiver.SECRET_PATH, "hook-Secret"):
        assert secret not in everything
    print("\nalerts received, in order:\n" + "\n".join(json.dumps(body, sort_keys=True) for body in webhook.bodies))
