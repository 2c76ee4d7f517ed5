"""Scripts and CI jobs launching a sync over the webserver's GraphQL API, as the old `POST /api/etl/sync` callers did.

Both examples run in subprocesses, each test once per script: examples/sync_from_a_script.py
(dagster-graphql's client) and examples/sync_with_curl.sh (curl and jq). They launch against
`dagster dev` (the `dagster_dev` fixture), against a read-only webserver on the same instance
(what the Helm chart's `enableReadOnly` webserver is), and against a stand-in for the admin
webserver's authenticating proxy that answers 401.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from examples.sync_from_a_script import (
    CANCELED,
    FAILURE,
    LAUNCH_REFUSED,
    NO_ANSWER,
    NOT_ALLOWED,
    RETRY_RUN_TAG,
    RUN_TAGS,
    SUCCESS,
    TIMED_OUT,
    USAGE,
    WILL_RETRY_TAG,
)
from local.dagster_dev import (
    LOCATION,
    RUN_STATUS,
    DagsterDev,
    answers,
    group_alive,
    start_in_own_session,
    stop_process_group,
)
from local.stack import free_port
from tests.factories import expected_row, new_cart, new_product, product_doc
from tests.helpers import KEYED_RUN_S, REPO, RUN_RETRIES, RUN_START_S, Databases, copy_carts, copy_products

SCRIPTS = {
    "python": [sys.executable, str(REPO / "examples" / "sync_from_a_script.py")],
    "curl": ["bash", str(REPO / "examples" / "sync_with_curl.sh")],
}
RUNS_OF_JOB = """
query RunsOfJob($job: String!) { runsOrError(filter: {pipelineName: $job}) { ... on Runs { results { runId } } } }"""
REPOSITORIES = "{ repositoriesOrError { ... on RepositoryConnection { nodes { name location { name } } } } }"
#: `<asset key or step> [(no materialization)]: label=value label=value ...`, one line per table or dry run.
FIGURES_LINE = re.compile(r"^(\S+(?: \(no materialization\))?): (\S+=.*)$", re.MULTILINE)

Script = Callable[..., subprocess.CompletedProcess]


@pytest.fixture(params=sorted(SCRIPTS))
def script(request: pytest.FixtureRequest) -> Script:
    """Runs one of the two scripts: `script(url, "--job", job, ...)`, with DAGSTER_AUTH_TOKEN only when given."""
    command = SCRIPTS[request.param]

    def run(url: str, *args: str, token: str | None = None) -> subprocess.CompletedProcess:
        env = {key: value for key, value in os.environ.items() if key != "DAGSTER_AUTH_TOKEN"}
        if token is not None:
            env["DAGSTER_AUTH_TOKEN"] = token
        return subprocess.run(
            [*command, "--url", url, *args], env=env, capture_output=True, text=True, timeout=600, check=False
        )

    return run


@pytest.fixture(scope="module")
def read_only_webserver(dagster_dev: DagsterDev, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DagsterDev]:
    """`dagster-webserver --read-only` on the dagster_dev instance (same DAGSTER_HOME and environment), stopped with
    its process group (it starts a code server of its own)."""
    port = free_port()
    log = tmp_path_factory.mktemp("read_only_webserver") / "webserver.log"
    webserver = str(Path(sys.executable).parent / "dagster-webserver")
    process = start_in_own_session(
        [webserver, "--read-only", "-h", "127.0.0.1", "-p", str(port), "-w", "workspace.yaml"], dagster_dev.env, log
    )
    server = DagsterDev(f"http://127.0.0.1:{port}", log, dagster_dev.env)

    def serving() -> bool:
        assert process.poll() is None, f"the read-only webserver exited:\n{log.read_text(errors='replace')[-3000:]}"
        return answers(server.url) and LOCATION in json.dumps(server.graphql(REPOSITORIES))

    try:
        server.wait_for("the read-only webserver and its code location", serving)
        yield server
    finally:
        stop_process_group(process, log)
        assert not group_alive(process.pid), "a process of the read-only webserver is still running"


class RefusingProxy(http.server.BaseHTTPRequestHandler):
    """Answers every request 401, as the admin webserver's proxy answers a request without a valid token."""

    authorizations: list[str | None]

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.authorizations.append(self.headers.get("Authorization"))
        self.send_response(401)
        self.send_header("Content-Type", "text/plain")
        self.end_headers()
        self.wfile.write(b"Unauthorized")

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture()
def refusing_proxy() -> Iterator[tuple[str, list[str | None]]]:
    """A loopback server answering 401, and the Authorization headers it got."""
    authorizations: list[str | None] = []
    handler = type("Handler", (RefusingProxy,), {"authorizations": authorizations})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", authorizations
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


def figures(stdout: str) -> dict[str, dict[str, str]]:
    """The figures lines a script printed, by asset key (or `<step> (no materialization)`)."""
    return {key: dict(pair.split("=", 1) for pair in pairs.split(" ")) for key, pairs in FIGURES_LINE.findall(stdout)}


def launched_run_id(stdout: str) -> str:
    [run_id] = re.findall(r"^launched \S+ run ([0-9a-f-]{36})$", stdout, re.MULTILINE)
    return run_id


def run_ids(server: DagsterDev, job: str) -> set[str]:
    return {run["runId"] for run in server.graphql(RUNS_OF_JOB, job=job)["runsOrError"]["results"]}


def test_the_exit_codes_are_the_documented_ones() -> None:
    codes = (SUCCESS, FAILURE, USAGE, CANCELED, LAUNCH_REFUSED, NOT_ALLOWED, TIMED_OUT, NO_ANSWER)
    assert codes == (0, 1, 2, 3, 4, 5, 6, 7)  # as sync_with_curl.sh's header and the README list them


def test_a_product_sync_from_a_script_succeeds_and_prints_the_figures_of_its_materialization(
    dbs: Databases, dagster_dev: DagsterDev, read_only_webserver: DagsterDev, script: Script
) -> None:
    docs = [product_doc() for _ in range(9)]
    dbs.product_db.products.insert_many(docs)

    done = script(dagster_dev.url, "--job", "product_sync_job", "--config", '{"batch_size": 4}', "--timeout", "300")

    assert done.returncode == SUCCESS, done.stdout + done.stderr
    run_id = launched_run_id(done.stdout)
    assert f"run {run_id}: SUCCESS" in done.stdout.splitlines()
    product = figures(done.stdout)["cart_db/product"]
    assert (product["source_rows"], product["missing"], product["inserted"], product["updated"]) == ("9", "9", "9", "0")
    assert (product["batches"], product["dry_run"], product["scope"]) == ("3", "false", "table")
    assert dbs.product_rows() == {str(d["_id"]): expected_row(d) for d in docs}
    # Everyone follows the run on the read-only webserver: same instance, same answer.
    assert read_only_webserver.graphql(RUN_STATUS, runId=run_id)["runOrError"]["status"] == "SUCCESS"


def test_a_dry_run_prints_the_figures_of_its_report_step_and_writes_nothing(
    dbs: Databases, dagster_dev: DagsterDev, script: Script
) -> None:
    product = new_product()
    with dbs.cart_conn() as conn:
        copy_products(conn, [product])
        copy_carts(conn, [new_cart(product) for _ in range(3)])

    done = script(dagster_dev.url, "--job", "cart_sync_job", "--config", '{"dry_run": true}', "--timeout", "300")

    assert done.returncode == SUCCESS, done.stdout + done.stderr
    [(step, report)] = figures(done.stdout).items()
    assert step == "report_cart_sync (no materialization)"
    assert (report["source_rows"], report["missing"], report["inserted"], report["dry_run"]) == ("3", "3", "0", "true")
    assert dbs.order_db.carts.count_documents({}) == 0


def test_a_refused_run_config_exits_with_the_refusal_and_creates_no_run(
    dbs: Databases, dagster_dev: DagsterDev, script: Script
) -> None:
    before = run_ids(dagster_dev, "product_sync_job")

    done = script(dagster_dev.url, "--job", "product_sync_job", "--config", '{"batch_size": 0}')

    assert done.returncode == LAUNCH_REFUSED, done.stdout + done.stderr
    assert done.stderr.strip() == (
        "launch refused: PythonError: etl_defs.jobs.InvalidRunConfigError: invalid run config: "
        "batch_size=0: Input should be greater than or equal to 1 (allowed: 1 to 100000)"
    )
    assert done.stdout == ""
    assert run_ids(dagster_dev, "product_sync_job") == before


def test_an_unknown_job_exits_with_the_refusal(dagster_dev: DagsterDev, script: Script) -> None:
    done = script(dagster_dev.url, "--job", "sync_everything_job")

    assert done.returncode == LAUNCH_REFUSED, done.stdout + done.stderr
    assert done.stderr.startswith("launch refused: JobNotFoundError: ")
    assert "sync_everything_job" in done.stderr


def test_a_failed_sync_exits_1_after_the_daemons_retries_with_the_failed_step(
    dbs: Databases, dagster_dev: DagsterDev, script: Script
) -> None:
    dbs.order_db.carts.drop()  # no unique cartId index: the cart sync refuses to start, a step failure

    # The run and its retries (dagster.yaml's run_retries), each started within the start timeout, then failed
    # at its first step (a hang detector for that step: it fails at once).
    timeout = (1 + RUN_RETRIES) * (RUN_START_S + KEYED_RUN_S)
    done = script(dagster_dev.url, "--job", "cart_sync_job", "--timeout", str(timeout))

    first = launched_run_id(done.stdout)
    retries = re.findall(
        r"^run ([0-9a-f-]{36}) failed; the daemon retries it as run ([0-9a-f-]{36})$", done.stdout, re.M
    )
    runs = [first, *(retry for _, retry in retries)]
    assert [failed for failed, _ in retries] == runs[:-1], done.stdout  # each retry is of the run before it
    if done.returncode == TIMED_OUT and len(runs) <= RUN_RETRIES:
        # Dagster's daemon missed a retry (README, "Testing"): the script waits for it, as it must, and says so.
        assert_retry_missed_by_dagster(dagster_dev, runs[-1])
        assert done.stderr.rstrip().endswith(
            f"run {runs[-1]} failed and is to be retried, but no retry started in time"
        )
    else:
        assert done.returncode == FAILURE, done.stdout + done.stderr
        assert len(retries) == RUN_RETRIES  # dagster.yaml's run_retries: max_retries 2
    assert [dagster_dev.finished_status(run_id) for run_id in runs] == ["FAILURE"] * len(runs)
    failures = [line for line in done.stderr.splitlines() if line.startswith("step check_cart_sync_ready failed: ")]
    assert len(failures) == len(runs)
    assert all("collection carts has no index cartId_1 (unique on cartId)" in failure for failure in failures)
    assert figures(done.stdout) == {}


def assert_retry_missed_by_dagster(dagster_dev: DagsterDev, run_id: str) -> None:
    """Run `run_id` failed, Dagster tagged it to be retried, and its run retry daemon never launched the retry.

    Dagster 1.13 stores a run's RUN_FAILURE event before it marks the run failed and sets `dagster/will_retry`
    (`dagster/_core/instance/methods/event_methods.py`); its EventLogConsumerDaemon, reading the event in between,
    finds a run neither failed nor tagged, does not retry it, and its cursor moves past the event for good
    (`dagster/_daemon/auto_run_reexecution`). Seen once in CI, on a machine loaded enough to stall the run's worker
    between the two writes."""
    tags = {entry["key"]: entry["value"] for entry in dagster_dev.graphql(RUN_TAGS, runId=run_id)["runOrError"]["tags"]}
    assert dagster_dev.finished_status(run_id) == "FAILURE"
    assert tags.get(WILL_RETRY_TAG) == "true" and RETRY_RUN_TAG not in tags, tags


def test_the_read_only_webserver_refuses_the_launch_and_no_run_is_created(
    dagster_dev: DagsterDev, read_only_webserver: DagsterDev, script: Script
) -> None:
    before = run_ids(dagster_dev, "product_sync_job")

    done = script(read_only_webserver.url, "--job", "product_sync_job", "--config", '{"dry_run": true}')

    assert done.returncode == NOT_ALLOWED, done.stdout + done.stderr
    assert done.stderr.strip() == (
        "launch refused: this webserver does not allow launching runs (UnauthorizedError: Authorization failed)"
    )
    assert done.stdout == ""
    assert run_ids(dagster_dev, "product_sync_job") == before
    assert run_ids(read_only_webserver, "product_sync_job") == before


def test_a_proxy_refusing_the_token_exits_not_allowed_and_the_token_was_sent(
    refusing_proxy: tuple[str, list[str | None]], script: Script
) -> None:
    url, authorizations = refusing_proxy

    done = script(url, "--job", "product_sync_job", token="ci-token-123")

    assert done.returncode == NOT_ALLOWED, done.stdout + done.stderr
    assert done.stderr.strip() == "launch refused: this webserver does not allow launching runs (HTTP 401)"
    assert authorizations and set(authorizations) == {"Bearer ci-token-123"}


def test_a_run_still_going_at_the_timeout_exits_timed_out_and_goes_on(
    dbs: Databases, dagster_dev: DagsterDev, script: Script
) -> None:
    done = script(dagster_dev.url, "--job", "product_sync_job", "--config", '{"dry_run": true}', "--timeout", "0")

    assert done.returncode == TIMED_OUT, done.stdout + done.stderr
    run_id = launched_run_id(done.stdout)
    assert re.fullmatch(rf"run {run_id} is still \w+ after 0s; it goes on \(terminate it in the UI\)\n", done.stderr)
    assert dagster_dev.finished_status(run_id) == "SUCCESS"


def test_bad_arguments_exit_with_the_usage_code(script: Script) -> None:
    done = script("http://127.0.0.1:9", "--job", "product_sync_job", "--config", "[1, 2]")

    assert done.returncode == USAGE, done.stdout + done.stderr
    assert "--config" in done.stderr


def test_no_webserver_exits_with_no_answer(script: Script) -> None:
    done = script(f"http://127.0.0.1:{free_port()}", "--job", "product_sync_job")

    assert done.returncode == NO_ANSWER, done.stdout + done.stderr
    assert "no answer from the webserver" in done.stderr  # after curl's own line, from the curl script
