"""Fixtures with real servers: SecantusDB and PostgreSQL 15, started once per session.

The stack, its ports and the service environment live in `tests.session`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator

import dagster as dg
import psycopg
import pytest

from local.schema import create_cart_schema, create_order_indexes
from local.stack import CART_DB, ORDER_DB, PRODUCT_DB, LocalStack
from tests.session import SERVICE_ENV, STACK, STATE_DIR, Databases


@pytest.fixture(scope="session")
def stack() -> Iterator[LocalStack]:
    """Both servers, running, with the Cart schema and the Order indexes."""
    STACK.up()
    with psycopg.connect(STACK.pg_url(CART_DB)) as conn:
        create_cart_schema(conn)
    yield STACK
    STACK.down()
    shutil.rmtree(STATE_DIR, ignore_errors=True)


@pytest.fixture()
def instance() -> Iterator[dg.DagsterInstance]:
    """A throwaway Dagster instance with the run queue `dagster.yaml` configures (no daemon dequeues;
    `execute_in_process` bypasses the queue, as `dagster job execute` does)."""
    coordinator = {"module": "dagster._core.run_coordinator", "class": "QueuedRunCoordinator"}
    with dg.instance_for_test(overrides={"run_coordinator": coordinator}) as instance:
        yield instance


@pytest.fixture()
def dbs(stack: LocalStack) -> Iterator[Databases]:
    """Empty service databases on the session's servers."""
    os.environ.update(SERVICE_ENV)
    mongo = stack.mongo_client(serverSelectionTimeoutMS=20_000)
    mongo[PRODUCT_DB]["products"].drop()
    mongo[ORDER_DB]["carts"].drop()
    create_order_indexes(mongo[ORDER_DB])
    with psycopg.connect(stack.pg_url(CART_DB), autocommit=True) as conn:
        create_cart_schema(conn)
        conn.execute("TRUNCATE cart, product")
    yield Databases(stack=stack, mongo=mongo)
    mongo.close()


@pytest.fixture()
def worker_process() -> Iterator[subprocess.Popen]:
    """A real process of this machine standing in for a run worker (it only sleeps); a test may kill it."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield process
    process.kill()
    process.wait()
