"""How `WorkerCheckingRunLauncher` tells a live run worker from a dead one, on real processes of this machine."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from etl_defs.run_launcher import GRPC_INFO_TAG, WORKER_MACHINE_TAG, Machine, process_started_at, worker_health

HERE = Machine.this()


def launched_tags(machine: Machine = HERE, grpc_host: str = "localhost") -> dict[str, str]:
    """The tags of a run the launcher started through a code server on `grpc_host`, on `machine`."""
    return {WORKER_MACHINE_TAG: machine.tag(), GRPC_INFO_TAG: json.dumps({"host": grpc_host, "socket": "/tmp/x"})}


@pytest.fixture()
def worker() -> Iterator[subprocess.Popen]:
    """A real process standing in for a run worker (it only sleeps)."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield process
    process.kill()
    process.wait()


def test_the_start_time_of_a_live_process_is_read_and_a_gone_or_exited_one_has_none(
    worker: subprocess.Popen,
) -> None:
    started = process_started_at(worker.pid)
    assert started is not None and abs(started - time.time()) < 5
    worker.kill()
    time.sleep(0.2)
    assert process_started_at(worker.pid) is None, "a killed child not yet reaped (a zombie) is not alive"
    worker.wait()
    assert process_started_at(worker.pid) is None


def test_a_worker_whose_process_lives_is_alive(worker: subprocess.Popen) -> None:
    alive, why = worker_health(launched_tags(), HERE, (worker.pid, time.time()))
    assert alive is True, why
    assert str(worker.pid) in why


def test_a_worker_whose_process_was_killed_is_dead(worker: subprocess.Popen) -> None:
    reported = (worker.pid, time.time())
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait()

    alive, why = worker_health(launched_tags(), HERE, reported)

    assert alive is False
    assert why == f"its worker process {worker.pid} on {HERE.host} is gone (killed, or its code server was)"


def test_a_pid_taken_by_a_later_process_is_not_the_worker(worker: subprocess.Popen) -> None:
    # The worker reported this pid a minute before the process now holding it started.
    alive, why = worker_health(launched_tags(), HERE, (worker.pid, time.time() - 60))
    assert alive is False
    assert "the pid now belongs to a later process" in why


def test_a_worker_of_an_earlier_boot_of_this_machine_is_dead() -> None:
    earlier_boot = Machine(host=HERE.host, boot_id="00000000-0000-0000-0000-000000000000")
    alive, why = worker_health(launched_tags(earlier_boot), HERE, (os.getpid(), time.time()))
    assert alive is False
    assert why == f"its worker ran on {HERE.host} before the machine restarted"


@pytest.mark.parametrize(
    ("tags", "says"),
    [
        (launched_tags(Machine(host="other-vm", boot_id=HERE.boot_id)), "its worker runs on other-vm"),
        (launched_tags(grpc_host="user-code.internal"), "not started by a code server on this machine"),
        ({}, "not started by a code server on this machine"),  # a run from `dagster job execute`
    ],
    ids=["another machine", "a remote code server", "dagster job execute"],
)
def test_a_worker_this_machine_cannot_see_is_left_to_the_max_runtime(tags: dict[str, str], says: str) -> None:
    alive, why = worker_health(tags, HERE, (999_999_999, time.time()))  # no such pid: never looked at
    assert alive is None
    assert says in why


def test_a_worker_that_has_not_reported_its_process_yet_is_not_judged() -> None:
    alive, why = worker_health(launched_tags(), HERE, None)
    assert alive is None
    assert why == "its worker has not reported its process yet"
