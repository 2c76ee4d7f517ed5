"""Fixtures with real servers: SecantusDB and PostgreSQL 15, one pair per session (per xdist worker).

`servers` chooses their ports and folder, `service_env` points the service's variables at them,
`stack` starts them on first use (pure unit tests need no server), and `defs` and `settings` are
the code location as Dagster loads it in that environment.

The slow kinds of test are marked by the fixture that makes them slow (`make test-fast` leaves
them out), and their modules run first.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import psycopg
import pytest
from hypothesis import settings as hypothesis_settings
from pymongo import monitoring

import etl_defs
from etl_defs.settings import SyncSettings, load_settings
from local.schema import create_cart_schema, create_order_indexes
from local.stack import CART_DB, ORDER_DB, PRODUCT_DB, LocalStack, free_port
from tests.helpers import (
    MONGO_TEST_PASSWORD,
    MONGO_TEST_USER,
    PG_TEST_PASSWORD,
    Databases,
    MongoCommandLog,
    RecordMongoCommands,
)

# Property tests assert on results, never on time: on a busy CI machine (four workers on two cores)
# Hypothesis's default 200 ms deadline per example fails a correct test whose first example pays an import.
hypothesis_settings.register_profile("no-deadline", deadline=None)
hypothesis_settings.load_profile("no-deadline")

#: The fixtures that start Dagster's long-running processes, and the markers of the tests that use them.
SLOW_FIXTURES = {
    "dagster_dev": ("webserver", "daemon"),  # tests/integration/conftest.py, one per module
    "ui": ("browser",),  # a headless Chromium on dagster_dev (test_ui_browser.py)
    "orchestrator": ("daemon",),  # tests/faults/conftest.py
    "alerting_orchestrator": ("daemon",),
    "dagster_env": ("processes",),  # `dagster` in a terminal, on an instance in PostgreSQL
}


def pytest_itemcollected(item: pytest.Item) -> None:
    """Markers from the fixtures, as each test is collected (before `-m` reads them)."""
    fixtures = getattr(item, "fixturenames", ())
    for fixture, markers in SLOW_FIXTURES.items():
        if fixture in fixtures:
            for marker in markers:
                item.add_marker(marker)


#: The slow kinds of test, slowest first (a test is of a kind when it has all its markers): the order in which
#: xdist hands modules out in `make test`.
SLOW_FIRST = (
    ("faults", "daemon"),  # a fault scenario on a real daemon: minutes each
    ("webserver",),  # a module's `dagster dev`, and the runs its daemon starts
    ("faults",),  # servers stopped mid-run
    ("processes",),  # the service's commands in a terminal
)


#: The crash scenarios (the `orchestrator` fixture of tests/faults/conftest.py), which one worker runs one after the
#: other, beside the rest: each starts a daemon, a code server and run workers, kills them and starts them again,
#: and measures run monitoring's bounds. Three of them and the alert scenario at once on two cores left each a
#: quarter of a core, and their runs missed `start_timeout_seconds` (dagster.yaml) on a slower machine.
ONE_AT_A_TIME_FIXTURE = "orchestrator"
#: Where those modules live: xdist's controller hands out work by node id alone (it sees no fixtures), so the folder
#: is what it groups by; collection checks that each such module is there, and only they.
ONE_AT_A_TIME_DIR = "tests/faults/crashes/"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The modules with the slowest kinds of test first, so that no xdist worker starts a long one late
    (`--dist loadfile --no-loadscope-reorder` hands out whole modules in this order); the crash scenarios only
    in their folder (see `pytest_xdist_make_scheduler`)."""

    def kind(item: pytest.Item) -> int:
        markers = {marker.name for marker in item.iter_markers()}
        return next((rank for rank, slow in enumerate(SLOW_FIRST) if markers.issuperset(slow)), len(SLOW_FIRST))

    module_kind: dict[Path, int] = {}
    for item in items:
        module_kind[item.path] = min(kind(item), module_kind.get(item.path, len(SLOW_FIRST)))
        if (ONE_AT_A_TIME_FIXTURE in getattr(item, "fixturenames", ())) != item.nodeid.startswith(ONE_AT_A_TIME_DIR):
            raise pytest.UsageError(
                f"{item.nodeid}: the tests that use the {ONE_AT_A_TIME_FIXTURE} fixture (a crash scenario) live in "
                f"{ONE_AT_A_TIME_DIR}, and only they"
            )
    items.sort(key=lambda item: module_kind[item.path])  # stable: each module's tests keep their order


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """`--dist loadfile`, except that the modules of `ONE_AT_A_TIME_DIR` are one unit of work: one worker runs
    them one after the other while the others take the rest."""
    from xdist.scheduler import LoadFileScheduling  # only under xdist

    class OneCrashScenarioAtATime(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return ONE_AT_A_TIME_DIR if nodeid.startswith(ONE_AT_A_TIME_DIR) else super()._split_scope(nodeid)

    return OneCrashScenarioAtATime(config, log)


@pytest.fixture(scope="session")
def servers(request: pytest.FixtureRequest) -> Iterator[LocalStack]:
    """This session's servers, not started yet: free ports and a state folder of their own (each xdist worker has
    its own pair); stopped and deleted at the end. As root the folder must be reachable by PostgreSQL's user,
    which pytest's mode-700 `tmp_path_factory` is not."""
    worker = getattr(request.config, "workerinput", {}).get("workerid", "main")
    servers = LocalStack(
        Path(tempfile.mkdtemp(prefix=f"etl-sync-test-{worker}-")),
        mongo_port=free_port(),
        pg_port=free_port(),
        pg_password=PG_TEST_PASSWORD,
        mongo_user=MONGO_TEST_USER,
        mongo_password=MONGO_TEST_PASSWORD,
    )
    yield servers
    servers.clean()


@pytest.fixture(scope="session")
def service_env(servers: LocalStack) -> Iterator[dict[str, str]]:
    """The service's variables pointing at this session's servers, set in os.environ for the whole session."""
    env = {
        **servers.env(),
        "SYNC_BATCH_SIZE": "1000",
        "CART_SYNC_BATCH_SIZE": "1000",
        "ENABLE_SCHEDULER": "false",
    }
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        patch.delenv("CART_DB_WRITE_URL", raising=False)
        yield env


@pytest.fixture(scope="session")
def stack(servers: LocalStack, service_env: dict[str, str]) -> LocalStack:
    """Both servers, running, with the Cart schema and the Order indexes."""
    servers.up()
    with psycopg.connect(servers.pg_url(CART_DB)) as conn:
        create_cart_schema(conn)
    return servers


@pytest.fixture(scope="session")
def defs(service_env: dict[str, str]) -> dg.Definitions:
    """The code location, built as `dagster` loads it, in the session's environment."""
    return etl_defs.defs()


@pytest.fixture(scope="session")
def settings(service_env: dict[str, str]) -> SyncSettings:
    """The service's settings, read from the session's environment."""
    return load_settings()


@pytest.fixture(scope="session")
def mongo_commands() -> RecordMongoCommands:
    """`with mongo_commands() as commands:` records the MongoDB commands this process sends inside the block.

    pymongo's command listener is registered once, on first use; it sees the clients created after that (the
    jobs' resources create theirs when a run starts)."""
    log = MongoCommandLog()
    monitoring.register(log)
    return log.recording


@pytest.fixture()
def instance() -> Iterator[dg.DagsterInstance]:
    """A throwaway Dagster instance with the run queue `dagster.yaml` configures (no daemon dequeues;
    `execute_in_process` bypasses the queue, as `dagster job execute` does)."""
    coordinator = {"module": "dagster._core.run_coordinator", "class": "QueuedRunCoordinator"}
    with dg.instance_for_test(overrides={"run_coordinator": coordinator}) as instance:
        yield instance


@pytest.fixture()
def dbs(stack: LocalStack, service_env: dict[str, str]) -> Iterator[Databases]:
    """Empty service databases on the session's servers, and the session's environment (whatever a test before
    this one left in os.environ)."""
    os.environ.update(service_env)
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
