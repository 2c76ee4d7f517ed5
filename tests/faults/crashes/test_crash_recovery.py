"""A crash of the orchestrator never stalls a whole-table product sync: the real daemon, real run workers,
SIGKILLed together.

The test runs `dagster-daemon` on the repo's workspace.yaml and dagster.yaml (the run queue's
per-pipeline limit, run monitoring, run retries), kills the daemon with its code server and
the run worker mid-run, as a host restart or an OOM kill does, starts a new daemon, and checks
that the dead run is failed within the bound, that the run queued behind it moves on, and that the
databases converge with nothing written twice. Keyed product runs: test_keyed_crash_recovery.py; the cart
change capture: test_cart_crash_recovery.py (modules of their own in this folder, which one worker runs one
after the other: tests/conftest.py).
"""

from __future__ import annotations

import time

import dagster as dg
import pytest

from tests.factories import product_doc
from tests.faults.helpers import (
    DEAD_RUN_FAILED_WITHIN_S,
    RUN_START_S,
    SCENARIO_TIMEOUT_S,
    FaultStack,
    Orchestrator,
    cart_db_products,
    expected_products,
    not_started,
    run_started_at,
)
from tests.helpers import run_failure_message, wait_until

pytestmark = [pytest.mark.faults, pytest.mark.timeout(SCENARIO_TIMEOUT_S)]

RUN = dg.DagsterRunStatus
PRODUCTS = 2000
BATCH = 50


def test_a_whole_table_sync_killed_with_the_daemon_is_failed_and_the_run_queued_behind_it_converges(
    faults: FaultStack, orchestrator: Orchestrator
) -> None:
    faults.product_db.products.insert_many([product_doc() for _ in range(PRODUCTS)])
    orchestrator.start()
    # Slowed down (50 keys a batch, 200 ms after each) so that it is still writing when the machine dies.
    dead = orchestrator.launch("product_sync_job", {"batch_size": BATCH, "batch_pause_ms": 200})
    orchestrator.wait_for_status(dead, RUN.STARTED, timeout=RUN_START_S)
    wait_until("the sync wrote its first batches", lambda: len(cart_db_products(faults)) >= 2 * BATCH, RUN_START_S)

    orchestrator.crash()
    written_at_crash = len(cart_db_products(faults))
    assert 0 < written_at_crash < PRODUCTS
    # What one batch of this run took on this machine, start-up included: the retry's whole run is bounded by it.
    batch_s = (time.time() - run_started_at(orchestrator.instance, dead)) / (written_at_crash / BATCH)
    assert orchestrator.status(dead) == RUN.STARTED, "nothing is left to report the crash"
    queued = orchestrator.launch("product_sync_job")  # behind the dead run: one products run at a time
    assert orchestrator.status(queued) == RUN.QUEUED

    orchestrator.start()
    orchestrator.wait_until_monitoring()
    failed_after = orchestrator.wait_for_status(dead, RUN.FAILURE, timeout=DEAD_RUN_FAILED_WITHIN_S)
    assert "the run's worker died: its worker process" in run_failure_message(orchestrator.instance, dead)
    # The queued run starts once the dead one failed; Dagster's run retry of the dead run waits behind it. Each run
    # within its start timeout and its work; a run the busy code server did not launch in time is taken again.
    each_s = RUN_START_S + PRODUCTS / BATCH * batch_s
    queued_retries = orchestrator.wait_for_success_or_retry(queued, each_s)
    assert not queued_retries or not_started(orchestrator.instance, queued)
    *not_launched, retry = orchestrator.wait_for_success_or_retry(dead, each_s)

    assert cart_db_products(faults) == expected_products(faults)
    runs = {run.run_id: run for run in orchestrator.runs("product_sync_job")}
    assert len(runs) == 2 + len(queued_retries) + len(not_launched) + 1, "the dead run, the queued run, their retries"
    assert (runs[dead].status, runs[retry.run_id].status) == (RUN.FAILURE, RUN.SUCCESS)
    assert retry.tags["dagster/retry_number"] == str(len(not_launched) + 1), "Dagster's run retries took the dead run"
    print(
        f"\nwhole-table product sync: {written_at_crash} of {PRODUCTS} rows written at the crash; the dead run failed "
        f"{failed_after:.1f}s after the new daemon's run monitoring ran; the run queued behind it and the "
        f"automatic retry succeeded ({len(not_launched) + len(queued_retries)} runs not started in time); runs: "
        + ", ".join(f"{r.run_id[:8]} {r.status.value}" for r in runs.values())
    )
