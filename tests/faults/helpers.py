"""Helpers of the fault tests: their servers, a job run in a thread, faults injected mid-write,
what a failed run must say, and an orchestrator (the daemon and all it started) that crashes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg
import psycopg
from pymongo import MongoClient
from pymongo.database import Database

from local.dagster_dev import DAGSTER, REPO, group_alive, start_in_own_session
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
def write_held_mid_statement(faults: FaultStack, table: str, timeout: float = 30) -> Iterator[psycopg.Connection]:
    """Hold the sync's next write to `table` mid-statement, inside its transaction.

    A table lock in EXCLUSIVE mode lets reads go on but makes the next batch's write wait,
    so a fault injected now lands in the middle of a write, not between batches. The lock
    goes when the block ends (or with the server).
    """
    blocker = faults.cart_conn()
    blocker.autocommit = False
    try:
        blocker.execute(f"LOCK TABLE {table} IN EXCLUSIVE MODE")
        wait_until(
            "a batch's write waits on the lock", lambda: sync_sessions(faults, waiting_on_a_lock=True) == 1, timeout
        )
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


# ----- an orchestrator that crashes -----
#: Run statuses of a run that has not ended.
NOT_ENDED = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]


@dataclass
class Orchestrator:
    """`dagster-daemon run` on the repo's workspace.yaml and dagster.yaml, as a VM runs it, with an instance of
    its own: its code server and the run workers that starts are in the daemon's process group, so `crash()`
    kills them together, as a host restart, a restarted container or an OOM kill of the code server does."""

    home: Path
    env: dict[str, str]
    instance: dg.DagsterInstance
    _daemon: subprocess.Popen | None = None
    _logs: list[Path] = field(default_factory=list)

    def start(self) -> None:
        """A new daemon (and, once it loads the workspace, a new code server)."""
        log = self.home / f"daemon-{len(self._logs) + 1}.log"
        self._logs.append(log)
        self._daemon = start_in_own_session(
            [str(Path(DAGSTER).with_name("dagster-daemon")), "run", "-w", "workspace.yaml"], self.env, log
        )

    def crash(self) -> None:
        """SIGKILL the daemon and everything it started, and wait until none of them is left."""
        assert self._daemon is not None and self._daemon.poll() is None, "no daemon running"
        os.killpg(self._daemon.pid, signal.SIGKILL)
        self._daemon.wait(timeout=30)
        wait_until("every process the daemon started is gone", lambda: not group_alive(self._daemon.pid), 30)
        self._daemon = None

    def stop(self) -> None:
        if self._daemon is not None and self._daemon.poll() is None:
            self.crash()

    def log_tail(self) -> str:
        return "\n".join(f"== {log.name}\n{log.read_text(errors='replace')[-3000:]}" for log in self._logs)

    def launch(self, job: str, run_config: dict[str, Any] | None = None) -> str:
        """`dagster job launch`, as an operator queues a run from a terminal; returns the run's id."""
        before = {run.run_id for run in self.instance.get_runs(dg.RunsFilter(job_name=job))}
        args = [DAGSTER, "job", "launch", "-w", "workspace.yaml", "-j", job]
        if run_config is not None:
            config = self.home / f"run-config-{len(before)}.json"  # JSON is YAML
            config.write_text(json.dumps(run_config))
            args += ["-c", str(config)]
        done = subprocess.run(args, cwd=REPO, env=self.env, capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, done.stderr[-3000:]
        [run_id] = {run.run_id for run in self.instance.get_runs(dg.RunsFilter(job_name=job))} - before
        return run_id

    def status(self, run_id: str) -> dg.DagsterRunStatus:
        run = self.instance.get_run_by_id(run_id)
        assert run is not None
        return run.status

    def wait_for_status(self, run_id: str, *statuses: dg.DagsterRunStatus, timeout: float) -> float:
        """Wait until run `run_id` is in one of `statuses`; returns the seconds it took."""
        started = time.monotonic()
        deadline = started + timeout
        while self.status(run_id) not in statuses:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"run {run_id} is {self.status(run_id).value} after {timeout:.0f}s, not "
                    f"{' or '.join(s.value for s in statuses)}\n{self.log_tail()}"
                )
            time.sleep(0.2)
        return time.monotonic() - started

    def runs(self, job: str | None = None, **tags: str) -> list[dg.DagsterRun]:
        """The runs (of `job`, with `tags`), oldest first."""
        filters = dg.RunsFilter(job_name=job, tags=tags or {})
        return list(reversed(self.instance.get_runs(filters)))

    def wait_until_every_run_ended(self, timeout: float) -> None:
        wait_until(
            "every run ended", lambda: not self.instance.get_runs(dg.RunsFilter(statuses=NOT_ENDED)), timeout, 0.5
        )

    def sensor_ticks(self, name: str) -> int:
        """How many evaluations of sensor (or schedule) `name` the daemon finished."""
        for state in self.instance.all_instigator_state():
            if state.name == name:
                ticks = self.instance.get_ticks(state.instigator_origin_id, state.selector_id)
                return len([tick for tick in ticks if tick.status.value != "STARTED"])
        return 0

    def start_sensor(self, name: str) -> None:
        """`dagster sensor start`, as an operator turns a sensor on from a terminal."""
        args = [DAGSTER, "sensor", "start", "-w", "workspace.yaml", name]
        done = subprocess.run(args, cwd=REPO, env=self.env, capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, done.stderr[-3000:]

    def execute(self, job: str) -> subprocess.CompletedProcess:
        """`dagster job execute`, as an operator runs a sync in a terminal (in-process: no queue, no daemon)."""
        args = [DAGSTER, "job", "execute", "-m", "etl_defs", "-j", job]
        return subprocess.run(args, cwd=REPO, env=self.env, capture_output=True, text=True, timeout=300)
