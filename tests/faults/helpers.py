"""Helpers of the fault tests: their servers, planted drift with every row's before and expected value, a job
run in a thread, faults injected mid-write, what a failed run must say, and an orchestrator (the daemon and all
it started) that crashes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path
from typing import Any

import dagster as dg
import psycopg
from bson import ObjectId
from pymongo import MongoClient
from pymongo.database import Database

from etl_defs.products.table import SELECT_PRODUCTS_SQL
from local.dagster_dev import DAGSTER, REPO, group_alive, start_in_own_session
from local.schema import create_cart_schema, create_order_indexes
from local.stack import CART_DB, ORDER_DB, PRODUCT_DB, LocalStack
from tests.factories import expected_row, product_doc
from tests.helpers import (
    KEYED_RUN_S,
    LAUNCH_DEADLINE_S,
    MAX_CONCURRENT_RUNS,
    MONITORING_POLL_S,
    RUN_RETRIES,
    RUN_START_S,
    TEST_SECRETS,
    copy_carts,
    copy_products,
    run_failure_message,
    wait_until,
)


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


# ----- planted drift: every key's value before the run and after a converged one -----
# A scenario knows, for every key, the target's value before the run (`before`, absent when
# missing) and the value it must have after a converged run (`expected`). `whole_batches`
# reads the target mid-way and proves that each batch of the plan is either fully applied
# or not at all, in order.
#: Order `carts` fields the cart sync owns (all but `_id`, `createdAt`, `updatedAt`).
CART_FIELDS = (
    "cartId",
    "userId",
    "productId",
    "productTitle",
    "productPrice",
    "productImage",
    "sellerId",
    "productQuantity",
    "cartQuantity",
    "total",
    "version",
)


#: `createdAt`/`updatedAt` of planted Order documents: anything the sync writes is later.
PLANTED_AT = datetime(2024, 1, 1, tzinfo=UTC)


@dataclass
class Drift:
    """Before and expected values of every key of one target, in the plan's key order."""

    before: dict[str, Any]
    expected: dict[str, Any]
    #: Keys whose target value is already right (the run must leave them untouched).
    correct: set[str] = field(default_factory=set)
    #: Keys only the target holds: a plan takes them beside its source rows, outside its `batch_size`.
    orphans: set[str] = field(default_factory=set)

    @property
    def keys(self) -> list[str]:
        """Every key the merge classifies (source and target), in byte order."""
        return sorted(self.before.keys() | self.expected.keys())

    @property
    def to_repair(self) -> set[str]:
        return {k for k in self.expected if self.before.get(k) != self.expected[k]}

    def plans(self, batch_size: int) -> list[list[str]]:
        """The keys of each plan the sync makes, cut as `plan_batches` cuts them: `batch_size` source rows a
        plan, with the target records of its key interval (orphans between two plans go with the later one;
        those after the last source row with the last plan)."""
        plans: list[list[str]] = [[]]
        rows = 0
        for key in self.keys:
            if rows == batch_size:
                plans.append([])
                rows = 0
            plans[-1].append(key)
            rows += key not in self.orphans
        if len(plans) > 1 and self.orphans.issuperset(plans[-1]):
            plans[-2].extend(plans.pop())
        for plan in plans:  # past this, `plan_batches` would cut the plan at its batch_size-th target record
            assert sum(key in self.before for key in plan) <= batch_size, "a plan of more target records than rows"
        return plans

    def whole_batches(self, current: dict[str, Any], batch_size: int, *, frontier_may_be_partial: bool = False) -> int:
        """How many of the sync's batches (`plans`) `current` shows applied; fails unless they are whole and a
        prefix.

        Every key must hold its `before` or its `expected` value, nothing else. With
        `frontier_may_be_partial` the first batch not fully applied may be partly applied
        (the cart sync writes a batch to the Order MongoDB in bulk writes that are not atomic;
        its guarded writes make the replay harmless).
        """
        stray = [k for k in self.keys if current.get(k) not in (self.before.get(k), self.expected.get(k))]
        assert not stray, f"{len(stray)} keys hold neither their old nor their expected value, e.g. {stray[:3]}"
        batches = self.plans(batch_size)
        repair = self.to_repair
        applied: list[bool | None] = []  # None: the batch has nothing to write
        for number, batch in enumerate(batches, 1):
            done = [k for k in batch if current.get(k) == self.expected.get(k)]
            untouched = [k for k in batch if current.get(k) == self.before.get(k)]
            if not repair.intersection(batch):
                assert len(done) == len(batch), f"batch {number} had nothing to write, yet changed"
                applied.append(None)
            elif len(done) == len(batch):
                applied.append(True)
            elif len(untouched) == len(batch):
                applied.append(False)
            elif frontier_may_be_partial and False not in applied:
                applied.append(False)  # the frontier: partly applied
            else:
                half = [k for k in batch if k not in done]
                raise AssertionError(
                    f"batch {number} of {len(batches)} is half-written: {len(batch) - len(half)} of "
                    f"{len(batch)} keys applied, e.g. not {half[:3]}"
                )
        count = applied.index(False) if False in applied else len(applied)
        assert True not in applied[count:], f"batches applied out of order: {applied}"
        return count

    def batches(self, batch_size: int) -> int:
        """How many batches the plan has."""
        return len(self.plans(batch_size))


def product_drift(product_db: Any, cart_conn: Any, count: int) -> Drift:
    """`count` products; in the Cart DB a third missing, a third stale, a third right, plus orphans.

    Every batch of any size >= 3 has something to write, so a half-written batch shows.
    """
    docs = [product_doc() for _ in range(count)]
    product_db["products"].insert_many(docs)
    expected = {str(d["_id"]): expected_row(d) for d in docs}
    before: dict[str, tuple] = {}
    correct, orphans = set(), set()
    for i, (key, row) in enumerate(sorted(expected.items())):
        match i % 3:
            case 0:
                pass  # missing
            case 1:
                before[key] = (row[0], row[1] + " (old)", row[2] + 7, *row[3:]) if i % 2 else (*row[:5], row[5] + 1)
            case 2:
                before[key] = row
                correct.add(key)
    for n in range(5):
        orphan = (str(ObjectId()), f"gone {n}", 500 + n, f"/img/gone-{n}.jpg", str(ObjectId()), n)
        before[orphan[0]] = expected[orphan[0]] = orphan  # counted, never deleted
        correct.add(orphan[0])
        orphans.add(orphan[0])
    copy_products(cart_conn, before.values())
    return Drift(before=before, expected=expected, correct=correct, orphans=orphans)


def product_rows(cart_conn: Any) -> dict[str, tuple]:
    return {row[0]: tuple(row) for row in cart_conn.execute(SELECT_PRODUCTS_SQL)}


def duplicate_product_ids(cart_conn: Any) -> list[tuple]:
    return cart_conn.execute("SELECT id, count(*) FROM product GROUP BY id HAVING count(*) > 1").fetchall()


def product_xmins(cart_conn: Any, keys: set[str]) -> dict[str, str]:
    """Row versions (`xmin`): unchanged exactly when the row was not written."""
    rows = cart_conn.execute("SELECT id, xmin::text FROM product WHERE id = ANY(%s)", (sorted(keys),))
    return dict(rows.fetchall())


@dataclass
class ProductScenario:
    """Product drift planted on the fault stack, and the checks every product fault ends with."""

    faults: FaultStack
    drift: Drift
    batch_size: int
    xmins: dict[str, str]  # of the rows that were right before

    @classmethod
    def plant(cls, faults: FaultStack, count: int, batch_size: int) -> ProductScenario:
        with faults.cart_conn() as conn:
            drift = product_drift(faults.product_db, conn, count)
            return cls(faults, drift, batch_size, product_xmins(conn, drift.correct))

    def applied_batches(self) -> int:
        """Batches written so far (each whole, in order: `Drift.whole_batches` fails otherwise)."""
        with self.faults.cart_conn() as conn:
            return self.drift.whole_batches(product_rows(conn), self.batch_size)

    def assert_stopped_part_way(self, at_least: int) -> int:
        applied = self.applied_batches()
        assert at_least <= applied < self.drift.batches(self.batch_size)
        return applied

    def assert_converged(self) -> None:
        """Every row as expected, no duplicate key, and rows that were right never rewritten."""
        with self.faults.cart_conn() as conn:
            assert product_rows(conn) == self.drift.expected
            assert duplicate_product_ids(conn) == []
            assert product_xmins(conn, self.drift.correct) == self.xmins


def cart_drift(cart_conn: Any, order_db: Any, carts: int, products: int) -> Drift:
    """`carts` carts over `products` products; in the Order DB a fifth each missing, outdated,
    changed at the same version, right, and newer than the Cart DB; plus orphans.

    Values are the Order document's synced fields as a tuple (`CART_FIELDS` order).
    """
    product_rows = [
        (str(ObjectId()), f"Product {n}", 150 + n, f"/img/{n}.jpg", str(ObjectId()), n % 7) for n in range(products)
    ]
    cart_rows = [
        (str(uuid.uuid4()), 1 + n % 4, f"user-{n % 50}", 1 + n % 3, product_rows[n % products][0]) for n in range(carts)
    ]
    copy_products(cart_conn, product_rows)
    copy_carts(cart_conn, cart_rows)
    by_id = {row[0]: row for row in product_rows}

    def doc(cart: tuple) -> tuple:
        """The Order document's synced fields for a cart, written out by hand."""
        cart_id, quantity, user, version, product_id = cart
        _, title, price, image, seller, stock = by_id[product_id]
        return (cart_id, user, product_id, title, price, image, seller, stock, quantity, price * quantity, version)

    before: dict[str, tuple] = {}
    expected: dict[str, tuple] = {}
    correct: set[str] = set()
    orphans: set[str] = set()
    for i, cart in enumerate(sorted(cart_rows)):
        key, right = cart[0], doc(cart)
        expected[key] = right
        match i % 5:
            case 0:
                pass  # missing
            case 1:  # outdated: an older version with other figures
                before[key] = (*right[:8], right[8] + 1, right[4] * (right[8] + 1), right[10] - 1)
            case 2:  # changed: same version, the product's old price
                before[key] = (*right[:4], right[4] - 1, *right[5:9], (right[4] - 1) * right[8], right[10])
            case 3:
                before[key] = right
                correct.add(key)
            case 4:  # newer in the Order DB: never touched
                before[key] = expected[key] = (*right[:8], right[8] + 2, right[4] * (right[8] + 2), right[10] + 1)
                correct.add(key)
    for _n in range(5):  # orphans: counted, not deleted (no pruning)
        key = str(uuid.uuid4())
        before[key] = expected[key] = (
            key,
            "user-gone",
            str(ObjectId()),
            "gone",
            500,
            "/img/gone.jpg",
            str(ObjectId()),
            1,
            1,
            500,
            1,
        )
        correct.add(key)
        orphans.add(key)
    order_db["carts"].insert_many(
        [
            {**dict(zip(CART_FIELDS, value, strict=True)), "createdAt": PLANTED_AT, "updatedAt": PLANTED_AT}
            for value in before.values()
        ]
    )
    return Drift(before=before, expected=expected, correct=correct, orphans=orphans)


def order_carts(order_db: Any) -> dict[str, tuple]:
    """Synced fields of every Order cart by cartId (a duplicate cartId would show in the count)."""
    return {doc["cartId"]: tuple(doc.get(f) for f in CART_FIELDS) for doc in order_db["carts"].find({}, {"_id": 0})}


def duplicate_cart_ids(order_db: Any) -> list[dict]:
    pipeline = [{"$group": {"_id": "$cartId", "n": {"$sum": 1}}}, {"$match": {"n": {"$gt": 1}}}]
    return list(order_db["carts"].aggregate(pipeline))


def whole_order_docs(order_db: Any, keys: set[str]) -> dict[str, dict]:
    """Entire documents (`_id` and timestamps included): unchanged exactly when not written."""
    return {doc["cartId"]: doc for doc in order_db["carts"].find({"cartId": {"$in": sorted(keys)}})}


@dataclass
class CartScenario:
    """Cart drift planted on the fault stack, and the checks every cart fault ends with."""

    faults: FaultStack
    drift: Drift
    batch_size: int
    untouched: dict[str, dict]  # whole documents that were right (or newer) before

    @classmethod
    def plant(cls, faults: FaultStack, carts: int, products: int, batch_size: int) -> CartScenario:
        with faults.cart_conn() as conn:
            drift = cart_drift(conn, faults.order_db, carts, products)
        return cls(faults, drift, batch_size, whole_order_docs(faults.order_db, drift.correct))

    def applied_batches(self, *, frontier_may_be_partial: bool = False) -> int:
        """Batches written so far, in order; see `Drift.whole_batches` for the frontier."""
        current = order_carts(self.faults.order_db)
        return self.drift.whole_batches(current, self.batch_size, frontier_may_be_partial=frontier_may_be_partial)

    def assert_converged(self) -> None:
        """Every cart as expected, no duplicate cartId, and documents that were right never rewritten."""
        order_db = self.faults.order_db
        current = order_carts(order_db)
        wrong = {
            key: (current.get(key), value) for key, value in self.drift.expected.items() if current.get(key) != value
        }
        assert not wrong, f"{len(wrong)} carts are not as expected (now, expected), e.g. {list(wrong.items())[:3]}"
        assert current.keys() == self.drift.expected.keys()
        assert duplicate_cart_ids(order_db) == []
        assert whole_order_docs(order_db, self.drift.correct) == self.untouched
        written = order_db["carts"].find({"cartId": {"$in": sorted(self.drift.to_repair)}})
        assert all(doc["updatedAt"] > PLANTED_AT for doc in written)


# ----- running a job while a test breaks things -----
class JobInThread:
    """`execute_in_process` of one job in a background thread; `result()` waits for it."""

    def __init__(self, job: dg.JobDefinition, run_config: dict[str, Any], instance: dg.DagsterInstance) -> None:
        self._job = job
        self._run_config = run_config
        self._instance = instance
        self._result: dg.ExecuteInProcessResult | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"run-{job.name}", daemon=True)
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
#: Run monitoring fails a dead run on its first pass after a daemon runs again (counted from the new daemon's
#: first heartbeat, written just before that pass), or on the next one if the pass began before the run's
#: worker was found gone.
DEAD_RUN_FAILED_WITHIN_S = 2 * MONITORING_POLL_S
#: A hang detector for a new daemon's start (its processes' imports, on a busy machine): not a product bound.
DAEMON_START_S = 300
#: pytest-timeout's bound on a whole scenario on a daemon of its own: each of its waits has a bound of
#: its own, derived from what it tests, so this only catches a hang between them.
SCENARIO_TIMEOUT_S = 30 * 60
#: The change sensors' interval in the scenarios (PRODUCT_CDC_INTERVAL_SECONDS, CART_CDC_INTERVAL_SECONDS).
CDC_INTERVAL_S = 5
#: A hang detector for a keyed repair a change sensor asks for: its next tick, the run's wait in the queue (behind
#: the launches before it, one at a time, each within the launch deadline), its start and its few batches. The
#: scenarios wait on it to set up a crash, or to see keys repaired, not to measure a bound (their bounds are
#: DEAD_RUN_FAILED_WITHIN_S and the convergence bound). Measured on one busy core: a sensor's keyed cart run queued
#: over two minutes behind product runs whose launches each ran into the 60 s gRPC deadline.
KEYED_REPAIR_S = CDC_INTERVAL_S + MAX_CONCURRENT_RUNS * LAUNCH_DEADLINE_S + 2 * RUN_START_S + KEYED_RUN_S


def run_started_at(instance: dg.DagsterInstance, run_id: str) -> float:
    """When run `run_id` reported STARTED (epoch seconds)."""
    record = instance.get_run_record_by_id(run_id)
    assert record is not None and record.start_time is not None, f"run {run_id} has not started"
    return record.start_time


#: The engine events with which Dagster's run queue fails a run it could not launch (`dagster._daemon.run_coordinator`):
#: the code server did not answer the launch in time (its gRPC deadline, DAGSTER_GRPC_TIMEOUT_SECONDS, 60 s by
#: default), or could not be reached at all.
_LAUNCH_FAILED = (
    "Caught an unrecoverable error while dequeuing the run",
    "Run dequeue failed to reach the user code server",
)


def launch_failure(instance: dg.DagsterInstance, run_id: str) -> str | None:
    """Why Dagster's run queue failed run `run_id` at its launch (its engine event and the error), or
    None when it did not. Such a run never started: Dagster's run retries launch a whole-table run again, and a
    change sensor requests a failed keyed run's keys again."""
    for record in instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT).records:
        event = record.event_log_entry.dagster_event
        if event is not None and event.message and event.message.startswith(_LAUNCH_FAILED):
            error = event.engine_event_data.error
            return f"{event.message}: {error.message.strip()}" if error is not None else event.message
    return None


def not_started(instance: dg.DagsterInstance, run_id: str) -> str | None:
    """Why run `run_id` failed before it started (Dagster's run queue could not launch it, or run monitoring's start
    timeout), or None when it did not fail so."""
    message = run_failure_message(instance, run_id)
    return launch_failure(instance, run_id) or (message if "seconds to start" in message else None)


def cart_db_products(faults: FaultStack) -> dict[str, tuple]:
    """The Cart DB's product rows, by id."""
    with faults.cart_conn() as conn:
        return product_rows(conn)


def expected_products(faults: FaultStack) -> dict[str, tuple]:
    """The row each document of the Product MongoDB must have in the Cart DB."""
    return {str(doc["_id"]): expected_row(doc) for doc in faults.product_db.products.find()}


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
    _started_at: float = 0.0  # epoch seconds
    _run_times: dict[str, tuple[float, float]] = field(default_factory=dict)  # start and run of each successful run

    def start(self) -> None:
        """A new daemon (and, once it loads the workspace, a new code server)."""
        log = self.home / f"daemon-{len(self._logs) + 1}.log"
        self._logs.append(log)
        self._started_at = time.time()
        self._daemon = start_in_own_session(
            [str(Path(DAGSTER).with_name("dagster-daemon")), "run", "-w", "workspace.yaml"], self.env, log
        )

    def wait_until_monitoring(self) -> None:
        """Wait until the new daemon's run monitoring runs: its first heartbeat, written just before its first
        pass over the runs. The bounds of run monitoring count from here."""
        assert self._daemon is not None, "no daemon started"

        def beat() -> bool:
            heartbeat = self.instance.get_daemon_heartbeats().get("MONITORING")
            return heartbeat is not None and heartbeat.timestamp >= self._started_at

        wait_until("the new daemon's run monitoring runs", beat, DAEMON_START_S, 0.2)

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

    def run(self, run_id: str) -> dg.DagsterRun:
        run = self.instance.get_run_by_id(run_id)
        assert run is not None, f"no run {run_id}"
        return run

    def status(self, run_id: str) -> dg.DagsterRunStatus:
        return self.run(run_id).status

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

    def wait_for_success_or_retry(self, run_id: str, each_s: float) -> list[dg.DagsterRun]:
        """Wait until run `run_id` or one of Dagster's run retries of it succeeded, each within `each_s` (its start
        timeout and its work); returns the retries, oldest first. A retry that failed must have failed without
        running, as a run the busy code server did not start in time does (README, "Testing")."""

        def retries() -> list[dg.DagsterRun]:
            return self.runs(**{"dagster/root_run_id": run_id})

        def succeeded() -> bool:
            return any(run.status == dg.DagsterRunStatus.SUCCESS for run in [self.run(run_id), *retries()])

        wait_until(f"run {run_id} or a retry of it succeeded", succeeded, (1 + RUN_RETRIES) * each_s, 1)
        for run in retries():
            if run.status != dg.DagsterRunStatus.SUCCESS:
                assert not_started(self.instance, run.run_id), run_failure_message(self.instance, run.run_id)
        return retries()

    def slowest_successful_run(self) -> tuple[float, float]:
        """The longest start (launched to STARTED) and the longest run (STARTED to its end) of the runs that
        succeeded so far: what a run takes on this machine, as busy as it is now. A run's wait in the queue is
        not its start: a bound counts the runs it waits behind on its own."""
        for record in self.instance.get_run_records(dg.RunsFilter(statuses=[dg.DagsterRunStatus.SUCCESS])):
            run_id = record.dagster_run.run_id
            if run_id not in self._run_times and record.start_time is not None and record.end_time is not None:
                [launched] = self.instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.RUN_STARTING).records
                self._run_times[run_id] = (
                    record.start_time - launched.timestamp,
                    record.end_time - record.start_time,
                )
        times = self._run_times.values()
        return max((start for start, _ in times), default=0.0), max((run for _, run in times), default=0.0)

    def wait_until_every_run_ended(self, timeout: float) -> None:
        wait_until(
            "every run ended", lambda: not self.instance.get_runs(dg.RunsFilter(statuses=NOT_ENDED)), timeout, 0.5
        )

    def _ticks(self, name: str) -> list[Any]:
        """The evaluations of sensor (or schedule) `name` the daemon finished, newest first."""
        for state in self.instance.all_instigator_state():
            if state.name == name:
                ticks = self.instance.get_ticks(state.instigator_origin_id, state.selector_id)
                return [tick for tick in ticks if tick.status.value != "STARTED"]
        return []

    def sensor_ticks(self, name: str) -> int:
        """How many evaluations of sensor (or schedule) `name` the daemon finished."""
        return len(self._ticks(name))

    def slowest_tick(self, *names: str) -> float:
        """The longest time between two finished evaluations of one of the sensors `names`: how often a sensor
        really ticks on this machine (its interval is a minimum: a busy code server answers later)."""
        gaps = [0.0]
        for name in names:
            times = sorted(tick.timestamp for tick in self._ticks(name))
            gaps += [later - earlier for earlier, later in pairwise(times)]
        return max(gaps)

    def start_sensor(self, name: str) -> None:
        """`dagster sensor start`, as an operator turns a sensor on from a terminal."""
        args = [DAGSTER, "sensor", "start", "-w", "workspace.yaml", name]
        done = subprocess.run(args, cwd=REPO, env=self.env, capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, done.stderr[-3000:]

    def execute(self, job: str) -> subprocess.CompletedProcess:
        """`dagster job execute`, as an operator runs a sync in a terminal (in-process: no queue, no daemon)."""
        args = [DAGSTER, "job", "execute", "-m", "etl_defs", "-j", job]
        return subprocess.run(args, cwd=REPO, env=self.env, capture_output=True, text=True, timeout=300)
