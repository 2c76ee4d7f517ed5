"""alerts_sensor on a real instance, evaluated through `build_sensor_context`, delivering to a real HTTP
receiver on loopback: a sync run that failed and the next that succeeded, change capture's lag from the
runs it holds, and a database down on consecutive health pings (the real health sensor pinging a
PostgreSQL port nobody listens on). The daemon's view of all this: tests/faults/test_alert_scenario.py."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import dagster as dg
import pytest

from etl_defs.definitions import build_definitions
from etl_defs.settings import load_settings
from etl_defs.tags import OLDEST_CHANGE_TAG, PRODUCT_CHANGES_TRIGGER, TRIGGER_TAG
from local.stack import free_port
from tests.factories import product_doc
from tests.helpers import Databases, WebhookReceiver
from tests.integration.helpers import sync_lock_held_elsewhere

RUN = dg.DagsterRunStatus


@pytest.fixture()
def receiver() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver()
    yield receiver
    receiver.close()


@pytest.fixture()
def alerting(receiver: WebhookReceiver, service_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dg.Definitions:
    """The code location in the session's environment with ALERT_WEBHOOK_URL set to the receiver, and 2 failures in
    a row before an alert."""
    monkeypatch.setenv("ALERT_WEBHOOK_URL", receiver.url)
    monkeypatch.setenv("ALERT_AFTER_CONSECUTIVE_FAILURES", "2")
    return build_definitions(load_settings())


def tick(defs: dg.Definitions, instance: dg.DagsterInstance, sensor: str, cursor: str | None) -> dg.SensorResult:
    """One evaluation of `sensor`, its asset events stored as the sensor daemon stores them."""
    with dg.build_sensor_context(instance=instance, cursor=cursor, resources=defs.resources) as context:
        result = defs.resolve_sensor_def(sensor)(context)
    for event in result.asset_events:
        instance.report_runless_asset_event(event)
    return result


def keyed_run(defs: dg.Definitions, instance: dg.DagsterInstance, oldest: datetime, status: RUN) -> dg.DagsterRun:
    """A product_changes_sensor repair run in the instance, for changes from `oldest` on."""
    return instance.create_run_for_job(
        defs.resolve_job_def("product_sync_job"),
        run_config={"keys": ["650000000000000000000001"]},
        tags={TRIGGER_TAG: PRODUCT_CHANGES_TRIGGER, OLDEST_CHANGE_TAG: oldest.isoformat()},
        status=status,
    )


def test_a_failed_sync_is_alerted_once_with_its_reason_and_resolved_by_the_next_success(
    dbs: Databases, instance: dg.DagsterInstance, alerting: dg.Definitions, receiver: WebhookReceiver
) -> None:
    dbs.product_db.products.insert_many([product_doc() for _ in range(3)])
    job = alerting.resolve_job_def("product_sync_job")
    cursor = tick(alerting, instance, "alerts_sensor", None).cursor
    with sync_lock_held_elsewhere(dbs, "products"):
        failed = [job.execute_in_process(instance=instance, raise_on_error=False) for _ in range(2)]
    assert not any(result.success for result in failed)
    for _ in range(2):
        cursor = tick(alerting, instance, "alerts_sensor", cursor).cursor

    [alert] = receiver.bodies
    assert (alert["incident"], alert["job"], alert["run_id"]) == (
        "sync_failed:product_sync_job",
        "product_sync_job",
        failed[0].run_id,
    )
    assert "another run holds the 'products' sync lock" in alert["text"], alert["text"]

    healed = job.execute_in_process(instance=instance)
    tick(alerting, instance, "alerts_sensor", cursor)
    [_, resolved] = receiver.bodies
    assert (resolved["status"], resolved["run_id"]) == ("resolved", healed.run_id)
    assert f"product_sync_job run {healed.run_id[:8]} succeeded" in resolved["text"]


def test_change_capture_behind_by_more_than_cdc_max_lag_is_alerted_once_until_a_repair_succeeds(
    dbs: Databases, instance: dg.DagsterInstance, alerting: dg.Definitions, receiver: WebhookReceiver
) -> None:
    now = datetime.now(UTC)
    keyed_run(alerting, instance, now - timedelta(seconds=30), RUN.SUCCESS)
    cursor = tick(alerting, instance, "alerts_sensor", None).cursor
    assert receiver.bodies == [], "a repair 30 s after its change is within the bound"

    failed = keyed_run(alerting, instance, now - timedelta(seconds=700), RUN.FAILURE)
    keyed_run(alerting, instance, now - timedelta(seconds=400), RUN.NOT_STARTED)  # asked again: still waiting
    for _ in range(3):
        cursor = tick(alerting, instance, "alerts_sensor", cursor).cursor

    [alert] = receiver.bodies
    assert alert["incident"] == "cdc_lag:product change capture" and alert["status"] == "firing"
    assert "product change capture is 70" in alert["text"] and "CDC_MAX_LAG_SECONDS=600" in alert["text"]
    assert failed.run_id != alert["run_id"], "the newest waiting run is named"

    keyed_run(alerting, instance, now - timedelta(seconds=700), RUN.SUCCESS)
    tick(alerting, instance, "alerts_sensor", cursor)
    assert [body["status"] for body in receiver.bodies] == ["firing", "resolved"]


def test_a_database_down_on_consecutive_health_pings_is_alerted_once_and_resolved_when_it_answers(
    dbs: Databases,
    instance: dg.DagsterInstance,
    alerting: dg.Definitions,
    receiver: WebhookReceiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    up = down = alerting  # the resources read their URLs from the environment when a tick starts
    cart_db_url = os.environ["CART_DB_URL"]
    monkeypatch.setenv("CART_DB_URL", f"postgresql://cart:x@127.0.0.1:{free_port()}/cart")
    alerts = tick(up, instance, "alerts_sensor", None).cursor

    tick(down, instance, "databases_health_sensor", None)
    alerts = tick(up, instance, "alerts_sensor", alerts).cursor
    assert receiver.bodies == [], "one failed ping is not yet an incident (ALERT_AFTER_CONSECUTIVE_FAILURES=2)"
    for _ in range(2):
        tick(down, instance, "databases_health_sensor", None)
        alerts = tick(up, instance, "alerts_sensor", alerts).cursor

    [alert] = receiver.bodies
    assert alert["incident"] == "database_down:cart_db" and alert["asset"] == "cart_db/product"
    assert "Cart PostgreSQL" in alert["text"] and "2 health checks in a row" in alert["text"]
    assert "cart:x@" not in alert["text"]

    monkeypatch.setenv("CART_DB_URL", cart_db_url)
    tick(up, instance, "databases_health_sensor", None)
    tick(up, instance, "alerts_sensor", alerts)
    assert [(body["incident"], body["status"]) for body in receiver.bodies] == [
        ("database_down:cart_db", "firing"),
        ("database_down:cart_db", "resolved"),
    ]
