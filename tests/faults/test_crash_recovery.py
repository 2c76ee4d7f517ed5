"""A crash of the orchestrator never stalls a whole-table product sync: the real daemon, real run workers,
SIGKILLed together.

The test runs `dagster-daemon` on the repo's workspace.yaml and dagster.yaml (the run queue's
per-pipeline limit, run monitoring, run retries), kills the daemon with its code server and
the run worker mid-run, as a host restart or an OOM kill does, starts a new daemon, and checks
that the dead run is failed within the bound, that the run queued behind it moves on, and that the
databases converge with nothing written twice. Keyed product runs: test_keyed_crash_recovery.py; the cart
change capture: test_cart_crash_recovery.py (modules of their own, so that they run on different workers).
"""

from __future__ import annotations

import dagster as dg
import pytest

from tests.factories import product_doc
from tests.faults.helpers import (
    DEAD_RUN_FAILED_WITHIN_S,
    RUN_START_S,
    FaultStack,
    Orchestrator,
    cart_db_products,
    expected_products,
)
from tests.helpers import run_failure_message, wait_until

pytestmark = pytest.mark.faults

RUN = dg.DagsterRunStatus


def test_a_whole_table_sync_killed_with_the_daemon_is_failed_and_the_run_queued_behind_it_converges(
    faults: FaultStack, orchestrator: Orchestrator
) -> None:
    faults.product_db.products.insert_many([product_doc() for _ in range(2000)])
    orchestrator.start()
    # Slowed down (50 keys a batch, 200 ms after each) so that it is still writing when the machine dies.
    dead = orchestrator.launch("product_sync_job", {"batch_size": 50, "batch_pause_ms": 200})
    orchestrator.wait_for_status(dead, RUN.STARTED, timeout=RUN_START_S)
    wait_until("the sync wrote its first batches", lambda: len(cart_db_products(faults)) >= 100, 60)

    orchestrator.crash()
    written_at_crash = len(cart_db_products(faults))
    assert 0 < written_at_crash < 2000
    assert orchestrator.status(dead) == RUN.STARTED, "nothing is left to report the crash"
    queued = orchestrator.launch("product_sync_job")  # behind the dead run: one products run at a time
    assert orchestrator.status(queued) == RUN.QUEUED

    orchestrator.start()
    failed_after = orchestrator.wait_for_status(dead, RUN.FAILURE, timeout=DEAD_RUN_FAILED_WITHIN_S)
    assert "the run's worker died: its worker process" in run_failure_message(orchestrator.instance, dead)
    orchestrator.wait_for_status(queued, RUN.SUCCESS, timeout=RUN_START_S + 60)
    orchestrator.wait_until_every_run_ended(timeout=RUN_START_S + 60)

    assert cart_db_products(faults) == expected_products(faults)
    runs = {run.run_id: run for run in orchestrator.runs("product_sync_job")}
    [retry] = [run for run in runs.values() if run.parent_run_id == dead]
    assert (runs[dead].status, runs[queued].status, retry.status) == (RUN.FAILURE, RUN.SUCCESS, RUN.SUCCESS)
    assert retry.tags["dagster/retry_number"] == "1", "Dagster's run retries took the dead run again, once"
    print(
        f"\nwhole-table product sync: {written_at_crash} of 2000 rows written at the crash; the dead run failed "
        f"{failed_after:.1f}s after the new daemon started; the run queued behind it and the automatic retry "
        "succeeded; runs: " + ", ".join(f"{r.run_id[:8]} {r.status.value}" for r in runs.values())
    )
