"""What a measured step costs: wall time, client CPU, peak RSS, and the database servers' CPU.

Client CPU of a subprocess is its rusage from `os.wait4` (the process and the children it
waited for); its peak RSS is `VmHWM` from `/proc/<pid>/status`, polled while it runs. Server
CPU is the delta of utime+stime in `/proc/<pid>/stat`: SecantusDB's one process, and
PostgreSQL's postmaster with every backend (live ones directly, exited ones through the
postmaster's cutime/cstime).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
RSS_POLL_S = 0.05
T = TypeVar("T")


def _stat_fields(pid: int) -> list[str]:
    """The fields of /proc/<pid>/stat after the command name (field 3 onwards); empty when gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return []
    return text[text.rindex(")") + 2 :].split()


def process_cpu_s(pid: int, *, with_waited_children: bool = False) -> float:
    """utime+stime of `pid` (all its threads), optionally plus that of the children it has waited for."""
    fields = _stat_fields(pid)
    if not fields:
        return 0.0
    # fields[11..14] are stat fields 14..17: utime, stime, cutime, cstime
    ticks = int(fields[11]) + int(fields[12])
    if with_waited_children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / CLOCK_TICKS


def _children(parent: int) -> list[int]:
    children = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields and int(fields[1]) == parent:
                children.append(int(entry))
    return children


class ServerCpu:
    """Reads the CPU seconds the stack's MongoDB and PostgreSQL servers have used so far."""

    def __init__(self, mongo_pid: int, pg_pid: int) -> None:
        self.mongo_pid = mongo_pid
        self.pg_pid = pg_pid

    def snapshot(self) -> dict[str, float]:
        """Seconds so far per server; subtract two snapshots for a step's share."""
        postgres = process_cpu_s(self.pg_pid, with_waited_children=True)
        postgres += sum(process_cpu_s(child) for child in _children(self.pg_pid))
        return {"mongo": process_cpu_s(self.mongo_pid, with_waited_children=True), "postgres": postgres}


@dataclass
class Cost:
    """A measured step's figures (seconds, MB = 10^6 bytes)."""

    wall_s: float
    client_cpu_s: float
    mongo_cpu_s: float
    pg_cpu_s: float
    peak_rss_mb: float | None = None  # subprocesses only: VmHWM of the process, polled
    #: Subprocesses only: ru_maxrss from wait4, the largest of the process and its waited-for children.
    rusage_maxrss_mb: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {name: round(value, 3) if isinstance(value, float) else value for name, value in asdict(self).items()}


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident set so far (VmHWM) in MB; 0 once it has exited."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024 / 1e6
    except OSError:
        pass
    return 0.0


def measure_inline(step: Callable[[], T], servers: ServerCpu) -> tuple[T, Cost]:
    """Run `step` in this process; its client CPU is this process's CPU time meanwhile."""
    before = servers.snapshot()
    cpu_started, started = time.process_time(), time.perf_counter()
    result = step()
    wall_s, cpu_s = time.perf_counter() - started, time.process_time() - cpu_started
    after = servers.snapshot()
    return result, Cost(wall_s, cpu_s, after["mongo"] - before["mongo"], after["postgres"] - before["postgres"])


class ProcessFailedError(RuntimeError):
    """A measured subprocess exited non-zero; the message carries the tail of its log."""


def measure_process(command: Sequence[str], *, env: dict[str, str], cwd: Path, log: Path, servers: ServerCpu) -> Cost:
    """Run `command` to its end, output to `log`; raise `ProcessFailedError` when it fails."""
    before = servers.snapshot()
    started = time.perf_counter()
    with log.open("w") as out:
        # A session of its own: when the benchmark is stopped, the command and every process it started go too.
        process = subprocess.Popen(
            command, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        peak, status, usage = 0.0, 0, None
        try:
            while usage is None:
                peak = max(peak, peak_rss_mb(process.pid))
                pid, status, rusage = os.wait4(process.pid, os.WNOHANG)
                if pid:
                    usage = rusage
                else:
                    time.sleep(RSS_POLL_S)
        except BaseException:
            with suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            raise
        process.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    wall_s = time.perf_counter() - started
    after = servers.snapshot()
    if process.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise ProcessFailedError(f"{' '.join(command[:6])} exited {process.returncode}; log {log}:\n{tail}")
    return Cost(
        wall_s,
        usage.ru_utime + usage.ru_stime,
        after["mongo"] - before["mongo"],
        after["postgres"] - before["postgres"],
        peak,
        usage.ru_maxrss * 1024 / 1e6,
    )
