"""product_sync_job while its databases fail: nothing half-written, clear errors, one re-run converges.

Each test plants 3000 products with drift (a third missing in the Cart DB, a third stale,
a third right, plus orphans), runs the job slowly (150 keys a batch, 150 ms apart) in a
thread, breaks a server once some batches are committed, and checks: batches are whole
and in order; the run retried and succeeded, or failed naming the database; after the
server is back one re-run leaves every row as expected, no duplicate key, and the rows
that were right before untouched (same `xmin`).
"""

from __future__ import annotations

import dagster as dg
import pytest

from etl_defs.steps import retries as step_retries
from etl_defs.steps.checkpoints import CHECKPOINT_KEY
from tests.faults.helpers import (
    FaultStack,
    JobInThread,
    ProductScenario,
    StartJob,
    assert_names_the_database,
    retries,
    step_failure_message,
    sync_sessions,
    wait_until,
    write_held_mid_statement,
)

pytestmark = pytest.mark.faults

PRODUCTS = 3000
BATCH = 150
SLOW = {"batch_size": BATCH, "batch_pause_ms": 150}


def start_slow_sync(faults: FaultStack, start_job: StartJob) -> tuple[ProductScenario, JobInThread]:
    scenario = ProductScenario.plant(faults, PRODUCTS, BATCH)
    run = start_job("product_sync_job", SLOW)
    wait_until("3 batches are committed", lambda: scenario.applied_batches() >= 3)
    return scenario, run


def rerun(start_job: StartJob) -> None:
    result = start_job("product_sync_job", {"batch_size": BATCH}).result()
    assert result.success, result.get_step_failure_events()


def assert_retried_and_succeeded(result: dg.ExecuteInProcessResult) -> None:
    assert result.success, result.get_step_failure_events()
    assert retries(result, "sync_product_range[range_1_of_1]") >= 1


def test_postgres_stopped_mid_write(faults: FaultStack, start_job: StartJob, short_retries: None) -> None:
    scenario, run = start_slow_sync(faults, start_job)
    with write_held_mid_statement(faults, "product"):
        committed = scenario.applied_batches()
        faults.main.stop_postgres()
    result = run.result()

    assert not result.success
    message = step_failure_message(result, "sync_product_range")
    assert_names_the_database(message, f"Cart PostgreSQL (127.0.0.1:{faults.main.state.pg_port}/cart) is unavailable")
    assert "gave up after 3 retries" in message
    assert retries(result, "sync_product_range[range_1_of_1]") == step_retries.MAX_CONNECTION_RETRIES
    faults.ensure_up()
    assert scenario.assert_stopped_part_way(3) == committed  # the batch in flight was rolled back

    rerun(start_job)

    scenario.assert_converged()


def test_postgres_back_within_the_retry_window(faults: FaultStack, start_job: StartJob) -> None:
    scenario, run = start_slow_sync(faults, start_job)
    with write_held_mid_statement(faults, "product"):
        faults.main.stop_postgres()
    faults.main.start_postgres()
    result = run.result()

    assert_retried_and_succeeded(result)
    scenario.assert_converged()


def test_connections_cut_mid_write(faults: FaultStack, start_job: StartJob) -> None:
    """The server stays up but ends the sync's sessions (a failover, a session killer, a DBA)."""
    scenario, run = start_slow_sync(faults, start_job)
    with write_held_mid_statement(faults, "product") as blocker:
        committed = scenario.applied_batches()
        blocker.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'etl-sync'")
        wait_until("the sync's sessions are gone", lambda: sync_sessions(faults) == 0)
        assert scenario.applied_batches() == committed  # the batch in flight was rolled back
    result = run.result()

    assert_retried_and_succeeded(result)
    scenario.assert_converged()


def test_product_mongodb_stopped_mid_run(faults: FaultStack, start_job: StartJob, no_retries: None) -> None:
    scenario, run = start_slow_sync(faults, start_job)

    faults.main.stop_mongo()
    result = run.result()

    assert not result.success
    message = step_failure_message(result, "sync_product_range")
    assert_names_the_database(
        message, f"Product MongoDB (127.0.0.1:{faults.main.state.mongo_port}/product) is unavailable"
    )
    assert "gave up after 0 retries" in message
    scenario.assert_stopped_part_way(3)

    faults.ensure_up()
    rerun(start_job)

    scenario.assert_converged()


def test_product_mongodb_back_within_the_retry_window(faults: FaultStack, start_job: StartJob) -> None:
    scenario, run = start_slow_sync(faults, start_job)

    faults.main.stop_mongo()
    faults.main.start_mongo()  # its open cursor is gone: CursorNotFound, retried like a lost connection
    result = run.result()

    assert_retried_and_succeeded(result)
    scenario.assert_converged()


def test_lock_session_cut_mid_run(faults: FaultStack, start_job: StartJob, instance: dg.DagsterInstance) -> None:
    """Only the idle session holding the advisory lock ends (an idle-session killer, a DBA):
    the sync must stop before its next batch rather than write on without its lock."""
    scenario, run = start_slow_sync(faults, start_job)
    with faults.cart_conn() as conn:
        ended = conn.execute(
            "SELECT count(pg_terminate_backend(l.pid)) FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
            "WHERE l.locktype = 'advisory' AND a.application_name = 'etl-sync'"
        ).fetchone()[0]
        committed = scenario.applied_batches()
    result = run.result()

    assert ended == 1
    assert_retried_and_succeeded(result)
    logs = [entry.user_message for entry in instance.all_logs(result.run_id)]
    retry_at = next(i for i, m in enumerate(logs) if "the session holding the 'products' sync lock ended" in m)
    written_unlocked = [m for m in logs[:retry_at] if m.startswith("products batch ") and "inserted=" in m]
    assert len(written_unlocked) <= committed + 1  # at most the batch in flight when the lock went
    scenario.assert_converged()


def test_a_retry_resumes_after_the_last_written_batch_and_reports_the_whole_run(
    faults: FaultStack, start_job: StartJob, instance: dg.DagsterInstance
) -> None:
    scenario = ProductScenario.plant(faults, PRODUCTS, BATCH)
    planned = start_job("product_sync_job", {"batch_size": BATCH, "dry_run": True}).result()
    assert planned.success
    run = start_job("product_sync_job", SLOW)
    wait_until("3 batches are committed", lambda: scenario.applied_batches() >= 3)

    faults.main.stop_mongo()
    faults.main.start_mongo()
    result = run.result()

    assert_retried_and_succeeded(result)
    scenario.assert_converged()
    logged = instance.all_logs(result.run_id, of_type=dg.DagsterEventType.ASSET_OBSERVATION)
    observed = [entry.dagster_event.asset_observation_data.asset_observation for entry in logged]
    [checkpoint] = [o.metadata[CHECKPOINT_KEY].value for o in observed if CHECKPOINT_KEY in o.metadata]
    assert checkpoint["batches"] >= 3 and checkpoint["inserted"] + checkpoint["updated"] > 0
    resumed = f"products sync resumes after key {checkpoint['resume_after']!r}"
    assert any(resumed in entry.user_message for entry in instance.all_logs(result.run_id)), resumed
    # One run's figures, every key counted once: as the dry run planned them before the fault.
    done, plan = result.output_for_node("report_product_sync"), planned.output_for_node("report_product_sync")
    classes = ("source_rows", "missing", "changed", "unchanged", "orphaned", "rejected")
    assert {name: done[name] for name in classes} == {name: plan[name] for name in classes}
    assert (done["inserted"], done["updated"]) == (plan["missing"], plan["changed"])
