"""The sync schedules on a real Dagster instance and real servers; `dagster schedule|sensor list` from the terminal."""

import subprocess
import sys
import threading
import time
import traceback

import dagster as dg
import pytest

from etl_defs.definitions import build_definitions
from etl_defs.settings import SyncSettings
from local.dagster_dev import DAGSTER
from tests.factories import product_doc
from tests.helpers import KEYED_RUN_S, REPO, RUN_START_S, Databases, LoadableTargetOrigin, in_process_test_workspace


def tick(definitions: dg.Definitions, name: str, instance: dg.DagsterInstance) -> dg.RunRequest | dg.SkipReason:
    """One evaluation of a schedule, with the code location's resources, as the scheduler runs it."""
    schedule = definitions.resolve_schedule_def(name)
    with dg.build_schedule_context(instance=instance, resources=definitions.resources) as context:
        return schedule(context)


def test_schedules_follow_the_settings(settings: SyncSettings) -> None:
    custom = settings.model_copy(
        update={
            "sync_cron_schedule": "*/7 * * * *",
            "cart_sync_cron_schedule": "15 3 * * *",
            "timezone": "Europe/Berlin",
            "enable_scheduler": True,
        }
    )
    on = build_definitions(custom)
    off = build_definitions(custom.model_copy(update={"enable_scheduler": False}))

    product, cart = on.resolve_schedule_def("product_sync_schedule"), on.resolve_schedule_def("cart_sync_schedule")
    assert (product.cron_schedule, product.execution_timezone, product.job_name) == (
        "*/7 * * * *",
        "Europe/Berlin",
        "product_sync_job",
    )
    assert (cart.cron_schedule, cart.execution_timezone, cart.job_name) == (
        "15 3 * * *",
        "Europe/Berlin",
        "cart_sync_job",
    )
    assert product.default_status == cart.default_status == dg.DefaultScheduleStatus.RUNNING
    for name in ("product_sync_schedule", "cart_sync_schedule"):
        assert off.resolve_schedule_def(name).default_status == dg.DefaultScheduleStatus.STOPPED


def test_a_tick_with_nothing_running_requests_a_sync_that_then_runs(
    dbs: Databases, instance, defs: dg.Definitions
) -> None:
    dbs.product_db.products.insert_many([product_doc() for _ in range(3)])

    request = tick(defs, "product_sync_schedule", instance)

    assert isinstance(request, dg.RunRequest)
    run = defs.resolve_job_def("product_sync_job").execute_in_process(
        run_config=request.run_config, tags=request.tags, instance=instance
    )
    assert run.success and run.output_for_node("report_product_sync")["inserted"] == 3
    assert isinstance(tick(defs, "cart_sync_schedule", instance), dg.RunRequest)


def test_a_tick_while_a_sync_is_still_running_is_skipped(dbs: Databases, instance, defs: dg.Definitions) -> None:
    dbs.product_db.products.insert_many([product_doc() for _ in range(4)])
    job = defs.resolve_job_def("product_sync_job")
    outcome: dict[str, dg.ExecuteInProcessResult] = {}
    slow = threading.Thread(
        target=lambda: outcome.update(
            run=job.execute_in_process(run_config={"batch_size": 1, "batch_pause_ms": 800}, instance=instance)
        )
    )
    slow.start()
    try:
        deadline = time.monotonic() + 30
        while not instance.get_runs(dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED])):
            assert time.monotonic() < deadline, "the slow run never started"
            time.sleep(0.05)
        running = instance.get_runs(dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]))[0]

        skipped = tick(defs, "product_sync_schedule", instance)
        other = tick(defs, "cart_sync_schedule", instance)
    finally:
        # A hang detector for a run of four one-product batches (60 s once ran out while the run's thread was still
        # inside execute_in_process after its last step, on four workers on two cores): where it hangs, say where.
        slow.join(timeout=RUN_START_S + KEYED_RUN_S)
    frame = sys._current_frames().get(slow.ident) if slow.is_alive() else None
    assert frame is None, "the slow run's thread hangs in:\n" + "".join(traceback.format_stack(frame))

    assert isinstance(skipped, dg.SkipReason)
    assert skipped.skip_message == (
        f"product_sync_job run {running.run_id} is still started; product_sync_job waits for the next tick"
    )
    assert isinstance(other, dg.RunRequest)  # another pipeline is not held up
    assert outcome["run"].success
    assert isinstance(tick(defs, "product_sync_schedule", instance), dg.RunRequest)  # finished: the next tick runs


def waiting_run(
    defs: dg.Definitions, instance: dg.DagsterInstance, job_name: str, status: dg.DagsterRunStatus
) -> dg.DagsterRun:
    """A run created and left waiting; QUEUED the way the queued run coordinator enqueues it."""
    job = defs.resolve_job_def(job_name)
    if status != dg.DagsterRunStatus.QUEUED:
        return instance.create_run_for_job(job, status=status)
    # What the webserver does on launchRun: a run with its code location's origin, submitted to the coordinator.
    with in_process_test_workspace(instance, LoadableTargetOrigin(module_name="etl_defs")) as workspace:
        location = workspace.get_code_location(workspace.code_location_names[0])
        remote_job = location.get_repository("__repository__").get_full_job(job_name)
        run = instance.create_run_for_job(
            job, remote_job_origin=remote_job.get_remote_origin(), job_code_origin=remote_job.get_python_origin()
        )
        queued = instance.submit_run(run.run_id, workspace)
    assert queued.status == dg.DagsterRunStatus.QUEUED
    return queued


WAITING = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING]


@pytest.mark.parametrize("status", WAITING)
def test_a_tick_while_a_sync_is_queued_or_starting_is_skipped(
    dbs: Databases, instance, status, defs: dg.Definitions
) -> None:
    waiting = waiting_run(defs, instance, "cart_sync_job", status)

    skipped = tick(defs, "cart_sync_schedule", instance)

    assert isinstance(skipped, dg.SkipReason)
    assert f"cart_sync_job run {waiting.run_id} is still {status.value.lower()}" in skipped.skip_message
    assert isinstance(tick(defs, "product_sync_schedule", instance), dg.RunRequest)


def test_a_full_sync_in_flight_holds_back_both_schedules(dbs: Databases, instance, defs: dg.Definitions) -> None:
    full = waiting_run(defs, instance, "full_sync_job", dg.DagsterRunStatus.QUEUED)

    for name in ("product_sync_schedule", "cart_sync_schedule"):
        skipped = tick(defs, name, instance)
        assert isinstance(skipped, dg.SkipReason) and f"full_sync_job run {full.run_id}" in skipped.skip_message


@pytest.mark.parametrize(
    ("schedule", "job_name", "trigger"),
    [
        ("product_sync_schedule", "product_sync_job", "product_changes"),
        ("cart_sync_schedule", "cart_sync_job", "cart_changes"),
    ],
)
def test_a_keyed_repair_in_flight_does_not_hold_back_the_whole_table_sync(
    dbs: Databases, instance, schedule: str, job_name: str, trigger: str, defs: dg.Definitions
) -> None:
    """The change sensors request keyed runs every few seconds: the safety net is queued behind them, not skipped."""
    job = defs.resolve_job_def(job_name)
    instance.create_run_for_job(job, status=dg.DagsterRunStatus.STARTED, tags={"etl-sync/trigger": trigger})

    assert isinstance(tick(defs, schedule, instance), dg.RunRequest)


def test_finished_runs_do_not_hold_a_tick(dbs: Databases, instance, defs: dg.Definitions) -> None:
    for status in (dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED):
        instance.create_run_for_job(defs.resolve_job_def("product_sync_job"), status=status)

    assert isinstance(tick(defs, "product_sync_schedule", instance), dg.RunRequest)


@pytest.mark.faults
def test_a_tick_while_a_database_is_down_is_skipped(dbs: Databases, instance, defs: dg.Definitions) -> None:
    dbs.stack.stop_mongo()
    try:
        skipped = tick(defs, "product_sync_schedule", instance)
    finally:
        dbs.stack.start_mongo()

    assert isinstance(skipped, dg.SkipReason)
    assert skipped.skip_message.startswith("not starting a sync against a database that is down: Product MongoDB")
    assert instance.get_runs() == []
    assert isinstance(tick(defs, "product_sync_schedule", instance), dg.RunRequest)


# ----- what an operator sees from the terminal -----


def dagster_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([DAGSTER, *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=300)


def test_schedule_and_sensor_list_show_stopped_when_the_scheduler_is_disabled(dagster_env: dict) -> None:
    env = {**dagster_env, "ENABLE_SCHEDULER": "false"}

    schedules = dagster_cli(env, "schedule", "list", "-m", "etl_defs")
    sensors = dagster_cli(env, "sensor", "list", "-m", "etl_defs")

    assert schedules.returncode == 0, schedules.stderr[-3000:]
    assert "Schedule: product_sync_schedule [STOPPED]" in schedules.stdout
    assert "Schedule: cart_sync_schedule [STOPPED]" in schedules.stdout
    assert sensors.returncode == 0, sensors.stderr[-3000:]
    assert "Sensor: databases_health_sensor [STOPPED]" in sensors.stdout
    assert "Sensor: validate_after_sync_sensor [RUNNING]" in sensors.stdout
    assert "Sensor: product_changes_sensor [STOPPED]" in sensors.stdout
    assert "Sensor: cart_changes_sensor [STOPPED]" in sensors.stdout


def test_schedule_and_sensor_list_show_running_when_the_scheduler_is_enabled(dagster_env: dict) -> None:
    env = {**dagster_env, "ENABLE_SCHEDULER": "true"}

    schedules = dagster_cli(env, "schedule", "list", "-w", "workspace.yaml")
    sensors = dagster_cli(env, "sensor", "list", "-w", "workspace.yaml")

    assert schedules.returncode == 0, schedules.stderr[-3000:]
    assert "Schedule: product_sync_schedule [RUNNING]" in schedules.stdout
    assert "Schedule: cart_sync_schedule [RUNNING]" in schedules.stdout
    assert "Sensor: databases_health_sensor [RUNNING]" in sensors.stdout
    assert "Sensor: product_changes_sensor [RUNNING]" in sensors.stdout
    assert "Sensor: cart_changes_sensor [RUNNING]" in sensors.stdout


def test_dagster_home_is_needed_to_list_schedules(dagster_env: dict) -> None:
    env = {k: v for k, v in dagster_env.items() if k != "DAGSTER_HOME"}

    result = dagster_cli(env, "schedule", "list", "-m", "etl_defs")

    assert result.returncode != 0
    assert "DAGSTER_HOME" in result.stderr + result.stdout
