"""Helpers every test package shares: the test secrets, handles on the service databases, rows copied into
the Cart DB, MongoDB command monitoring, and the only imports of Dagster's private APIs in the tests.

Importing it starts nothing and reads no environment: the servers, the environment and the code location
are fixtures of tests/conftest.py.
"""

from __future__ import annotations

import http.server
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bson
import dagster as dg
import psycopg
import yaml

# Dagster's private APIs, for what no public API does: a workspace loaded in-process (the
# scheduler's view of the code location), the webserver's GraphQL without a webserver, and one
# pass of the run monitoring daemon.
from dagster._core.test_utils import in_process_test_workspace
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
from dagster._core.workspace.context import WorkspaceProcessContext
from dagster._core.workspace.load_target import EmptyWorkspaceTarget
from dagster._daemon.monitoring.run_monitoring import monitor_started_run as _monitor_started_run
from pymongo import MongoClient, monitoring
from pymongo.database import Database

from etl_defs.carts.table import CART_COLUMNS, CART_TABLE
from etl_defs.products.table import PRODUCT_COLUMNS, PRODUCT_TABLE, SELECT_PRODUCTS_SQL
from local.stack import CART_DB, ORDER_DB, PRODUCT_DB, LocalStack
from resources.postgres import copy_rows

__all__ = [
    "KEYED_RUN_S",
    "LAUNCH_DEADLINE_S",
    "MAX_CONCURRENT_RUNS",
    "MONGO_TEST_PASSWORD",
    "MONGO_TEST_USER",
    "MONITORING_POLL_S",
    "PG_TEST_PASSWORD",
    "REPO",
    "RUN_RETRIES",
    "RUN_START_S",
    "TEST_SECRETS",
    "Databases",
    "EmptyWorkspaceTarget",
    "LoadableTargetOrigin",
    "MongoCommand",
    "MongoCommandLog",
    "RecordMongoCommands",
    "WebhookReceiver",
    "WorkspaceProcessContext",
    "copy_carts",
    "copy_products",
    "in_process_test_workspace",
    "monitor_started_run",
    "run_failure_message",
    "wait_until",
    "yaml_strings",
]

REPO = Path(__file__).resolve().parent.parent

# The bounds of Dagster's run monitoring, from dagster.yaml as the daemon reads them: the tests that wait on a run
# derive their deadlines from these, not from what a fast machine takes.
_INSTANCE = yaml.safe_load((REPO / "dagster.yaml").read_text())
_RUN_MONITORING = _INSTANCE["run_monitoring"]
#: How many times Dagster's run retries launch a failed run again (`run_retries.max_retries`).
RUN_RETRIES: int = _INSTANCE["run_retries"]["max_retries"]
#: How often run monitoring looks at the runs (`poll_interval_seconds`).
MONITORING_POLL_S: int = _RUN_MONITORING["poll_interval_seconds"]
#: A launched run reports STARTED within `start_timeout_seconds`, or run monitoring fails it on its next pass:
#: waiting longer for a run to start would learn nothing.
RUN_START_S: int = _RUN_MONITORING["start_timeout_seconds"] + MONITORING_POLL_S
#: How long the daemon waits for the code server to launch a run (local/stack.py gives the daemon dagster.yaml's
#: start timeout as DAGSTER_GRPC_TIMEOUT_SECONDS); Dagster's run queue launches one run at a time.
LAUNCH_DEADLINE_S: int = _RUN_MONITORING["start_timeout_seconds"]
#: How many runs the queue lets run at once (`concurrency.runs.max_concurrent_runs`).
MAX_CONCURRENT_RUNS: int = _INSTANCE["concurrency"]["runs"]["max_concurrent_runs"]
#: A hang detector for a keyed repair run of a few keys, from STARTED to its end (such a run takes about a second
#: here): not a product bound.
KEYED_RUN_S = 60

#: Recognisable secrets: the whole suite runs with them, and the secret-scan tests look for
#: them everywhere (PostgreSQL's inside the Cart DB URL, MongoDB's in MONGO_PASSWORD).
PG_TEST_PASSWORD = "pg-Secret-7f3a9c"
MONGO_TEST_USER = "sync-user"
MONGO_TEST_PASSWORD = "mongo-Secret-4e8d21"
TEST_SECRETS = (PG_TEST_PASSWORD, MONGO_TEST_PASSWORD)


@dataclass
class Databases:
    """Handles on the three service databases, emptied for each test."""

    stack: LocalStack
    mongo: MongoClient

    @property
    def product_db(self) -> Database:
        return self.mongo[PRODUCT_DB]

    @property
    def order_db(self) -> Database:
        return self.mongo[ORDER_DB]

    def cart_conn(self) -> psycopg.Connection:
        """A new autocommit connection to the Cart DB (close it, or use `with`)."""
        return psycopg.connect(self.stack.pg_url(CART_DB), autocommit=True)

    def product_rows(self) -> dict[str, tuple]:
        with self.cart_conn() as conn:
            rows = conn.execute(SELECT_PRODUCTS_SQL).fetchall()
        return {row[0]: tuple(row) for row in rows}


def copy_products(conn: psycopg.Connection, rows: Iterable[Sequence[Any]]) -> None:
    """COPY `rows` (tuples in `product` column order) into the Cart DB's `product` table."""
    copy_rows(conn, PRODUCT_TABLE, PRODUCT_COLUMNS, rows)


def copy_carts(conn: psycopg.Connection, rows: Iterable[Sequence[Any]]) -> None:
    """COPY `rows` (tuples in `cart` column order) into the Cart DB's `cart` table."""
    copy_rows(conn, CART_TABLE, CART_COLUMNS, rows)


@dataclass(frozen=True)
class MongoCommand:
    """One command a client of this process sent, with the documents its reply returned."""

    name: str
    body: dict[str, Any]
    returned: int = 0


#: What the `mongo_commands` fixture gives: `with mongo_commands() as commands:` records what the block sends.
RecordMongoCommands = Callable[[], AbstractContextManager[list[MongoCommand]]]


class MongoCommandLog(monitoring.CommandListener):
    """pymongo's command monitoring (the `mongo_commands` fixture registers one), kept only inside `recording()`."""

    def __init__(self) -> None:
        self._recorded: list[MongoCommand] | None = None
        self._bodies: dict[int, tuple[str, dict[str, Any]]] = {}

    @contextmanager
    def recording(self) -> Iterator[list[MongoCommand]]:
        """The MongoDB commands this process sends inside the block."""
        self._recorded = recorded = []
        try:
            yield recorded
        finally:
            self._recorded = None

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if self._recorded is not None:
            self._bodies[event.request_id] = (event.command_name, dict(event.command))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        if self._recorded is None or event.request_id not in self._bodies:
            return
        name, body = self._bodies.pop(event.request_id)
        cursor = event.reply.get("cursor", {})
        batch = cursor.get("firstBatch", cursor.get("nextBatch", []))
        # A raw-batch cursor's reply holds the batch as one BSON byte string: count its documents.
        returned = sum(len(bson.decode_all(item)) if isinstance(item, bytes) else 1 for item in batch)
        self._recorded.append(MongoCommand(name, body, returned))

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        self._bodies.pop(event.request_id, None)


def yaml_strings(value: Any) -> Iterator[str]:
    """Every string (keys and values) anywhere inside a YAML value: what a secret scan of a manifest reads."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield str(key)
            yield from yaml_strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from yaml_strings(item)


def wait_until(what: str, condition: Callable[[], bool], timeout: float = 30, every: float = 0.05) -> None:
    """Poll `condition` until it holds; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting until {what}")


def monitor_started_run(instance: dg.DagsterInstance, run_id: str) -> None:
    """One pass of Dagster's run monitoring daemon over a STARTED run: it asks the instance's run launcher
    whether the run's worker lives, and fails the run when it does not."""
    record = instance.get_run_record_by_id(run_id)
    assert record is not None and record.dagster_run.status == dg.DagsterRunStatus.STARTED
    _monitor_started_run(instance, None, record, logging.getLogger("run_monitoring"))  # no workspace: nothing resumes


def run_failure_message(instance: dg.DagsterInstance, run_id: str) -> str:
    """The message of a run's RUN_FAILURE event (what the UI shows on the run)."""
    [record] = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.RUN_FAILURE).records
    event = record.event_log_entry.dagster_event
    assert event is not None and event.message is not None
    return event.message


class WebhookReceiver:
    """An HTTP server on loopback that takes alert POSTs as a Slack-style webhook does; it answers the first
    `fail_first` of them with HTTP 500 (a webhook having a bad moment), then 200."""

    #: The part of its URL that is a secret, as a Slack webhook's path is: no alert may carry it.
    SECRET_PATH = "/services/T0ETLSYNC/B0ALERTS/hook-Secret-9b1e77"

    def __init__(self, fail_first: int = 0) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.attempts = 0
        self.fail_first = fail_first
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                data = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.attempts += 1
                ok = self.path == receiver.SECRET_PATH and receiver.attempts > receiver.fail_first
                if ok:
                    receiver.bodies.append(json.loads(data))
                self.send_response(200 if ok else 500)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}{self.SECRET_PATH}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def alerts(self, incident: str, status: str = "firing") -> list[dict[str, Any]]:
        return [body for body in self.bodies if body["incident"] == incident and body["status"] == status]

    def wait_for(self, incident: str, status: str = "firing", timeout: float = 120) -> dict[str, Any]:
        """The first alert of `incident` with `status`, once it arrived."""
        wait_until(f"a {status} alert of {incident}", lambda: bool(self.alerts(incident, status)), timeout, 0.5)
        return self.alerts(incident, status)[0]
