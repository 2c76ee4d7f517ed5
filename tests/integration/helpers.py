"""Helpers of the integration tests: the `dagster` CLI in a subprocess."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from local.dagster_dev import dagster_job_execute as job_execute


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
