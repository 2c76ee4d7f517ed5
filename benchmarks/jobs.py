"""The sync jobs as a user runs them, `dagster job execute` in a subprocess, and their summary lines."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from benchmarks.measure import ServerCpu, measure_process
from local.stack import DAGSTER_DB, LocalStack

REPO = Path(__file__).resolve().parent.parent
DAGSTER = str(Path(sys.executable).parent / "dagster")
#: `{pipeline} sync applied: source_rows=.., missing=.., ...; inserted=.., updated=.., deleted=..; 1.23s, 456 rows/s`
SUMMARY = re.compile(
    r"(?P<pipeline>\w+) sync applied: (?P<figures>.*); (?P<seconds>\d+(?:\.\d+)?)s, (?P<rate>\d+) rows/s"
)
FIGURE = re.compile(r"(\w+)=(\d+)")


def git(*args: str) -> str:
    """A read-only git query's output, or '' when git cannot answer."""
    result = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)
    return result.stdout.strip() if result.returncode == 0 else ""


class SummaryNotFoundError(RuntimeError):
    """A job's log has no `sync applied` summary line."""


def parse_summary(log: str, pipeline: str) -> dict[str, Any]:
    """The figures of the last `{pipeline} sync applied` line of `log`, with its duration and rate."""
    matches = [m for m in map(SUMMARY.search, log.splitlines()) if m and m["pipeline"] == pipeline]
    if not matches:
        raise SummaryNotFoundError(f"no '{pipeline} sync applied' line in the job's log")
    last = matches[-1]
    figures: dict[str, Any] = {name: int(value) for name, value in FIGURE.findall(last["figures"])}
    return {**figures, "duration_s": float(last["seconds"]), "rows_per_s": int(last["rate"])}


class JobRunner:
    """Runs the jobs on `stack` with a private DAGSTER_HOME (the repo's dagster.yaml, the stack's PostgreSQL)."""

    def __init__(self, stack: LocalStack, state_dir: Path, servers: ServerCpu, extra_env: dict[str, str]) -> None:
        self.state_dir = state_dir
        self.servers = servers
        home = state_dir / "dagster_home"
        home.mkdir(exist_ok=True)
        shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
        self.env = {
            **os.environ,
            **stack.env(),
            "DAGSTER_HOME": str(home),
            "DAGSTER_PG_URL": stack.pg_url(DAGSTER_DB, scheme="postgresql+psycopg2"),
            **extra_env,
        }

    def _log(self, name: str) -> Path:
        return self.state_dir / f"{name}.log"

    def run_cli(
        self, job: str, pipeline: str, run_config: dict[str, Any], name: str, env: dict[str, str] | None = None
    ) -> dict[str, Any]:
        """`dagster job execute -m etl_defs -j job -c <run_config>` (`env` added to the environment): its cost
        and its summary's figures."""
        config = self.state_dir / f"{name}.yaml"
        config.write_text(json.dumps(run_config))  # JSON is YAML
        command = [DAGSTER, "job", "execute", "-m", "etl_defs", "-j", job, "-c", str(config)]
        log = self._log(name)
        cost = measure_process(command, env={**self.env, **(env or {})}, cwd=REPO, log=log, servers=self.servers)
        return {"cost": cost.as_dict(), "summary": parse_summary(log.read_text(errors="replace"), pipeline)}

    def run_monitored(self, job: str, pipeline: str, run_config: dict[str, Any], name: str) -> dict[str, Any]:
        """The job through `benchmarks.monitored_job`: its MongoDB command counts, cost and summary."""
        counts = self.state_dir / f"{name}.counts.json"
        command = [sys.executable, "-m", "benchmarks.monitored_job", job, json.dumps(run_config), str(counts)]
        log = self._log(name)
        cost = measure_process(command, env=self.env, cwd=REPO, log=log, servers=self.servers)
        return {
            "cost": cost.as_dict(),
            "summary": parse_summary(log.read_text(errors="replace"), pipeline),
            "mongo": json.loads(counts.read_text()),
        }
