"""Helpers every test package shares: the code location as Dagster loads it, rows copied into
the Cart DB, and the only imports of Dagster's private APIs in the tests.

Import `tests.session` first (it is imported here), so the environment is the session's.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import dagster as dg
import psycopg

# Dagster's private APIs, for what no public API does: a workspace loaded in-process (the
# scheduler's view of the code location) and the webserver's GraphQL without a webserver.
from dagster._core.test_utils import in_process_test_workspace
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
from dagster._core.workspace.context import WorkspaceProcessContext
from dagster._core.workspace.load_target import EmptyWorkspaceTarget
from pymongo import monitoring

import etl_defs
from etl_defs.carts.endpoints import CART_COLUMNS, CART_TABLE
from etl_defs.products.table import PRODUCT_COLUMNS, PRODUCT_TABLE
from etl_defs.settings import load_settings
from resources.postgres import copy_rows
from tests.session import SERVICE_ENV  # noqa: F401 - sets the session's environment before the code location loads

__all__ = [
    "EmptyWorkspaceTarget",
    "LoadableTargetOrigin",
    "MongoCommand",
    "WorkspaceProcessContext",
    "copy_carts",
    "copy_products",
    "defs",
    "in_process_test_workspace",
    "mongo_commands",
    "settings",
    "wait_until",
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


def wait_until(what: str, condition: Callable[[], bool], timeout: float = 30, every: float = 0.05) -> None:
    """Poll `condition` until it holds; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting until {what}")
