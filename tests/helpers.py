"""Helpers every test package shares: the code location as Dagster loads it, rows copied into
the Cart DB, and the only imports of Dagster's private APIs in the tests.

Import `tests.session` first (it is imported here), so the environment is the session's.
"""

from __future__ import annotations

import http.server
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import dagster as dg
import psycopg

# Dagster's private APIs, for what no public API does: a workspace loaded in-process (the
# scheduler's view of the code location), the webserver's GraphQL without a webserver, and one
# pass of the run monitoring daemon.
from dagster._core.test_utils import in_process_test_workspace
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
from dagster._core.workspace.context import WorkspaceProcessContext
from dagster._core.workspace.load_target import EmptyWorkspaceTarget
from dagster._daemon.monitoring.run_monitoring import monitor_started_run as _monitor_started_run
from pymongo import monitoring

import etl_defs
from etl_defs.carts.table import CART_COLUMNS, CART_TABLE
from etl_defs.products.table import PRODUCT_COLUMNS, PRODUCT_TABLE
from etl_defs.settings import load_settings
from resources.postgres import copy_rows
from tests.session import SERVICE_ENV  # noqa: F401 - sets the session's environment before the code location loads

__all__ = [
    "EmptyWorkspaceTarget",
    "LoadableTargetOrigin",
    "MongoCommand",
    "WebhookReceiver",
    "WorkspaceProcessContext",
    "copy_carts",
    "copy_products",
    "defs",
    "in_process_test_workspace",
    "mongo_commands",
    "monitor_started_run",
    "run_failure_message",
    "settings",
    "wait_until",
    "yaml_strings",
]

#: The code location, built as `dagster` loads it, in the session's environment.
defs: dg.Definitions = etl_defs.defs()
settings = load_settings()


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


class _CommandLog(monitoring.CommandListener):
    """pymongo's command monitoring, kept only while `mongo_commands()` records."""

    def __init__(self) -> None:
        self.recording: list[MongoCommand] | None = None
        self._bodies: dict[int, tuple[str, dict[str, Any]]] = {}

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if self.recording is not None:
            self._bodies[event.request_id] = (event.command_name, dict(event.command))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        if self.recording is None or event.request_id not in self._bodies:
            return
        name, body = self._bodies.pop(event.request_id)
        cursor = event.reply.get("cursor", {})
        returned = len(cursor.get("firstBatch", cursor.get("nextBatch", [])))
        self.recording.append(MongoCommand(name, body, returned))

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        self._bodies.pop(event.request_id, None)


_COMMAND_LOG = _CommandLog()
# Applies to every MongoClient created from here on, the jobs' resources included.
monitoring.register(_COMMAND_LOG)


@contextmanager
def mongo_commands() -> Iterator[list[MongoCommand]]:
    """The MongoDB commands this process sends inside the block (clients created after this module loaded)."""
    _COMMAND_LOG.recording = recorded = []
    try:
        yield recorded
    finally:
        _COMMAND_LOG.recording = None


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
