"""Helpers of the integration tests: the `dagster` CLI in a subprocess, a sync lock held elsewhere, sensor logs."""

from __future__ import annotations

import logging
import re
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg

from etl_defs.run_launcher import GRPC_INFO_TAG, WORKER_MACHINE_TAG, Machine
from local.dagster_dev import dagster_job_execute as job_execute
from local.stack import CART_DB
from resources import PostgresResource
from tests.helpers import Databases


def run_id_of(job: str, cli_output: str) -> str:
    """The id of the one successful run of `job` that `dagster job execute` logged."""
    [run_id] = re.findall(rf"{job} - ([0-9a-f-]{{36}}) - \d+ - RUN_SUCCESS", cli_output)
    return run_id


def dagster_job_execute(
    env: dict[str, str], job: str, config: str | None, tmp_path: Path
) -> subprocess.CompletedProcess:
    """`dagster job execute` of `job`, with `config` (YAML text) as its run config file when given."""
    config_file = None
    if config is not None:
        config_file = tmp_path / "run_config.yaml"
        config_file.write_text(config)
    return job_execute(env, job, config_file)


@contextmanager
def sync_lock_held_elsewhere(dbs: Databases, pipeline: str) -> Iterator[None]:
    """The pipeline's advisory lock held by another session, as a full sync started in a terminal holds it."""
    other_run = PostgresResource(url=dbs.stack.pg_url(CART_DB))
    try:
        with other_run.advisory_lock(pipeline, holder="another run"):
            yield
    finally:
        other_run.dispose()


class LogLines(logging.Handler):
    """Collects the messages of a logger it is added to (a sensor's `context.log`)."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__()
        self.lines = lines

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def started_on_this_machine(
    defs: dg.Definitions, instance: dg.DagsterInstance, request: dg.RunRequest, job: str, worker_pid: int
) -> str:
    """A run of `request`, STARTED as the daemon leaves one it launched here: the launcher's tags, and the
    first engine event of the code server's run worker (process `worker_pid`). Returns its run id."""
    launched = {WORKER_MACHINE_TAG: Machine.this().tag(), GRPC_INFO_TAG: '{"host": "localhost", "socket": "/tmp/s"}'}
    run = instance.create_run_for_job(
        defs.resolve_job_def(job),
        run_config=request.run_config,
        tags={**request.tags, **launched},
        status=dg.DagsterRunStatus.STARTED,
    )
    instance.report_engine_event(f"Started process for run (pid: {worker_pid}).", run)
    return run.run_id
