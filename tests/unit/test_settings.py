"""Environment validation: one model, clear errors naming the variable, secrets masked."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest

from etl_defs.definitions import build_definitions, build_resources
from etl_defs.settings import SettingsError, load_settings, mask_secrets
from local.dagster_dev import DAGSTER
from tests.helpers import REPO

GOOD = {
    "PRODUCT_SERVICE_MONGODB_URL": "mongodb://db.internal:27017/product",
    "ORDER_SERVICE_MONGODB_URL": "mongodb://db.internal:27017/order",
    "CART_DB_URL": "postgresql://cart:hunter2-secret@pg.internal:5432/cart",
}


def test_defaults_are_the_old_services() -> None:
    settings = load_settings(GOOD)

    assert settings.sync_cron_schedule == "*/30 * * * *"
    assert settings.cart_sync_cron_schedule == "*/10 * * * *"
    assert settings.health_check_cron_schedule == "*/5 * * * *"
    assert settings.enable_scheduler is True
    assert (settings.sync_batch_size, settings.cart_sync_batch_size) == (1000, 1000)
    assert settings.timezone == "UTC"
    assert settings.product_cdc_interval_seconds == settings.cart_cdc_interval_seconds == 30
    assert settings.cart_cdc_slot == "etl_sync_carts"
    assert (settings.sync_executor, settings.range_step_cpu, settings.range_step_memory) == ("local", "1", "1Gi")


def test_the_write_url_wins_and_the_order_url_falls_back_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    env = {**GOOD, "CART_DB_WRITE_URL": "postgresql://w:x@primary:5432/cart"}
    del env["ORDER_SERVICE_MONGODB_URL"]

    with caplog.at_level(logging.WARNING):
        settings = load_settings(env)

    assert settings.cart_db_url_env == "CART_DB_WRITE_URL"
    assert settings.order_url_env == "PRODUCT_SERVICE_MONGODB_URL"
    assert "ORDER_SERVICE_MONGODB_URL is not set" in caplog.text


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("SYNC_BATCH_SIZE", "abc", "SYNC_BATCH_SIZE='abc' Input should be a valid integer"),
        ("SYNC_BATCH_SIZE", "0", "SYNC_BATCH_SIZE='0' Input should be greater than or equal to 1"),
        ("CART_SYNC_BATCH_SIZE", "-5", "CART_SYNC_BATCH_SIZE='-5' Input should be greater than or equal to 1"),
        ("MONGODB_FETCH_SIZE", "0", "MONGODB_FETCH_SIZE='0' Input should be greater than or equal to 1"),
        ("POSTGRES_FETCH_SIZE", "200001", "POSTGRES_FETCH_SIZE='200001' Input should be less than or equal to 100000"),
        ("SYNC_CRON_SCHEDULE", "every minute", "SYNC_CRON_SCHEDULE='every minute' is not a five-field cron"),
        ("CART_SYNC_CRON_SCHEDULE", "61 * * * *", "CART_SYNC_CRON_SCHEDULE='61 * * * *' is not a five-field cron"),
        ("HEALTH_CHECK_CRON_SCHEDULE", "* * *", "HEALTH_CHECK_CRON_SCHEDULE='* * *' is not a five-field cron"),
        ("TIMEZONE", "Mars/Olympus", "TIMEZONE='Mars/Olympus' is not a known IANA timezone"),
        ("ENABLE_SCHEDULER", "maybe", "ENABLE_SCHEDULER='maybe' Input should be a valid boolean"),
        ("MONGODB_PROJECT_FIELDS", "some", "MONGODB_PROJECT_FIELDS='some' Input should be a valid boolean"),
        (
            "PRODUCT_CDC_INTERVAL_SECONDS",
            "0",
            "PRODUCT_CDC_INTERVAL_SECONDS='0' Input should be greater than or equal to 1",
        ),
        (
            "CART_CDC_INTERVAL_SECONDS",
            "3601",
            "CART_CDC_INTERVAL_SECONDS='3601' Input should be less than or equal to 3600",
        ),
        (
            "CART_CDC_SLOT",
            "Carts-Slot",
            "CART_CDC_SLOT='Carts-Slot' is not a replication slot name (1 to 63 lower-case letters, digits or",
        ),
        (
            "MONGODB_SOCKET_TIMEOUT_MS",
            "500",
            "MONGODB_SOCKET_TIMEOUT_MS='500' Input should be greater than or equal to 1000",
        ),
        ("SYNC_EXECUTOR", "kubernetes", "SYNC_EXECUTOR='kubernetes' Input should be 'local' or 'k8s'"),
        ("SYNC_MAX_RUNTIME_SECONDS", "30", "SYNC_MAX_RUNTIME_SECONDS='30' Input should be greater than or equal to 60"),
        ("SYNC_RANGE_STEP_MEMORY", "lots", "SYNC_RANGE_STEP_MEMORY='lots' is not a Kubernetes quantity"),
        ("SYNC_RANGE_STEP_CPU", "1 core", "SYNC_RANGE_STEP_CPU='1 core' is not a Kubernetes quantity"),
        (
            "PRODUCT_CDC_INTERVAL_SECONDS",
            "30s",
            "PRODUCT_CDC_INTERVAL_SECONDS='30s' Input should be a valid integer",
        ),
        (
            "PRODUCT_SERVICE_MONGODB_URL",
            "http://x:27017/p",
            "PRODUCT_SERVICE_MONGODB_URL='http://x:27017/p' is not a MongoDB URL",
        ),
        (
            "ORDER_SERVICE_MONGODB_URL",
            "mongodb://host:27017",
            "ORDER_SERVICE_MONGODB_URL='mongodb://host:27017' names no database",
        ),
        ("CART_DB_URL", "mysql://u:topsecret@h/db", "CART_DB_URL='mysql://u:***@h/db' is not a PostgreSQL URL"),
        (
            "CART_DB_WRITE_URL",
            "postgresql://u:topsecret@h:port/db",
            "CART_DB_WRITE_URL='postgresql://u:***@h:port/db' is not a PostgreSQL URL (bad port)",
        ),
    ],
)
def test_a_bad_value_names_the_variable_and_the_value(name: str, value: str, message: str) -> None:
    with pytest.raises(SettingsError) as error:
        load_settings({**GOOD, name: value})

    assert message in str(error.value)
    assert "topsecret" not in str(error.value)


@pytest.mark.parametrize(
    "url",
    [
        "mongodb://db1:27017,db2:27017,db3:27017/product?replicaSet=rs0",
        "mongodb+srv://cluster0.example.net/product?retryWrites=true",
        "mongodb://[::1]:27017/product",
    ],
)
def test_production_mongodb_url_forms_are_accepted(url: str) -> None:
    assert load_settings({**GOOD, "PRODUCT_SERVICE_MONGODB_URL": url}).product_mongodb_url == url


def test_a_missing_url_is_named() -> None:
    env = {k: v for k, v in GOOD.items() if k != "CART_DB_URL"}

    with pytest.raises(SettingsError, match="CART_DB_URL is required but not set"):
        load_settings(env)


def test_every_bad_variable_is_reported_at_once() -> None:
    with pytest.raises(SettingsError) as error:
        load_settings({**GOOD, "SYNC_BATCH_SIZE": "x", "TIMEZONE": "Nowhere"})

    assert "SYNC_BATCH_SIZE='x'" in str(error.value) and "TIMEZONE='Nowhere'" in str(error.value)


def test_mask_secrets_hides_url_passwords_only() -> None:
    assert mask_secrets("see postgresql://u:p%40ss@h:1/db now") == "see postgresql://u:***@h:1/db now"
    assert mask_secrets("mongodb://h:27017/db") == "mongodb://h:27017/db"


def test_loading_the_code_location_with_a_bad_value_fails_naming_it_and_hiding_the_password(tmp_path) -> None:
    env = {
        **GOOD,
        "PATH": "/usr/bin:/bin",
        "DAGSTER_HOME": str(tmp_path),
        "SYNC_BATCH_SIZE": "abc",
        "CART_DB_URL": "ftp://cart:hunter2-secret@pg.internal/cart",
    }
    command = [DAGSTER, "job", "execute", "-m", "etl_defs", "-j", "product_sync_job"]

    result = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=120)

    assert result.returncode != 0
    assert "SettingsError: Invalid environment for the sync service" in result.stderr
    assert "SYNC_BATCH_SIZE='abc'" in result.stderr
    assert "CART_DB_URL='ftp://cart:***@pg.internal/cart' is not a PostgreSQL URL" in result.stderr
    assert "hunter2-secret" not in result.stderr + result.stdout
    assert not list(tmp_path.glob("storage/*")), "nothing ran, so nothing was stored"


def test_every_module_imports_with_an_empty_environment() -> None:
    """Importing reads no environment: only loading the code location does (`etl_defs.defs()`)."""
    script = (
        "import importlib, pkgutil\n"
        "for package in ('etl_defs', 'resources', 'local'):\n"
        "    for module in pkgutil.walk_packages(importlib.import_module(package).__path__, package + '.'):\n"
        "        importlib.import_module(module.name)\n"
        "import etl_defs.sync\n"
        "print(type(etl_defs.defs).__name__)\n"
    )

    result = subprocess.run(
        [sys.executable, "-c", script], env={}, cwd=REPO, capture_output=True, text=True, timeout=120
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "LazyDefinitions"


def test_the_fetch_sizes_reach_the_resources_and_default_to_the_batch() -> None:
    default = build_resources(load_settings(GOOD))
    assert default["product_db"].fetch_size is None and default["cart_db"].fetch_size is None
    tuned = build_resources(load_settings({**GOOD, "MONGODB_FETCH_SIZE": "5000", "POSTGRES_FETCH_SIZE": "2000"}))
    assert (tuned["product_db"].fetch_size, tuned["order_db"].fetch_size, tuned["cart_db"].fetch_size) == (
        5000,
        5000,
        2000,
    )


def test_reads_project_the_synced_fields_unless_told_to_read_whole_documents() -> None:
    default = build_resources(load_settings(GOOD))
    assert default["product_db"].project_fields and default["order_db"].project_fields
    whole = build_resources(load_settings({**GOOD, "MONGODB_PROJECT_FIELDS": "false"}))
    assert not whole["product_db"].project_fields and not whole["order_db"].project_fields


def test_the_mongodb_socket_timeout_reaches_both_mongodb_resources() -> None:
    default = build_resources(load_settings(GOOD))
    assert default["product_db"].socket_timeout_ms == default["order_db"].socket_timeout_ms == 120_000
    tuned = build_resources(load_settings({**GOOD, "MONGODB_SOCKET_TIMEOUT_MS": "600000"}))
    assert tuned["product_db"].socket_timeout_ms == tuned["order_db"].socket_timeout_ms == 600_000


def test_every_sync_job_carries_its_max_runtime_for_run_monitoring() -> None:
    for environ, expected in ((GOOD, "14400"), ({**GOOD, "SYNC_MAX_RUNTIME_SECONDS": "36000"}, "36000")):
        defs = build_definitions(load_settings(environ))
        for job in ("product_sync_job", "cart_sync_job", "full_sync_job"):
            assert defs.resolve_job_def(job).tags["dagster/max_runtime"] == expected, job
