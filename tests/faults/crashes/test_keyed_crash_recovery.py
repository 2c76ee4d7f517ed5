"""A crash never stalls product change capture: a keyed product run's worker killed alone, then with the daemon.

The real daemon and real run workers, as in test_crash_recovery.py: the dead run is failed within
the bound and the sensor asks for its keys again, so that they are repaired (not retried).
"""

from __future__ import annotations

import os
import signal

import dagster as dg
import pytest

from etl_defs.run_launcher import worker_pid
from etl_defs.tags import PRODUCT_CHANGES_TRIGGER, TRIGGER_TAG
from tests.factories import expected_row, product_doc
from tests.faults.helpers import (
    DAEMON_START_S,
    DEAD_RUN_FAILED_WITHIN_S,
    KEYED_REPAIR_S,
    SCENARIO_TIMEOUT_S,
    FaultStack,
    Orchestrator,
    cart_db_products,
    expected_products,
    write_held_mid_statement,
)
from tests.helpers import copy_products, run_failure_message, wait_until

pytestmark = [pytest.mark.faults, pytest.mark.timeout(SCENARIO_TIMEOUT_S)]

RUN = dg.DagsterRunStatus
SENSOR = "product_changes_sensor"


def test_a_keyed_product_run_whose_worker_dies_alone_or_with_the_daemon_has_its_keys_repaired_again(
    faults: FaultStack, orchestrator: Orchestrator
) -> None:
    docs = [product_doc() for _ in range(30)]
    faults.product_db.products.insert_many(docs)
    with faults.cart_conn() as conn:
        copy_products(conn, [expected_row(doc) for doc in docs])
    orchestrator.start()
    wait_until("product_changes_sensor's first tick", lambda: orchestrator.sensor_ticks(SENSOR) > 0, DAEMON_START_S)

    # The worker alone killed: its code server sees its child die and fails the run (Dagster's own handling).
    first = docs[:5]
    for doc in first:
        faults.product_db.products.update_one({"_id": doc["_id"]}, {"$inc": {"price": 1000}})
    with write_held_mid_statement(faults, "product", timeout=KEYED_REPAIR_S):
        [alone] = started_keyed_runs(orchestrator)
        pid, _ = worker_pid(orchestrator.instance, alone.run_id)
        os.kill(pid, signal.SIGKILL)
        orchestrator.wait_for_status(alone.run_id, RUN.FAILURE, timeout=DEAD_RUN_FAILED_WITHIN_S)
    wait_until(
        "the sensor repaired the first keys",
        lambda: cart_db_products(faults) == expected_products(faults),
        KEYED_REPAIR_S,
    )

    # The daemon, its code server and the worker killed together: run monitoring fails the run.
    second = docs[5:10]
    for doc in second:
        faults.product_db.products.update_one({"_id": doc["_id"]}, {"$inc": {"price": 1000}})
    with write_held_mid_statement(faults, "product", timeout=KEYED_REPAIR_S):
        [dead] = started_keyed_runs(orchestrator)
        orchestrator.crash()
    orchestrator.start()
    orchestrator.wait_until_monitoring()
    failed_after = orchestrator.wait_for_status(dead.run_id, RUN.FAILURE, timeout=DEAD_RUN_FAILED_WITHIN_S)
    assert "the run's worker died" in run_failure_message(orchestrator.instance, dead.run_id)
    wait_until(
        "the sensor repaired the second keys",
        lambda: cart_db_products(faults) == expected_products(faults),
        KEYED_REPAIR_S,
    )
    orchestrator.wait_until_every_run_ended(timeout=KEYED_REPAIR_S)

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
        f"failed {failed_after:.1f}s after the new daemon's run monitoring ran; runs: "
        + ", ".join(f"{r.run_id[:8]} {r.status.value} ({len(r.run_config.get('keys', ()))} keys)" for r in runs)
    )


def started_keyed_runs(orchestrator: Orchestrator) -> list[dg.DagsterRun]:
    """The keyed product runs that are STARTED (the test holds one on its write)."""
    return [
        run
        for run in orchestrator.runs("product_sync_job", **{TRIGGER_TAG: PRODUCT_CHANGES_TRIGGER})
        if run.status == RUN.STARTED
    ]
