"""The UI's path: `dagster dev` (webserver + daemon) on loopback, driven through its GraphQL API.

`dagster dev` runs as `make ui` runs it: the repo's workspace.yaml and dagster.yaml (the
instance in the test server's `dagster` PostgreSQL database, the queued run coordinator
with its tag limits). Runs launched through GraphQL are queued, so the daemon has to
dequeue them; that is why this starts `dagster dev` and not the webserver alone (which
would need the DefaultRunCoordinator and would not exercise the queue nor run the
validate-after-sync sensor).

`dagster dev` is started in its own session (`start_new_session=True`) and stopped by
signalling its whole process group (webserver, daemon, code servers): a background
`dagster dev` without job control ignores SIGTERM.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from local.stack import DAGSTER_DB, LocalStack, free_port
from tests.session import REPO, Databases
from tests.factories import expected_row, product_doc

DAGSTER = str(Path(sys.executable).parent / "dagster")
LOCATION = "etl_sync"  # workspace.yaml's location_name
REPOSITORY = "__repository__"

LAUNCH_RUN = """
mutation LaunchRun($executionParams: ExecutionParams!) {
  launchRun(executionParams: $executionParams) {
    __typename
    ... on LaunchRunSuccess { run { runId status } }
    ... on PythonError { message stack }
    ... on RunConfigValidationInvalid { errors { message } }
    ... on PipelineNotFoundError { message }
  }
}"""
RUN_STATUS = 'query RunStatus($runId: ID!) { runOrError(runId: $runId) { __typename ... on Run { status jobName } } }'
RUNS_TAGGED = """
query RunsTagged($key: String!, $value: String!) {
  runsOrError(filter: {tags: [{key: $key, value: $value}]}) { ... on Runs { results { runId jobName status } } }
}"""
LATEST_MATERIALIZATION = """
query LatestMaterialization($path: [String!]!) {
  assetOrError(assetKey: {path: $path}) {
    ... on Asset {
      assetMaterializations(limit: 1) { runId metadataEntries { label ... on IntMetadataEntry { intValue } } }
    }
  }
}"""
CHECK_EXECUTIONS = """
query CheckExecutions($path: [String!]!, $name: String!) {
  assetCheckExecutions(assetKey: {path: $path}, checkName: $name, limit: 5) { runId status evaluation { success } }
}"""
SENSOR_TICKS = """
query SensorTicks($selector: SensorSelector!) {
  sensorOrError(sensorSelector: $selector) {
    __typename ... on Sensor { sensorState { status ticks(limit: 1) { status } } }
  }
}"""


class DagsterDev:
    """A running `dagster dev` and its GraphQL endpoint."""

    def __init__(self, url: str, log: Path) -> None:
        self.url = url
        self.log = log

    def graphql(self, query: str, **variables: Any) -> dict[str, Any]:
        body = json.dumps({"query": query, "variables": variables}).encode()
        request = urllib.request.Request(
            f"{self.url}/graphql", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            answer = json.loads(response.read())
        assert "errors" not in answer, answer["errors"]
        return answer["data"]

    def wait_for(self, what: str, probe: Callable[[], Any], timeout: float = 180) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = probe()
            if value:
                return value
            time.sleep(0.5)
        tail = self.log.read_text(errors="replace")[-4000:]
        pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}; dagster dev log:\n{tail}")

    def launch(self, job: str, run_config: dict[str, Any]) -> str:
        """launchRun as the UI's Launchpad sends it; returns the run id."""
        params = {
            "selector": {"repositoryLocationName": LOCATION, "repositoryName": REPOSITORY, "jobName": job},
            "runConfigData": run_config,
        }
        launched = self.graphql(LAUNCH_RUN, executionParams=params)["launchRun"]
        assert launched["__typename"] == "LaunchRunSuccess", launched
        return launched["run"]["runId"]

    def finished_status(self, run_id: str) -> str:
        def done() -> str | None:
            status = self.graphql(RUN_STATUS, runId=run_id)["runOrError"]["status"]
            return status if status in ("SUCCESS", "FAILURE", "CANCELED") else None

        return self.wait_for(f"run {run_id} to finish", done)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/server_info", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _stop(process: subprocess.Popen) -> None:
    """Stop `dagster dev` and everything it started by signalling its process group; kill what is left."""
    try:
        os.killpg(process.pid, signal.SIGTERM)  # dagster dev shuts its webserver, daemon and code servers down
    except ProcessLookupError:
        return
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        pass
    deadline = time.monotonic() + 15
    while _group_alive(process.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if _group_alive(process.pid):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=15)


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
    }
    log = home / "dagster-dev.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [DAGSTER, "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
    server = DagsterDev(f"http://127.0.0.1:{port}", log)
    try:
        server.wait_for("the webserver to answer", lambda: process.poll() is None and _answers(server.url))
        server.wait_for(
            f"code location {LOCATION} to load",
            lambda: LOCATION in json.dumps(server.graphql("{ repositoriesOrError { ... on RepositoryConnection "
                                                          "{ nodes { name location { name } } } } }")),
        )  # fmt: skip
        # A run status sensor ignores runs that finished before its first tick: wait for that tick.
        selector = {
            "repositoryLocationName": LOCATION, "repositoryName": REPOSITORY, "sensorName": "validate_after_sync_sensor",
        }  # fmt: skip
        server.wait_for(
            "validate_after_sync_sensor's first tick",
            lambda: server.graphql(SENSOR_TICKS, selector=selector)["sensorOrError"]["sensorState"]["ticks"],
        )
        yield server
    finally:
        _stop(process)
        assert process.poll() is not None, "dagster dev is still running"
        deadline = time.monotonic() + 15
        while _group_alive(process.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _group_alive(process.pid), "a process dagster dev started is still running"


def test_product_sync_launched_through_graphql_succeeds_and_records_its_materialization(
    dbs: Databases, dagster_dev: DagsterDev
) -> None:
    docs = [product_doc() for _ in range(9)]
    dbs.product_db.products.insert_many(docs)

    run_id = dagster_dev.launch("product_sync_job", {"batch_size": 4})

    assert dagster_dev.finished_status(run_id) == "SUCCESS"
    asset = dagster_dev.graphql(LATEST_MATERIALIZATION, path=["cart_db", "product"])["assetOrError"]
    [materialization] = asset["assetMaterializations"]
    assert materialization["runId"] == run_id
    figures = {entry["label"]: entry.get("intValue") for entry in materialization["metadataEntries"]}
    assert (figures["source_rows"], figures["inserted"], figures["batches"]) == (9, 9, 3)
    assert dbs.product_rows() == {str(d["_id"]): expected_row(d) for d in docs}


def test_a_real_sync_from_the_ui_is_validated_by_a_run_the_sensor_starts_and_a_dry_run_is_not(
    dbs: Databases, dagster_dev: DagsterDev
) -> None:
    dbs.product_db.products.insert_many([product_doc() for _ in range(3)])

    dry_id = dagster_dev.launch("product_sync_job", {"dry_run": True})
    assert dagster_dev.finished_status(dry_id) == "SUCCESS"
    real_id = dagster_dev.launch("product_sync_job", {})
    assert dagster_dev.finished_status(real_id) == "SUCCESS"

    def validation_runs(run_id: str) -> list[dict[str, Any]]:
        found = dagster_dev.graphql(RUNS_TAGGED, key="etl-sync/validates-run", value=run_id)
        return found["runsOrError"]["results"]

    [validation] = dagster_dev.wait_for("the validation run after the sync", lambda: validation_runs(real_id))
    assert validation["jobName"] == "validation_job"
    assert dagster_dev.finished_status(validation["runId"]) == "SUCCESS"
    for check in ("no_missing_products", "no_stale_products", "no_orphaned_products"):
        found = dagster_dev.graphql(CHECK_EXECUTIONS, path=["cart_db", "product"], name=check)
        executions = found["assetCheckExecutions"]
        assert {"runId": validation["runId"], "status": "SUCCEEDED", "evaluation": {"success": True}} in executions
    # The sensor handles run events in order: it saw the dry run before the real run, and let it pass.
    assert validation_runs(dry_id) == []


RUN_TIMES = "query RunTimes($runId: ID!) { runOrError(runId: $runId) { ... on Run { status startTime endTime } } }"


def test_two_runs_launched_together_queue_one_behind_the_other(dbs: Databases, dagster_dev: DagsterDev) -> None:
    docs = [product_doc() for _ in range(12)]
    dbs.product_db.products.insert_many(docs)
    config = {"batch_size": 3, "batch_pause_ms": 800}  # ~3 s of writing: long enough to overlap if allowed

    first, second = (dagster_dev.launch("product_sync_job", config) for _ in range(2))

    assert dagster_dev.finished_status(first) == "SUCCESS"
    assert dagster_dev.finished_status(second) == "SUCCESS"
    times = sorted(
        (dagster_dev.graphql(RUN_TIMES, runId=run_id)["runOrError"] for run_id in (first, second)),
        key=lambda run: run["startTime"],
    )
    assert times[0]["endTime"] <= times[1]["startTime"], times  # the queue held one back: no overlap
    with dbs.cart_conn() as conn:
        assert conn.execute("SELECT count(*), count(DISTINCT id) FROM product").fetchone() == (12, 12)
    assert dbs.product_rows() == {str(d["_id"]): expected_row(d) for d in docs}


EVERYTHING_A_UI_SHOWS = """
{
  instance { info runLauncher { name } runQueuingSupported }
  runsOrError { ... on Runs { results {
    runId jobName status runConfigYaml tags { key value }
    eventConnection { events { __typename ... on MessageEvent { message }
      ... on ExecutionStepFailureEvent { error { message stack causes { message stack } } }
      ... on RunFailureEvent { error { message stack } }
      ... on MaterializationEvent { metadataEntries { label ... on TextMetadataEntry { text }
                                                      ... on JsonMetadataEntry { jsonString } } } } }
  } } }
  workspaceOrError { ... on Workspace { locationEntries { locationOrLoadError {
    ... on RepositoryLocation { repositories { allTopLevelResourceDetails {
      name configFields { name } configuredValues { key value type } } } }
    ... on PythonError { message stack } } } } }
}"""


def test_graphql_answers_hold_no_secret(dbs: Databases, dagster_dev: DagsterDev) -> None:
    from tests.session import TEST_SECRETS

    dbs.product_db.products.insert_many([product_doc(), product_doc(price="not a number")])
    run_id = dagster_dev.launch("full_sync_job", {})
    assert dagster_dev.finished_status(run_id) == "SUCCESS"

    answer = json.dumps(dagster_dev.graphql(EVERYTHING_A_UI_SHOWS))

    assert run_id in answer and "price must be a number" in answer  # the answer covers the run and its events
    resources = {"MONGO_PASSWORD", "CART_DB_URL"}
    assert all(name in answer for name in resources)  # resources show the variables' names...
    leaked = [secret for secret in TEST_SECRETS if secret in answer]
    assert leaked == []  # ...and never their values
