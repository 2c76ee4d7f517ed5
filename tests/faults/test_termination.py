"""A sync run stopped from outside: the UI's Terminate, and SIGTERM to the run worker.

The run is what an operator starts from a terminal, `dagster job execute`, in a subprocess
with an instance in the fault stack's PostgreSQL. `dagster run terminate` does not exist
in Dagster 1.13 (`dagster run` has delete/list/migrate-repository/wipe), so "terminate from
Dagster" is the UI's Terminate button: the webserver's `terminateRun` GraphQL mutation,
executed here in-process against the same instance (the webserver runs the same resolver).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest
from dagster_graphql.client.client_queries import TERMINATE_RUN_JOB_MUTATION
from dagster_graphql.test.utils import execute_dagster_graphql

from local.dagster_dev import DAGSTER
from tests.faults.helpers import FaultStack, ProductScenario, sync_sessions, write_held_mid_statement
from tests.helpers import REPO, EmptyWorkspaceTarget, WorkspaceProcessContext, wait_until

pytestmark = pytest.mark.faults

PRODUCTS = 3000
BATCH = 150
SLOW = f"batch_size: {BATCH}\nbatch_pause_ms: 150\n"


@dataclass
class Terminal:
    """`dagster job execute` from a terminal, against the fault stack."""

    home: Path
    env: dict[str, str]

    def start(self, job: str, config: str) -> subprocess.Popen:
        path = self.home / "run_config.yaml"
        path.write_text(config)
        with (self.home / "run.log").open("w") as log:
            return subprocess.Popen(
                [DAGSTER, "job", "execute", "-m", "etl_defs", "-j", job, "-c", str(path)],
                env=self.env,
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    @property
    def output(self) -> str:
        return (self.home / "run.log").read_text(errors="replace")


@pytest.fixture()
def terminal(faults: FaultStack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Terminal]:
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(home))  # for DagsterInstance.get() in this process
    yield Terminal(home, {**os.environ, **faults.env(), "DAGSTER_HOME": str(home)})


@pytest.fixture()
def dagster_instance(terminal: Terminal) -> Iterator[dg.DagsterInstance]:
    """The instance the subprocess records its run in (PostgreSQL `dagster` of the fault stack)."""
    with dg.DagsterInstance.get() as instance:
        instance.wipe()  # the database outlives a test; its runs do not
        yield instance


def the_run(instance: dg.DagsterInstance) -> dg.DagsterRun:
    runs = instance.get_runs()
    assert len(runs) == 1, runs
    return runs[0]


def finish(process: subprocess.Popen, timeout: float = 30) -> int:
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise AssertionError(f"the run worker did not stop within {timeout}s") from None


def start_slow_sync(faults: FaultStack, terminal: Terminal) -> tuple[ProductScenario, subprocess.Popen]:
    scenario = ProductScenario.plant(faults, PRODUCTS, BATCH)
    worker = terminal.start("product_sync_job", SLOW)
    wait_until("3 batches are committed", lambda: scenario.applied_batches() >= 3, timeout=60)
    return scenario, worker


def assert_one_rerun_converges(defs: dg.Definitions, scenario: ProductScenario, instance: dg.DagsterInstance) -> None:
    rerun = defs.resolve_job_def("product_sync_job").execute_in_process(
        run_config={"batch_size": BATCH}, instance=instance, raise_on_error=False
    )
    assert rerun.success
    scenario.assert_converged()


def terminate_from_the_ui(instance: dg.DagsterInstance, run_id: str) -> dict:
    """What the UI's Terminate button does: the `terminateRun` mutation (safe policy)."""
    with WorkspaceProcessContext(instance, EmptyWorkspaceTarget()) as process_context:
        result = execute_dagster_graphql(
            process_context.create_request_context(), TERMINATE_RUN_JOB_MUTATION, {"runId": run_id}
        )
    return result.data["terminateRun"]


def test_terminate_from_the_ui_stops_between_batches(
    faults: FaultStack, terminal: Terminal, dagster_instance: dg.DagsterInstance, defs: dg.Definitions
) -> None:
    scenario, worker = start_slow_sync(faults, terminal)
    run = the_run(dagster_instance)

    answer = terminate_from_the_ui(dagster_instance, run.run_id)

    # Dagster 1.13 answers "Unable to terminate run": its run launcher cannot reach a process
    # started by `dagster job execute`. It does mark the run CANCELING, and the sync sees that.
    assert answer["__typename"] in ("TerminateRunSuccess", "TerminateRunFailure"), answer
    assert finish(worker) == 1, terminal.output[-3000:]
    assert "products sync stopped between batches (termination requested: the run is CANCELING)" in terminal.output
    assert dagster_instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.CANCELED
    scenario.assert_stopped_part_way(3)
    assert_one_rerun_converges(defs, scenario, dagster_instance)


def test_sigterm_to_the_run_worker_mid_write(
    faults: FaultStack, terminal: Terminal, dagster_instance: dg.DagsterInstance, defs: dg.Definitions
) -> None:
    """SIGTERM lands while a batch's upsert is in flight (held by a table lock): it must roll back."""
    scenario, worker = start_slow_sync(faults, terminal)
    with write_held_mid_statement(faults, "product"):
        committed = scenario.applied_batches()

        os.kill(worker.pid, signal.SIGTERM)

        assert finish(worker) == 1, terminal.output[-3000:]
        # The interrupted upsert was cancelled on the server: even blocked, it holds nothing now.
        wait_until("the sync's sessions are gone", lambda: sync_sessions(faults) == 0, timeout=10)
    assert scenario.assert_stopped_part_way(3) == committed
    assert the_run(dagster_instance).status == dg.DagsterRunStatus.FAILURE
    assert "Execution was interrupted unexpectedly" in terminal.output
    assert_one_rerun_converges(defs, scenario, dagster_instance)
