"""cart_sync_job while its databases fail: no batch cut by the Cart DB, clear errors, one re-run converges.

600 carts over 100 products in the Cart DB; in the Order MongoDB (a SecantusDB of its
own) a fifth each missing, outdated, changed at the same version, right, and newer than
the Cart DB, plus orphans. The job runs slowly (40 carts a batch, 150 ms apart) in a
thread, a server breaks once some batches are written, and the checks are the product
ones, batch by batch as the sync cuts them, with one difference: a batch reaches the Order
MongoDB as two bulk writes (inserts, then updates), neither atomic, so the batch in flight
when the Order MongoDB stops may be partly applied (each document either old or new; the
guarded writes make the replay harmless, which the re-run shows). The Cart DB stopping
never cuts a batch: its writes read nothing from it.
"""

from __future__ import annotations

import signal

import pytest

from tests.faults.helpers import (
    CartScenario,
    FaultStack,
    JobInThread,
    StartJob,
    assert_names_the_database,
    retries,
    step_failure_message,
    wait_until,
)

pytestmark = pytest.mark.faults

CARTS = 600
PRODUCTS = 100
BATCH = 40
SLOW = {"batch_size": BATCH, "batch_pause_ms": 150}


def start_slow_sync(faults: FaultStack, start_job: StartJob) -> tuple[CartScenario, JobInThread]:
    scenario = CartScenario.plant(faults, CARTS, PRODUCTS, BATCH)
    run = start_job("cart_sync_job", SLOW)
    # A bulk write in progress is visible document by document: the frontier may be partial.
    wait_until("3 batches are written", lambda: scenario.applied_batches(frontier_may_be_partial=True) >= 3)
    return scenario, run


def rerun(start_job: StartJob) -> None:
    result = start_job("cart_sync_job", {"batch_size": BATCH}).result()
    assert result.success, result.get_step_failure_events()


def test_order_mongodb_stopped_mid_run(faults: FaultStack, start_job: StartJob, no_retries: None) -> None:
    scenario, run = start_slow_sync(faults, start_job)

    faults.order.stop_mongo(signal.SIGTERM)  # a clean stop: what it acknowledged is kept
    result = run.result()

    assert not result.success
    message = step_failure_message(result, "sync_cart_range")
    assert_names_the_database(
        message, f"Order MongoDB (127.0.0.1:{faults.order.state.mongo_port}/order) is unavailable"
    )
    assert "gave up after 0 retries" in message
    faults.ensure_up()
    assert scenario.applied_batches(frontier_may_be_partial=True) >= 3

    rerun(start_job)

    scenario.assert_converged()


def test_order_mongodb_crashes_and_is_back_within_the_retry_window(faults: FaultStack, start_job: StartJob) -> None:
    """SIGKILL, then a restart. SecantusDB loses the writes it acknowledged in its last
    second or so (as a mongod with `j: false` can lose its last journal interval): the
    retry reads the target again and writes them again."""
    scenario, run = start_slow_sync(faults, start_job)

    faults.order.stop_mongo(signal.SIGKILL)
    faults.order.start_mongo()
    result = run.result()

    assert result.success, result.get_step_failure_events()
    assert retries(result, "sync_cart_range[range_1_of_1]") >= 1
    scenario.assert_converged()


def test_cart_postgres_stopped_mid_run(faults: FaultStack, start_job: StartJob, short_retries: None) -> None:
    """The cart sync's source (and lock holder) goes away; the Order DB keeps whole batches."""
    scenario, run = start_slow_sync(faults, start_job)

    faults.main.stop_postgres()
    result = run.result()

    assert not result.success
    message = step_failure_message(result, "sync_cart_range")
    assert_names_the_database(message, f"Cart PostgreSQL (127.0.0.1:{faults.main.state.pg_port}/cart) is unavailable")
    faults.ensure_up()
    assert 3 <= scenario.applied_batches() < scenario.drift.batches(BATCH)

    rerun(start_job)

    scenario.assert_converged()
