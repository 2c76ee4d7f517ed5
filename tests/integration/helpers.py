"""Helpers of the integration tests: the `dagster` CLI in a subprocess."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from local.dagster_dev import DAGSTER
from tests.session import REPO


def run_id_of(job: str, cli_output: str) -> str:
    """The id of the one successful run of `job` that `dagster job execute` logged."""
    [run_id] = re.findall(rf"{job} - ([0-9a-f-]{{36}}) - \d+ - RUN_SUCCESS", cli_output)
    return run_id


def dagster_job_execute(env: dict[str, str], job: str, config: str | None, tmp_path: Path) -> subprocess.CompletedProcess:
    """`dagster job execute -m etl_defs -j <job> [-c <config>]`, as an operator types it."""
    args = [DAGSTER, "job", "execute", "-m", "etl_defs", "-j", job]
    if config is not None:
        path = tmp_path / "run_config.yaml"
        path.write_text(config)
        args += ["-c", str(path)]
    return subprocess.run(args, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
