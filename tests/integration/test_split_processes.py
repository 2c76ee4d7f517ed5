"""A split sync from the terminal: its range steps run side by side in processes of their own
(the multiprocess executor), capped by their database's pool; Terminate stops every step
between batches; a step killed mid-run fails the run naming it; a re-run converges."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
from dagster_graphql.client.client_queries import TERMINATE_RUN_JOB_MUTATION
from dagster_graphql.test.utils import execute_dagster_graphql

from local.dagster_dev import DAGSTER
from tests.factories import expected_row, product_doc
from tests.helpers import REPO, Databases, EmptyWorkspaceTarget, WorkspaceProcessContext, wait_until
from tests.integration.helpers import dagster_job_execute

PRODUCTS = 800
#: 4 ranges of ~200 products, 20 per batch, 0.8 s after each: every range step takes ~8 s.
SLOW_SPLIT = "parallelism: 4\nbatch_size: 20\nbatch_pause_ms: 800\n"


@pytest.fixture()
def instance(dagster_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[dg.DagsterInstance]:
    """The instance the terminal's runs are recorded in (its DAGSTER_HOME, in PostgreSQL)."""
    monkeypatch.setenv("DAGSTER_HOME", dagster_env["DAGSTER_HOME"])
    monkeypatch.setenv("DAGSTER_PG_URL", dagster_env["DAGSTER_PG_URL"])
    with dg.DagsterInstance.get() as instance:
        instance.wipe()
        yield instance


def step_events(instance: dg.DagsterInstance, run_id: str, op: str) -> dict[str, list[dg.EventLogEntry]]:
    """The events of each step of `op` (its mapped steps) in the run, by step key."""
    steps: dict[str, list[dg.EventLogEntry]] = {}
    for entry in instance.all_logs(run_id):
        if entry.step_key and entry.step_key.startswith(f"{op}["):
            steps.setdefault(entry.step_key, []).append(entry)
    return steps


def event_of(entries: list[dg.EventLogEntry], kind: dg.DagsterEventType) -> dg.EventLogEntry | None:
    found = [e for e in entries if e.dagster_event is not None and e.dagster_event.event_type == kind]
    return found[0] if found else None


def event_time(entries: list[dg.EventLogEntry], kind: dg.DagsterEventType) -> float:
    entry = event_of(entries, kind)
    assert entry is not None, f"no {kind.value} event"
    return entry.timestamp


def step_pid(entries: list[dg.EventLogEntry]) -> int | None:
    """The process a step ran in (its STEP_START event's)."""
    started = event_of(entries, dg.DagsterEventType.STEP_START)
    return None if started is None else started.dagster_event.pid  # type: ignore[union-attr]


def test_range_steps_run_side_by_side_in_processes_of_their_own(
    dbs: Databases, dagster_env: dict[str, str], instance: dg.DagsterInstance, tmp_path: Path
) -> None:
    docs = [product_doc() for _ in range(PRODUCTS)]
    dbs.product_db.products.insert_many(docs)

    result = dagster_job_execute(dagster_env, "product_sync_job", SLOW_SPLIT, tmp_path)

    assert result.returncode == 0, result.stderr[-3000:]
    assert f"4 ranges, summed: products sync applied: source_rows={PRODUCTS}, missing={PRODUCTS}" in result.stderr
    assert dbs.product_rows() == {str(d["_id"]): expected_row(d) for d in docs}
    [run] = instance.get_runs()
    steps = step_events(instance, run.run_id, "sync_product_range")
    assert sorted(steps) == [f"sync_product_range[range_{n}_of_4]" for n in range(1, 5)]
    spans = [
        (event_time(e, dg.DagsterEventType.STEP_START), event_time(e, dg.DagsterEventType.STEP_SUCCESS))
        for e in steps.values()
    ]
    assert max(start for start, _ in spans) < min(end for _, end in spans), f"the range steps did not overlap: {spans}"
    pids = {step_pid(entries) for entries in steps.values()}
    assert len(pids) == 4 and None not in pids and os.getpid() not in pids


def test_the_product_db_pool_caps_the_range_steps_syncing_at_once(
    dbs: Databases, dagster_env: dict[str, str], instance: dg.DagsterInstance, tmp_path: Path
) -> None:
    docs = [product_doc() for _ in range(PRODUCTS)]
    dbs.product_db.products.insert_many(docs)
    limit = subprocess.run(
        [DAGSTER, "instance", "concurrency", "set", "product_db", "2"],
        cwd=REPO,
        env=dagster_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert limit.returncode == 0, limit.stderr[-2000:]

    result = dagster_job_execute(dagster_env, "product_sync_job", SLOW_SPLIT.replace("800", "300"), tmp_path)

    assert result.returncode == 0, result.stderr[-3000:]
    assert dbs.product_rows() == {str(d["_id"]): expected_row(d) for d in docs}
    [run] = instance.get_runs()
    spans = []
    for entries in step_events(instance, run.run_id, "sync_product_range").values():
        [syncing] = [e for e in entries if e.user_message.startswith("products sync of the whole table, keys in")]
        spans.append((syncing.timestamp, event_time(entries, dg.DagsterEventType.STEP_SUCCESS)))
    at_once = max(sum(1 for start, end in spans if start <= moment < end) for moment, _ in spans)
    assert at_once == 2, f"{at_once} range steps synced at once with a pool of 2: {spans}"


def start_slow_split(dagster_env: dict[str, str], tmp_path: Path) -> subprocess.Popen:
    config = tmp_path / "slow.yaml"
    config.write_text(SLOW_SPLIT)
    return subprocess.Popen(
        [DAGSTER, "job", "execute", "-m", "etl_defs", "-j", "product_sync_job", "-c", str(config)],
        cwd=REPO,
        env=dagster_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_terminate_from_the_ui_stops_every_range_step_between_batches(
    dbs: Databases, dagster_env: dict[str, str], instance: dg.DagsterInstance, tmp_path: Path
) -> None:
    docs = [product_doc() for _ in range(PRODUCTS)]
    dbs.product_db.products.insert_many(docs)
    worker = start_slow_split(dagster_env, tmp_path)
    try:
        wait_until("the ranges have written batches", lambda: len(dbs.product_rows()) >= 80, timeout=120, every=0.2)
        [run] = instance.get_runs()
        with WorkspaceProcessContext(instance, EmptyWorkspaceTarget()) as process_context:
            # What the UI's Terminate button does (the run was started in a terminal: it is marked CANCELING).
            execute_dagster_graphql(
                process_context.create_request_context(), TERMINATE_RUN_JOB_MUTATION, {"runId": run.run_id}
            )
        _, stderr = worker.communicate(timeout=120)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()

    assert worker.returncode == 1
    assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.CANCELED  # type: ignore[union-attr]
    assert stderr.count("products sync stopped between batches (termination requested") >= 2
    assert len(dbs.product_rows()) < PRODUCTS
    rerun = dagster_job_execute(dagster_env, "product_sync_job", "parallelism: 4\n", tmp_path)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert dbs.product_rows() == {str(d["_id"]): expected_row(d) for d in docs}


def test_a_range_step_killed_mid_run_fails_the_run_naming_it_and_a_rerun_converges(
    dbs: Databases, dagster_env: dict[str, str], instance: dg.DagsterInstance, tmp_path: Path
) -> None:
    docs = [product_doc() for _ in range(PRODUCTS)]
    dbs.product_db.products.insert_many(docs)
    victim = "sync_product_range[range_2_of_4]"
    worker = start_slow_split(dagster_env, tmp_path)
    try:

        def victim_pid() -> int | None:
            runs = instance.get_runs()
            if not runs:
                return None
            return step_pid(step_events(instance, runs[0].run_id, "sync_product_range").get(victim, []))

        wait_until(f"{victim} has started", lambda: victim_pid() is not None, timeout=120, every=0.2)
        wait_until("the ranges have written batches", lambda: len(dbs.product_rows()) >= 80, timeout=60, every=0.2)
        os.kill(victim_pid(), signal.SIGKILL)  # type: ignore[arg-type]
        _, stderr = worker.communicate(timeout=180)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()

    assert worker.returncode == 1
    [run] = instance.get_runs()
    assert run.status == dg.DagsterRunStatus.FAILURE
    failures = [
        entry.user_message
        for entry in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_FAILURE)
        if entry.step_key == victim
    ]
    assert failures, f"no step failure of {victim}"
    assert victim in stderr
    assert len(dbs.product_rows()) < PRODUCTS  # the killed range, and the summary, never finished

    rerun = dagster_job_execute(dagster_env, "product_sync_job", "parallelism: 4\n", tmp_path)

    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert dbs.product_rows() == {str(d["_id"]): expected_row(d) for d in docs}
