"""Fixtures of the integration tests: a Dagster instance in PostgreSQL for the CLI, and `dagster dev`."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from local.dagster_dev import LOCATION, REPOSITORY, SENSOR_TICKS, DagsterDev, running_dagster_dev
from local.stack import DAGSTER_DB, LocalStack, free_port
from tests.helpers import REPO, Databases


@pytest.fixture()
def dagster_env(dbs: Databases, tmp_path: Path) -> dict[str, str]:
    """The service environment plus a DAGSTER_HOME whose instance lives in PostgreSQL."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    return {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "DAGSTER_PG_URL": dbs.stack.pg_url(DAGSTER_DB, scheme="postgresql+psycopg2"),
    }


@pytest.fixture(scope="module")
def dagster_dev(stack: LocalStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DagsterDev]:
    home = tmp_path_factory.mktemp("dagster_dev_home")
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    port = free_port()
    env = {
        **os.environ,
        # The session stack's URLs, whatever a test before this one left in os.environ.
        **stack.env(),
        "DAGSTER_HOME": str(home),
        "DAGSTER_PG_URL": stack.pg_url(DAGSTER_DB, scheme="postgresql+psycopg2"),
        "ENABLE_SCHEDULER": "false",  # no schedule ticks or health pings during the test
        "PRODUCT_CDC_INTERVAL_SECONDS": "5",  # the change sensors, once a test turns them on
        "CART_CDC_INTERVAL_SECONDS": "5",
    }
    with running_dagster_dev(env, port, home / "dagster-dev.log") as server:
        # Its first tick validates the newest syncs of earlier tests: wait for it, so tests see only their own.
        selector = {
            "repositoryLocationName": LOCATION,
            "repositoryName": REPOSITORY,
            "sensorName": "validate_after_sync_sensor",
        }
        server.wait_for(
            "validate_after_sync_sensor's first tick",
            lambda: server.graphql(SENSOR_TICKS, selector=selector)["sensorOrError"]["sensorState"]["ticks"],
        )
        yield server


@pytest.fixture()
def monitored_instance() -> Iterator[dg.DagsterInstance]:
    """A throwaway instance with dagster.yaml's run launcher (the one run monitoring asks about workers)."""
    overrides = {
        "run_coordinator": {"module": "dagster._core.run_coordinator", "class": "QueuedRunCoordinator"},
        "run_launcher": {"module": "etl_defs.run_launcher", "class": "WorkerCheckingRunLauncher"},
    }
    with dg.instance_for_test(overrides=overrides) as instance:
        yield instance
