"""Fixtures of the fault tests: servers of their own, which the tests stop and start mid-run.

The session stack of `tests/conftest.py` is never touched here. `main` is a full
`LocalStack` (PostgreSQL with the Cart and Dagster databases, SecantusDB with the Product
database); `order` is a second `LocalStack` of which only SecantusDB is started, so that
"the Order MongoDB stopped" and "the Product MongoDB stopped" are different faults.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dagster as dg
import psycopg
import pytest

from etl_defs.settings import SyncSettings
from local.stack import LocalStack, free_port
from tests.faults.helpers import CDC_INTERVAL_S, FaultStack, JobInThread, Orchestrator, StartJob
from tests.helpers import MONGO_TEST_PASSWORD, MONGO_TEST_USER, PG_TEST_PASSWORD, REPO, WebhookReceiver


@pytest.fixture(scope="package")
def fault_stack() -> Iterator[FaultStack]:
    """Servers for this package only, on free ports, removed at the end."""
    main_dir = Path(tempfile.mkdtemp(prefix="etl-sync-faults-"))
    order_dir = Path(tempfile.mkdtemp(prefix="etl-sync-faults-order-"))
    # The same credentials as the session stack: the `defs` fixture bound MONGO_USER and
    # MONGO_PASSWORD when it was loaded with them set.
    credentials = {
        "pg_password": PG_TEST_PASSWORD,
        "mongo_user": MONGO_TEST_USER,
        "mongo_password": MONGO_TEST_PASSWORD,
    }
    stack = FaultStack(
        main=LocalStack(main_dir, mongo_port=free_port(), pg_port=free_port(), **credentials),
        # Only this stack's SecantusDB is started: its PostgreSQL port is never used.
        order=LocalStack(order_dir, mongo_port=free_port(), pg_port=free_port(), **credentials),
    )
    try:
        stack.main.up()
        stack.order.start_mongo()
        yield stack
    finally:
        stack.down()
        shutil.rmtree(main_dir, ignore_errors=True)
        shutil.rmtree(order_dir, ignore_errors=True)


@pytest.fixture()
def faults(fault_stack: FaultStack, service_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> FaultStack:
    """The fault stack, running and empty, with the service's variables pointing at it (the session's others)."""
    fault_stack.ensure_up()
    for name, value in fault_stack.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("CART_DB_WRITE_URL", raising=False)
    fault_stack.reset()
    return fault_stack


@pytest.fixture()
def start_job(faults: FaultStack, defs: dg.Definitions, instance: dg.DagsterInstance) -> Iterator[StartJob]:
    """Start jobs in background threads; at teardown, bring the servers back and let the runs end."""
    started: list[JobInThread] = []

    def start(job_name: str, run_config: dict[str, Any]) -> JobInThread:
        job = JobInThread(defs.resolve_job_def(job_name), run_config, instance)
        started.append(job)
        return job

    yield start
    faults.ensure_up()
    for job in started:
        job.result(timeout=120)


@pytest.fixture()
def short_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same retries with 0.25s base backoff instead of 2s, for faults that outlast them all."""
    monkeypatch.setattr("etl_defs.steps.retries.RETRY_BASE_DELAY_S", 0.25)


@pytest.fixture()
def no_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """No retries, for a MongoDB that stays down: each attempt would wait its 5s server
    selection timeout for nothing (the PostgreSQL tests go through every retry)."""
    monkeypatch.setattr("etl_defs.steps.retries.MAX_CONNECTION_RETRIES", 0)


#: Never, in practice: the schedules and the health check run (ENABLE_SCHEDULER) but do not tick during a test.
_NEVER = "0 0 29 2 *"


@contextmanager
def daemon_host(
    faults: FaultStack,
    settings: SyncSettings,
    instance_server: LocalStack,
    home: Path,
    monkeypatch: pytest.MonkeyPatch,
    **variables: str,
) -> Iterator[Orchestrator]:
    """An Orchestrator with DAGSTER_HOME at `home` (the repo's dagster.yaml: run monitoring, run retries, the
    queue's limits), an instance database of its own on `instance_server`'s PostgreSQL, and `variables` set.
    The daemon is not started yet."""
    database = f"dagster_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(instance_server.pg_url("postgres"), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {database}")
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    variables = {
        "DAGSTER_HOME": str(home),
        "DAGSTER_PG_URL": instance_server.pg_url(database, scheme="postgresql+psycopg2"),
        **variables,
    }
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    instance = dg.DagsterInstance.get()  # creates the instance's tables before any process shares them
    orchestrator = Orchestrator(home=home, env=dict(os.environ), instance=instance)
    try:
        yield orchestrator
    finally:
        orchestrator.stop()
        instance.dispose()
        faults.ensure_up()
        with faults.cart_conn() as conn:
            conn.execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = %s",
                (settings.cart_cdc_slot,),
            )
        with psycopg.connect(instance_server.pg_url("postgres"), autocommit=True) as conn:
            conn.execute(f"DROP DATABASE {database} WITH (FORCE)")


@pytest.fixture()
def orchestrator(
    faults: FaultStack, settings: SyncSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Orchestrator]:
    """A daemon host for one test, its instance on the fault stack's PostgreSQL, with the change sensors
    running every 5 s, as in production."""
    with daemon_host(
        faults,
        settings,
        faults.main,
        tmp_path / "dagster_home",
        monkeypatch,
        ENABLE_SCHEDULER="true",  # the change sensors start with the daemon, as in production
        SYNC_CRON_SCHEDULE=_NEVER,
        CART_SYNC_CRON_SCHEDULE=_NEVER,
        HEALTH_CHECK_CRON_SCHEDULE=_NEVER,
        PRODUCT_CDC_INTERVAL_SECONDS=str(CDC_INTERVAL_S),
        CART_CDC_INTERVAL_SECONDS=str(CDC_INTERVAL_S),
    ) as host:
        yield host


@pytest.fixture()
def webhook() -> Iterator[WebhookReceiver]:
    """The alert webhook, on loopback; its first answer is an HTTP 500."""
    receiver = WebhookReceiver(fail_first=1)
    yield receiver
    receiver.close()


@pytest.fixture()
def alerting_orchestrator(
    faults: FaultStack,
    settings: SyncSettings,
    stack: LocalStack,
    webhook: WebhookReceiver,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Orchestrator]:
    """A daemon host whose alerts go to `webhook`, its instance on the session stack's PostgreSQL (so that the
    fault stack's, the Cart DB, can be stopped). Schedules off; the product sync's cron every minute, so that
    cart_db/product is overdue 2 minutes after its last sync."""
    with daemon_host(
        faults,
        settings,
        stack,
        tmp_path / "dagster_home",
        monkeypatch,
        ALERT_WEBHOOK_URL=webhook.url,
        DAGSTER_UI_URL="http://dagster-admin.example.internal",
        ENABLE_SCHEDULER="false",
        SYNC_CRON_SCHEDULE="* * * * *",
        CART_SYNC_CRON_SCHEDULE="0 * * * *",
        CART_CDC_INTERVAL_SECONDS=str(CDC_INTERVAL_S),
        FRESHNESS_DAEMON_INTERVAL_SECONDS="5",
    ) as host:
        yield host
