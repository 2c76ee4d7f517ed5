"""`WorkerCheckingRunLauncher`: Dagster's `DefaultRunLauncher`, plus the worker health check that run monitoring
needs to fail a run whose worker died with its code server (a host restart, `kill -9`, an OOM kill).

`dagster.yaml` names it as the instance's run launcher (the local stack, a VM with `dagster-daemon`);
Kubernetes uses `K8sRunLauncher`, which has a check of its own. Dagster's run monitoring daemon calls
`check_run_worker_health` for every STARTED run and fails those it reports dead, with the reason, so the
run queue, the schedules and the change sensors move on. Why and how: docs/automation.md, "Crashes".
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import dagster as dg

# The launcher plugin interface has no public home: these are the types every run launcher returns
# (dagster-k8s and dagster-docker import them from here too), and the tag DefaultRunLauncher writes.
from dagster._core.launcher import CheckRunHealthResult, LaunchRunContext, WorkerStatus
from dagster._core.storage.tags import GRPC_INFO_TAG

#: On a run this launcher started: the machine its worker runs on (`{"host": ..., "boot_id": ...}`).
WORKER_MACHINE_TAG = "etl-sync/worker-machine"
#: The message of the engine event a code server's run worker logs first (`dagster._grpc.impl`), with its pid.
_WORKER_STARTED_PREFIX = "Started process for run (pid: "
#: Engine events read, at most, looking for it (it is the worker's first; a few precede it).
_EVENTS_LOOKED_AT = 20
_LOOPBACK = {"localhost", "127.0.0.1", "::1"}
_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
_PROC_STAT = Path("/proc/stat")


@dataclass(frozen=True)
class Machine:
    """A host and the boot it is in: a worker of another boot of the same host is certainly gone."""

    host: str
    boot_id: str

    @classmethod
    def this(cls) -> Machine:
        boot_id = _BOOT_ID.read_text().strip() if _BOOT_ID.exists() else ""
        return cls(host=socket.gethostname(), boot_id=boot_id)

    @classmethod
    def from_tag(cls, text: str | None) -> Machine | None:
        try:
            saved = json.loads(text or "")
            return cls(host=str(saved["host"]), boot_id=str(saved["boot_id"]))
        except (ValueError, TypeError, KeyError):
            return None

    def tag(self) -> str:
        return json.dumps({"host": self.host, "boot_id": self.boot_id}, sort_keys=True)


def process_started_at(pid: int) -> float | None:
    """When process `pid` of this machine started (POSIX seconds), or None when there is no such live process.

    From Linux's /proc; without it, only whether the pid exists is known (a live one is reported started at 0).
    """
    if not _PROC_STAT.exists():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None
    if fields[0] in ("Z", "X"):  # exited (a zombie not yet reaped, or dead)
        return None
    started_ticks = int(fields[19])  # field 22, starttime: fields are counted after the command's ")"
    boot_time = next(
        float(line.split()[1]) for line in _PROC_STAT.read_text().splitlines() if line.startswith("btime ")
    )
    return boot_time + started_ticks / os.sysconf("SC_CLK_TCK")


def worker_pid(instance: dg.DagsterInstance, run_id: str) -> tuple[int, float] | None:
    """The pid of a run's worker and when it said so, from the engine event it logs first (None: not yet)."""
    records = instance.get_records_for_run(
        run_id, of_type=dg.DagsterEventType.ENGINE_EVENT, limit=_EVENTS_LOOKED_AT
    ).records
    for record in records:
        message = record.event_log_entry.dagster_event.message if record.event_log_entry.dagster_event else None
        if message and message.startswith(_WORKER_STARTED_PREFIX):
            return int(message[len(_WORKER_STARTED_PREFIX) :].split(")")[0]), record.event_log_entry.timestamp
    return None


def worker_health(tags: Mapping[str, str], here: Machine, started: tuple[int, float] | None) -> tuple[bool | None, str]:
    """Whether the worker of a run with `tags` lives (None: it cannot be told from `here`), and why.

    `started` is the worker's pid and when it reported it (`worker_pid`).
    """
    machine = Machine.from_tag(tags.get(WORKER_MACHINE_TAG))
    grpc_host = json.loads(tags.get(GRPC_INFO_TAG) or "{}").get("host")
    if machine is None or grpc_host not in _LOOPBACK:
        return None, "its worker was not started by a code server on this machine"
    if machine.host != here.host:
        return None, f"its worker runs on {machine.host}, not on {here.host}"
    if machine.boot_id != here.boot_id:
        return False, f"its worker ran on {machine.host} before the machine restarted"
    if started is None:
        return None, "its worker has not reported its process yet"
    pid, reported_at = started
    process_start = process_started_at(pid)
    if process_start is None:
        return False, f"its worker process {pid} on {machine.host} is gone (killed, or its code server was)"
    if process_start > reported_at + 2:  # 2 s: /proc/stat's btime is in whole seconds
        return False, f"its worker process {pid} on {machine.host} is gone (the pid now belongs to a later process)"
    return True, f"its worker process {pid} on {machine.host} is alive"


class WorkerCheckingRunLauncher(dg.DefaultRunLauncher):
    """`DefaultRunLauncher` (a run worker per run, started by the code server) whose workers run monitoring can check.

    It records the machine a run's worker starts on, and reports a worker dead when its process
    is gone or the machine restarted since. A worker it cannot see (another machine, a run from
    `dagster job execute`) is reported running: the run's `dagster/max_runtime` bounds those.
    """

    def launch_run(self, context: LaunchRunContext) -> None:
        self._instance.add_run_tags(context.dagster_run.run_id, {WORKER_MACHINE_TAG: Machine.this().tag()})
        super().launch_run(context)

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: dg.DagsterRun) -> CheckRunHealthResult:
        alive, why = worker_health(run.tags, Machine.this(), worker_pid(self._instance, run.run_id))
        if alive is False:
            return CheckRunHealthResult(WorkerStatus.FAILED, f"the run's worker died: {why}")
        if alive is None:
            why += "; its dagster/max_runtime tag bounds it"
        return CheckRunHealthResult(WorkerStatus.RUNNING, why)
