"""The sensors on real servers and a real Dagster instance.

The health sensor is evaluated through `build_sensor_context` and its asset events are
stored the way the sensor daemon stores them (`instance.report_runless_asset_event`), so
the tests read back what the UI shows: the latest `reachable` check execution per table.
"""

from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import pytest

from etl_defs.assets import CART_DB_CART, CART_DB_PRODUCT, ORDER_DB_CARTS, PRODUCT_DB_PRODUCTS
from etl_defs.checks import CART_CHECK_KEYS, PRODUCT_CHECK_KEYS, VALIDATION_CHECK_KEYS
from etl_defs.definitions import build_definitions
from etl_defs.health import REACHABILITY_CHECK_KEYS
from etl_defs.sensors import health_check_due
from etl_defs.settings import SyncSettings
from etl_defs.tags import VALIDATES_RUN_TAG
from tests.factories import product_doc
from tests.helpers import Databases
from tests.integration.helpers import dagster_job_execute, run_id_of

ALL_TABLES = {PRODUCT_DB_PRODUCTS, CART_DB_PRODUCT, CART_DB_CART, ORDER_DB_CARTS}
MONGO_TABLES = {PRODUCT_DB_PRODUCTS, ORDER_DB_CARTS}


def evaluate_health(defs: dg.Definitions, instance: dg.DagsterInstance, cursor: str | None = None) -> dg.SensorResult:
    """One tick of databases_health_sensor, its events stored as the sensor daemon stores them."""
    sensor = defs.resolve_sensor_def("databases_health_sensor")
    with dg.build_sensor_context(instance=instance, cursor=cursor, resources=defs.resources) as context:
        result = sensor(context)
    assert isinstance(result, dg.SensorResult)
    for event in result.asset_events:
        instance.report_runless_asset_event(event)
    return result


def reachable_now(instance: dg.DagsterInstance) -> dict[dg.AssetKey, bool]:
    """What the UI shows: the latest `reachable` check execution of each table, passed or failed."""
    latest = instance.event_log_storage.get_latest_asset_check_execution_by_key(REACHABILITY_CHECK_KEYS)
    return {key.asset_key: record.status.value == "SUCCEEDED" for key, record in latest.items()}


def observations(result: dg.SensorResult) -> dict[dg.AssetKey, dict]:
    return {
        event.asset_key: {k: v.value for k, v in event.metadata.items()}
        for event in result.asset_events
        if isinstance(event, dg.AssetObservation)
    }


def test_health_sensor_records_every_database_as_reachable_with_latency(
    dbs: Databases, instance, defs: dg.Definitions
) -> None:
    result = evaluate_health(defs, instance)

    assert result.run_requests == []
    assert result.skip_reason is not None and "all databases answered" in result.skip_reason.skip_message
    assert reachable_now(instance) == dict.fromkeys(ALL_TABLES, True)
    seen = observations(result)
    assert set(seen) == ALL_TABLES
    for metadata in seen.values():
        assert metadata["reachable"] == 1
        assert isinstance(metadata["latency_ms"], float) and 0 <= metadata["latency_ms"] < 5000
    assert "Cart PostgreSQL" in seen[CART_DB_CART]["database"]
    stored = instance.fetch_observations(CART_DB_PRODUCT, limit=1).records  # what the UI plots
    assert [r.asset_observation.metadata["reachable"].value for r in stored] == [1]


@pytest.mark.faults
def test_mongodb_going_down_shows_red_and_its_recovery_green(dbs: Databases, instance, defs: dg.Definitions) -> None:
    evaluate_health(defs, instance)
    assert reachable_now(instance) == dict.fromkeys(ALL_TABLES, True)
    dbs.stack.stop_mongo()
    try:
        down = evaluate_health(defs, instance)  # must not raise

        assert down.run_requests == []
        assert "2 of 3 databases down" in down.skip_reason.skip_message
        assert reachable_now(instance) == {table: table not in MONGO_TABLES for table in ALL_TABLES}
        seen = observations(down)
        assert seen[PRODUCT_DB_PRODUCTS]["reachable"] == 0 and "latency_ms" not in seen[PRODUCT_DB_PRODUCTS]
        assert "Product MongoDB" in seen[PRODUCT_DB_PRODUCTS]["error"]
        assert seen[CART_DB_PRODUCT]["reachable"] == 1
    finally:
        dbs.stack.start_mongo()

    evaluate_health(defs, instance)

    assert reachable_now(instance) == dict.fromkeys(ALL_TABLES, True)


@pytest.mark.faults
def test_postgresql_going_down_shows_red_and_its_recovery_green(dbs: Databases, instance, defs: dg.Definitions) -> None:
    dbs.stack.stop_postgres()
    try:
        down = evaluate_health(defs, instance)

        assert down.run_requests == []
        assert "1 of 3 databases down" in down.skip_reason.skip_message
        assert reachable_now(instance) == {table: table in MONGO_TABLES for table in ALL_TABLES}
    finally:
        dbs.stack.start_postgres()

    evaluate_health(defs, instance)

    assert reachable_now(instance) == dict.fromkeys(ALL_TABLES, True)


def test_reachable_checks_also_run_on_demand_as_the_ui_runs_them(
    dbs: Databases, instance, defs: dg.Definitions
) -> None:
    two = set(REACHABILITY_CHECK_KEYS[:2])
    job = defs.resolve_implicit_global_asset_job_def().get_subset(asset_check_selection=two)

    run = job.execute_in_process(instance=instance)

    assert run.success
    evaluations = run.get_asset_check_evaluations()
    assert {e.asset_check_key for e in evaluations} == two and all(e.passed for e in evaluations)
    assert all(isinstance(e.metadata["latency_ms"].value, float) for e in evaluations)


def test_health_pings_only_on_new_cron_slots(dbs: Databases, instance, defs: dg.Definitions) -> None:
    first = evaluate_health(defs, instance)

    again = evaluate_health(defs, instance, cursor=first.cursor)

    assert first.cursor is not None and first.asset_events
    assert again.asset_events == [] and again.skip_reason is not None
    assert again.skip_reason.skip_message.startswith("next health check at ")


def test_health_cadence_follows_the_cron_in_its_timezone() -> None:
    noon = datetime(2026, 3, 2, 12, 3, 20, tzinfo=UTC)  # a Monday

    due, slot, following = health_check_due("*/5 * * * *", "UTC", None, noon)
    assert due and slot == datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
    assert following == datetime(2026, 3, 2, 12, 5, tzinfo=UTC)
    assert health_check_due("*/5 * * * *", "UTC", str(slot.timestamp()), noon)[0] is False
    on_the_slot = datetime(2026, 3, 2, 12, 5, tzinfo=UTC)
    assert health_check_due("*/5 * * * *", "UTC", str(slot.timestamp()), on_the_slot)[0] is True
    # 09:00 in Berlin is 08:00 UTC in winter; weekdays only.
    due, slot, following = health_check_due("0 9 * * 1-5", "Europe/Berlin", None, noon)
    assert slot.astimezone(UTC) == datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
    assert following.astimezone(UTC) == datetime(2026, 3, 3, 8, 0, tzinfo=UTC)


def test_health_sensor_is_running_by_default_only_when_the_scheduler_is_enabled(settings: SyncSettings) -> None:
    on = build_definitions(settings.model_copy(update={"enable_scheduler": True}))
    off = build_definitions(settings.model_copy(update={"enable_scheduler": False}))

    assert on.resolve_sensor_def("databases_health_sensor").default_status == dg.DefaultSensorStatus.RUNNING
    assert off.resolve_sensor_def("databases_health_sensor").default_status == dg.DefaultSensorStatus.STOPPED
    # The health sensor targets no job: it cannot start a sync.
    assert not on.resolve_sensor_def("databases_health_sensor").targets


# ----- validate_after_sync_sensor -----


def evaluate_after_syncs(
    defs: dg.Definitions, instance: dg.DagsterInstance, cursor: str | None = None
) -> dg.SensorResult:
    """One tick of validate_after_sync_sensor against `instance`, as the sensor daemon evaluates it."""
    sensor = defs.resolve_sensor_def("validate_after_sync_sensor")
    with dg.build_sensor_context(instance=instance, cursor=cursor) as context:
        result = sensor(context)
    assert isinstance(result, dg.SensorResult)
    return result


def run_requested_checks(
    defs: dg.Definitions, instance: dg.DagsterInstance, request: dg.RunRequest
) -> dict[dg.AssetCheckKey, bool]:
    """Run what the sensor requested, as the daemon would: the validation job, subset to the requested checks."""
    job_name = defs.resolve_sensor_def("validate_after_sync_sensor").job_name
    job = defs.resolve_job_def(job_name).get_subset(asset_check_selection=set(request.asset_check_keys))
    checks = job.execute_in_process(instance=instance, tags=request.tags)
    assert checks.success
    return {e.asset_check_key: e.passed for e in checks.get_asset_check_evaluations()}


def test_a_real_product_sync_requests_the_product_checks_which_then_pass(
    dbs: Databases, instance, defs: dg.Definitions
) -> None:
    dbs.product_db.products.insert_many([product_doc() for _ in range(5)])
    sync = defs.resolve_job_def("product_sync_job").execute_in_process(instance=instance)

    result = evaluate_after_syncs(defs, instance)

    [request] = result.run_requests
    assert request.run_key == f"validate-cart_db__product-after-{sync.run_id}"
    assert set(request.asset_check_keys) == set(PRODUCT_CHECK_KEYS)
    assert request.tags == {VALIDATES_RUN_TAG: sync.run_id, "etl-sync/validates-job": "product_sync_job"}
    assert run_requested_checks(defs, instance, request) == dict.fromkeys(PRODUCT_CHECK_KEYS, True)
    # The next tick has nothing new to validate.
    again = evaluate_after_syncs(defs, instance, result.cursor)
    assert again.run_requests == []
    assert again.skip_reason is not None and "since the last validation" in again.skip_reason.skip_message


def test_a_dry_run_requests_nothing(dbs: Databases, instance, defs: dg.Definitions) -> None:
    dbs.product_db.products.insert_many([product_doc()])
    defs.resolve_job_def("product_sync_job").execute_in_process(run_config={"dry_run": True}, instance=instance)

    result = evaluate_after_syncs(defs, instance)

    assert result.run_requests == []
    assert result.skip_reason is not None and "no sync wrote cart_db/product or order_db/carts" in (
        result.skip_reason.skip_message
    )


def test_each_sync_job_requests_the_checks_of_the_tables_it_wrote(
    dbs: Databases, instance, defs: dg.Definitions
) -> None:
    cart = defs.resolve_job_def("cart_sync_job").execute_in_process(instance=instance)
    after_cart = evaluate_after_syncs(defs, instance)
    full = defs.resolve_job_def("full_sync_job").execute_in_process(instance=instance)
    after_full = evaluate_after_syncs(defs, instance, after_cart.cursor)

    assert [(r.tags[VALIDATES_RUN_TAG], set(r.asset_check_keys)) for r in after_cart.run_requests] == [
        (cart.run_id, set(CART_CHECK_KEYS))
    ]
    assert {(r.tags[VALIDATES_RUN_TAG], frozenset(r.asset_check_keys)) for r in after_full.run_requests} == {
        (full.run_id, frozenset(PRODUCT_CHECK_KEYS)),
        (full.run_id, frozenset(CART_CHECK_KEYS)),
    }
    assert len(after_full.run_requests) == 2
    assert {key for r in after_full.run_requests for key in r.asset_check_keys} == set(VALIDATION_CHECK_KEYS)


def test_several_syncs_since_the_last_tick_are_validated_once_after_the_newest(
    dbs: Databases, instance, defs: dg.Definitions
) -> None:
    job = defs.resolve_job_def("product_sync_job")
    first = evaluate_after_syncs(defs, instance)
    runs = [job.execute_in_process(instance=instance).run_id for _ in range(3)]

    result = evaluate_after_syncs(defs, instance, first.cursor)

    assert [r.tags[VALIDATES_RUN_TAG] for r in result.run_requests] == [runs[-1]]


def test_a_sync_from_the_terminal_is_seen_by_the_sensor_on_the_same_instance(
    dbs: Databases, dagster_env: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, defs: dg.Definitions
) -> None:
    dbs.product_db.products.insert_many([product_doc() for _ in range(3)])
    terminal = dagster_job_execute(dagster_env, "product_sync_job", None, tmp_path)
    assert terminal.returncode == 0, terminal.stderr[-3000:]
    run_id = run_id_of("product_sync_job", terminal.stderr)
    for name in ("DAGSTER_HOME", "DAGSTER_PG_URL"):
        monkeypatch.setenv(name, dagster_env[name])

    with dg.DagsterInstance.get() as same_instance:  # the terminal's DAGSTER_HOME: the instance in PostgreSQL
        result = evaluate_after_syncs(defs, same_instance)
        requested = {r.tags[VALIDATES_RUN_TAG]: r for r in result.run_requests}
        assert set(requested[run_id].asset_check_keys) == set(PRODUCT_CHECK_KEYS)
        assert run_requested_checks(defs, same_instance, requested[run_id]) == dict.fromkeys(PRODUCT_CHECK_KEYS, True)


def test_validate_after_sync_sensor_runs_whatever_enable_scheduler_says(settings: SyncSettings) -> None:
    off = build_definitions(settings.model_copy(update={"enable_scheduler": False}))

    assert off.resolve_sensor_def("validate_after_sync_sensor").default_status == dg.DefaultSensorStatus.RUNNING
