"""Alerts without a daemon: incidents opened and closed once, the body Slack takes, delivery with retries
to a real HTTP receiver on loopback, the settings, and the freshness windows derived from the schedules."""

from __future__ import annotations

import dagster as dg
import pytest

from etl_defs.alerts import AlertState, Finding, deliver, error_line
from etl_defs.assets import CART_DB_PRODUCT, ORDER_DB_CARTS, freshness_window
from etl_defs.definitions import build_definitions
from etl_defs.settings import SettingsError, load_settings
from local.stack import free_port
from resources.webhook import AlertWebhook, WebhookError
from tests.helpers import WebhookReceiver

GOOD = {
    "PRODUCT_SERVICE_MONGODB_URL": "mongodb://db.internal:27017/product",
    "CART_DB_URL": "postgresql://cart:hunter2-secret@pg.internal:5432/cart",
}
FAILED = Finding(
    "sync_failed:product_sync_job",
    "sync_failed",
    True,
    "product_sync_job run 1234 failed: x",
    fields={"job": "product_sync_job", "run_id": "1234"},
    link="/runs/1234",
)
HEALED = Finding("sync_failed:product_sync_job", "sync_failed", False, "product_sync_job run 5678 succeeded")


@pytest.fixture()
def receiver() -> WebhookReceiver:
    receiver = WebhookReceiver(fail_first=2)
    yield receiver
    receiver.close()


def test_an_incident_is_alerted_once_while_it_lasts_and_once_when_resolved() -> None:
    state = AlertState()

    first = state.apply(FAILED, "https://dagster.example.internal/")
    again = state.apply(FAILED, "https://dagster.example.internal/")
    resolved = state.apply(HEALED, None)
    after = state.apply(HEALED, None)

    assert (again, after) == (None, None)
    assert first["status"] == "firing" and resolved["status"] == "resolved" and not state.open
    assert first["text"].startswith("[etl-sync] ALERT: product_sync_job run 1234 failed")
    assert first["link"] == "https://dagster.example.internal/runs/1234" and first["link"] in first["text"]
    assert (first["job"], first["run_id"], first["severity"], first["kind"]) == (
        "product_sync_job",
        "1234",
        "error",
        "sync_failed",
    )
    assert resolved["severity"] == "info" and resolved["link"] is None


def test_the_cursor_keeps_open_incidents_and_undelivered_alerts_across_ticks() -> None:
    state = AlertState(after=41)
    state.outbox.append(state.apply(FAILED, None))

    again = AlertState.parse(state.dumps())

    assert again.after == 41 and list(again.open) == [FAILED.key] and again.outbox == state.outbox
    assert again.apply(FAILED, None) is None
    assert AlertState.parse("not json") == AlertState()


def test_a_password_in_a_failure_never_reaches_the_alert() -> None:
    leaky = Finding("k", "sync_failed", True, "could not connect to postgresql://cart:hunter2-secret@pg:5432/cart")

    body = AlertState().apply(leaky, None)

    assert "hunter2-secret" not in str(body) and "postgresql://cart:***@pg" in body["text"]


def test_an_alert_the_webhook_refuses_twice_is_delivered_on_the_third_attempt(receiver: WebhookReceiver) -> None:
    webhook = AlertWebhook(url=receiver.url, backoff_s=0.01)

    assert webhook.post({"text": "hello"}) == 3
    assert receiver.bodies == [{"text": "hello"}] and receiver.attempts == 3


def test_a_webhook_that_is_down_keeps_the_alerts_for_the_next_tick_and_never_shows_its_url() -> None:
    url = f"http://127.0.0.1:{free_port()}{WebhookReceiver.SECRET_PATH}"
    webhook = AlertWebhook(url=url, attempts=2, backoff_s=0.01, timeout_s=1)
    outbox = [{"status": "firing", "incident": "a"}, {"status": "firing", "incident": "b"}]

    with pytest.raises(WebhookError) as refused:
        webhook.post(outbox[0])
    left = deliver(webhook, list(outbox), dg.get_dagster_logger())

    assert left == outbox
    assert "unreachable" in str(refused.value) and "127.0.0.1" not in str(refused.value)
    assert WebhookReceiver.SECRET_PATH not in str(refused.value)


def test_the_alert_settings_are_validated_and_the_webhook_url_is_never_shown() -> None:
    with pytest.raises(SettingsError) as bad:
        load_settings({**GOOD, "ALERT_WEBHOOK_URL": "hooks.slack.com/services/T0/B0/Secret123"})
    with pytest.raises(SettingsError) as lag:
        load_settings({**GOOD, "CDC_MAX_LAG_SECONDS": "5", "DAGSTER_UI_URL": "ftp://ui"})

    assert "ALERT_WEBHOOK_URL='***' is not an http(s) URL" in str(bad.value) and "Secret123" not in str(bad.value)
    assert "CDC_MAX_LAG_SECONDS" in str(lag.value) and "DAGSTER_UI_URL='ftp://ui'" in str(lag.value)
    defaults = load_settings(GOOD)
    assert (defaults.alert_webhook_url, defaults.cdc_max_lag_seconds, defaults.alert_after_consecutive_failures) == (
        None,
        600,
        3,
    )


def test_alerting_is_on_whenever_a_webhook_is_set_whatever_enable_scheduler_says() -> None:
    off = build_definitions(load_settings(GOOD))
    on = build_definitions(
        load_settings(
            {**GOOD, "ENABLE_SCHEDULER": "false", "ALERT_WEBHOOK_URL": "https://hooks.example/services/T/B/Secret123"}
        )
    )

    assert "alerts_sensor" not in [sensor.name for sensor in off.sensors]
    sensor = on.resolve_sensor_def("alerts_sensor")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING and not sensor.targets
    assert "Secret123" not in str(sensor.description)
    assert "alert_webhook" in sensor.required_resource_keys


@pytest.mark.parametrize(
    ("cron", "window"),
    [
        ("*/30 * * * *", "1:00:00"),
        ("*/10 * * * *", "0:20:00"),
        ("0 3 * * *", "2 days, 0:00:00"),
        ("0 9 * * 1-5", "6 days, 0:00:00"),
    ],
)
def test_a_tables_freshness_window_is_twice_its_schedules_longest_interval(cron: str, window: str) -> None:
    assert str(freshness_window(cron)) == window


def test_the_target_tables_carry_freshness_policies_from_their_schedules() -> None:
    defs = build_definitions(load_settings({**GOOD, "SYNC_CRON_SCHEDULE": "0 * * * *"}))
    policies = {
        key: spec.freshness_policy
        for key, spec in ((spec.key, spec) for assets in defs.assets for spec in getattr(assets, "specs", [assets]))
    }

    assert policies[CART_DB_PRODUCT].fail_window.to_timedelta().total_seconds() == 2 * 3600
    assert policies[ORDER_DB_CARTS].fail_window.to_timedelta().total_seconds() == 2 * 600


@pytest.mark.parametrize(
    ("message", "line"),
    [
        (
            "dagster._core.definitions.events.Failure: Cart PostgreSQL (pg:5432/cart) is unavailable\n  more",
            "Cart PostgreSQL (pg:5432/cart) is unavailable",
        ),
        (
            'psycopg.errors.UndefinedTable: relation "cart" does not exist',
            'UndefinedTable: relation "cart" does not exist',
        ),
        ("\nExceeded maximum runtime of 300 seconds.", "Exceeded maximum runtime of 300 seconds."),
        (
            "connection to postgresql://cart:hunter2-secret@pg/cart failed",
            "connection to postgresql://cart:***@pg/cart failed",
        ),
    ],
)
def test_an_alert_quotes_the_first_line_of_an_error_without_module_names_or_passwords(message: str, line: str) -> None:
    assert error_line(message) == line
