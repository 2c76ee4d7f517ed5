"""Helpers of the fault tests: their servers, a job run in a thread, faults injected mid-write,
and what a failed run must say."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import dagster as dg
import psycopg
from pymongo import MongoClient
from pymongo.database import Database

from local.schema import create_cart_schema, create_order_indexes
from local.stack import CART_DB, ORDER_DB, PRODUCT_DB, LocalStack
from tests.helpers import defs, wait_until
from tests.session import TEST_SECRETS


@dataclass
class FaultStack:
    """The fault tests' servers, and handles on the three service databases."""

    main: LocalStack
    order: LocalStack
    _clients: dict[str, MongoClient] = field(default_factory=dict)

    def env(self) -> dict[str, str]:
        """The service's variables pointing at these servers (both MongoDBs take one user)."""
        return {**self.main.env(), "ORDER_SERVICE_MONGODB_URL": self.order.mongo_url(ORDER_DB)}

    # ----- servers -----
    def ensure_up(self) -> None:
        """Start whatever a test left stopped."""
        self.main.up()  # starts only what is not running
        if not self.order.status()["mongodb"].endswith("running"):
            self.order.start_mongo()

    def down(self) -> None:
        for client in self._clients.values():
            client.close()
        self.order.down()
        self.main.down()

    # ----- data -----
    def _client(self, stack: LocalStack) -> MongoClient:
        url = stack.mongo_url("admin")
        if url not in self._clients:
            self._clients[url] = stack.mongo_client(serverSelectionTimeoutMS=20_000, tz_aware=True)
        return self._clients[url]

    @property
    def product_db(self) -> Database:
        return self._client(self.main)[PRODUCT_DB]

    @property
    def order_db(self) -> Database:
        return self._client(self.order)[ORDER_DB]

    def cart_conn(self, connect_timeout: int = 10) -> psycopg.Connection:
        """A new autocommit connection to the Cart DB (close it, or use `with`)."""
        return psycopg.connect(self.main.pg_url(CART_DB), autocommit=True, connect_timeout=connect_timeout)

    def reset(self) -> None:
        """Empty service databases with the Cart schema and the Order indexes."""
        self.product_db["products"].drop()
        self.order_db["carts"].drop()
        create_order_indexes(self.order_db)
        with self.cart_conn() as conn:
            create_cart_schema(conn)
            conn.execute("TRUNCATE cart, product")


# ----- running a job while a test breaks things -----
class JobInThread:
    """`execute_in_process` of one job in a background thread; `result()` waits for it."""

    def __init__(self, job_name: str, run_config: dict[str, Any], instance: dg.DagsterInstance) -> None:
        self._job = defs.resolve_job_def(job_name)
        self._run_config = run_config
        self._instance = instance
        self._result: dg.ExecuteInProcessResult | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"run-{job_name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._result = self._job.execute_in_process(
                run_config=self._run_config, instance=self._instance, raise_on_error=False
            )
        except BaseException as error:  # noqa: BLE001 - handed to the test thread
            self._error = error

    def result(self, timeout: float = 90) -> dg.ExecuteInProcessResult:
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise AssertionError(f"the run did not end within {timeout}s")
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result


StartJob = Callable[[str, dict[str, Any]], JobInThread]


# ----- faults on the Cart PostgreSQL -----
def sync_sessions(faults: FaultStack, *, waiting_on_a_lock: bool = False) -> int:
    """How many sessions the sync holds on the Cart DB (optionally: blocked on a lock)."""
    query = "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'etl-sync'"
    if waiting_on_a_lock:
        query += " AND wait_event_type = 'Lock'"
    with faults.cart_conn() as conn:
        return conn.execute(query).fetchone()[0]


@contextmanager
def write_held_mid_statement(faults: FaultStack, table: str) -> Iterator[psycopg.Connection]:
    """Hold the sync's next write to `table` mid-statement, inside its transaction.

    A table lock in EXCLUSIVE mode lets reads go on but makes the next batch's write wait,
    so a fault injected now lands in the middle of a write, not between batches. The lock
    goes when the block ends (or with the server).
    """
    blocker = faults.cart_conn()
    blocker.autocommit = False
    try:
        blocker.execute(f"LOCK TABLE {table} IN EXCLUSIVE MODE")
        wait_until("a batch's write waits on the lock", lambda: sync_sessions(faults, waiting_on_a_lock=True) == 1)
        yield blocker
    finally:
        with suppress(psycopg.Error):
            blocker.rollback()
        with suppress(psycopg.Error):
            blocker.close()


# ----- what a failed run says -----
def step_failure_message(result: dg.ExecuteInProcessResult, step: str) -> str:
    """The message a step's failure shows first (the UI's and the CLI's headline).

    The whole error, stack and causes included, must hold no secret and no frame of a
    database driver: what the operator reads is ours.
    """
    failure = result.failure_data_for_node(step)
    assert failure is not None, f"{step} did not fail"
    everything = failure.error.to_string()
    for secret in TEST_SECRETS:
        assert secret not in everything, "a secret leaked into the error"
    for driver in ("site-packages/psycopg", "site-packages/pymongo", "site-packages/sqlalchemy"):
        assert driver not in everything, f"the error shows {driver} internals:\n{everything}"
    return failure.error.message


def assert_names_the_database(message: str, database: str) -> None:
    """The failure's headline names the database (label and address)."""
    assert database in message, message


def retries(result: dg.ExecuteInProcessResult, step: str) -> int:
    """How often `step` was retried, checked against its restarts."""
    asked = [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY" and e.step_key == step]
    restarted = [e for e in result.all_events if e.event_type_value == "STEP_RESTARTED" and e.step_key == step]
    assert len(restarted) == len(asked)
    return len(asked)
