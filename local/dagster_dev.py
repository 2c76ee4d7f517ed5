"""`dagster dev` (webserver and daemon) in the background on the local stack, its GraphQL API, and the CLI.

`make screenshots` and the tests start it this way: in its own session, stopped by
signalling its whole process group (webserver, daemon, code servers), because a background
`dagster dev` without job control ignores SIGTERM.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from local.stack import process_cmdline

REPO = Path(__file__).resolve().parent.parent
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
RUN_STATUS = "query RunStatus($runId: ID!) { runOrError(runId: $runId) { __typename ... on Run { status jobName } } }"
SENSOR_TICKS = """
query SensorTicks($selector: SensorSelector!) {
  sensorOrError(sensorSelector: $selector) {
    __typename ... on Sensor { sensorState { status ticks(limit: 1) { status } } }
  }
}"""


class DagsterDev:
    """A running `dagster dev` and its GraphQL endpoint."""

    def __init__(self, url: str, log: Path, env: dict[str, str]) -> None:
        self.url = url
        self.log = log
        self.env = env  # its environment: DAGSTER_HOME and the instance database, for CLI runs beside it

    def graphql(self, query: str, **variables: Any) -> dict[str, Any]:
        body = json.dumps({"query": query, "variables": variables}).encode()
        request = urllib.request.Request(f"{self.url}/graphql", data=body, headers={"Content-Type": "application/json"})
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
        raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; dagster dev log:\n{tail}")

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


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/server_info", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def start_in_own_session(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """Start a Dagster process (`dagster dev`, a webserver, a daemon) in the repo, in a session of its own so
    that `stop_process_group` reaches everything it starts, its output into `log`."""
    with log.open("wb") as out:
        return subprocess.Popen(
            args,
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


#: How long `dagster dev` (or a webserver) gets to shut down after SIGTERM: it takes 3 s on an idle machine and 15 s
#: on a third of a core; past this, waiting learns nothing (`dagster dev` itself waits 60 s for a child that hangs).
STOP_GRACE_S = 30


def group_processes(pgid: int) -> list[str]:
    """The command lines of the processes of group `pgid` still running."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[2]) == pgid:
                found.append(process_cmdline(int(stat.parent.name)))
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
    return found


def stop_process_group(process: subprocess.Popen, log: Path | None = None) -> None:
    """Stop `dagster dev` and everything it started by signalling its process group; kill what is left after
    `STOP_GRACE_S`, naming it in `log`, and wait until the group is gone (a killed child is reaped by init)."""
    try:
        os.killpg(process.pid, signal.SIGTERM)  # dagster dev shuts its webserver, daemon and code servers down
    except ProcessLookupError:
        return
    deadline = time.monotonic() + STOP_GRACE_S
    while group_alive(process.pid) and time.monotonic() < deadline:
        process.poll()  # reap the leader once it exits
        time.sleep(0.2)
    if group_alive(process.pid):
        left = group_processes(process.pid)
        if log is not None:
            with log.open("a") as out:
                out.write(f"\nstill running {STOP_GRACE_S}s after SIGTERM, killed:\n" + "\n".join(left) + "\n")
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=15)
    deadline = time.monotonic() + 15
    while group_alive(process.pid) and time.monotonic() < deadline:
        time.sleep(0.2)


def dagster_job_execute(env: dict[str, str], job: str, config_file: Path | None = None) -> subprocess.CompletedProcess:
    """`dagster job execute -m etl_defs -j <job> [-c <config_file>]`, as an operator types it."""
    args = [DAGSTER, "job", "execute", "-m", "etl_defs", "-j", job, *(["-c", str(config_file)] if config_file else [])]
    return subprocess.run(args, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)


@contextmanager
def running_dagster_dev(env: dict[str, str], port: int, log: Path) -> Iterator[DagsterDev]:
    """`dagster dev -w workspace.yaml` on 127.0.0.1:`port`, as `make ui` runs it, once its code location loaded.

    On the way out it stops the whole process group and checks that nothing it started is left.
    """
    process = start_in_own_session(
        [DAGSTER, "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)], env, log
    )
    server = DagsterDev(f"http://127.0.0.1:{port}", log, env)
    try:
        server.wait_for("the webserver to answer", lambda: process.poll() is None and answers(server.url))
        server.wait_for(
            f"code location {LOCATION} to load",
            lambda: (
                LOCATION
                in json.dumps(
                    server.graphql(
                        "{ repositoriesOrError { ... on RepositoryConnection { nodes { name location { name } } } } }"
                    )
                )
            ),
        )
        yield server
    finally:
        stop_process_group(process, log)
        assert process.poll() is not None, "dagster dev is still running"
        assert not group_alive(process.pid), "a process dagster dev started is still running"
