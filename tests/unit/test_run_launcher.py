"""How `WorkerCheckingRunLauncher` tells a live run worker from a dead one, on real processes of this machine."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from etl_defs.run_launcher import GRPC_INFO_TAG, WORKER_MACHINE_TAG, Machine, process_started_at, worker_health

HERE = Machine.this()


def launched_tags(machine: Machine = HERE, grpc_host: str = "localhost") -> dict[str, str]:
    """The tags of a run the launcher started through a code server on `grpc_host`, on `machine`."""
    return {WORKER_MACHINE_TAG: machine.tag(), GRPC_INFO_TAG: json.dumps({"host": grpc_host, "socket": "/tmp/x"})}


def test_the_start_time_of_a_live_process_is_read_and_a_gone_or_exited_one_has_none(
    worker_process: subprocess.Popen,
) -> None:
    started = process_started_at(worker_process.pid)
    assert started is not None and abs(started - time.time()) < 5
    worker_process.kill()
    time.sleep(0.2)
    assert process_started_at(worker_process.pid) is None, "a killed child not yet reaped (a zombie) is not alive"
    worker_process.wait()
    assert process_started_at(worker_process.pid) is None


def test_a_worker_whose_process_lives_is_alive(worker_process: subprocess.Popen) -> None:
    alive, why = worker_health(launched_tags(), HERE, (worker_process.pid, time.time()))
    assert alive is True, why
    assert str(worker_process.pid) in why


def test_a_worker_whose_process_was_killed_is_dead(worker_process: subprocess.Popen) -> None:
    reported = (worker_process.pid, time.time())
    os.kill(worker_process.pid, signal.SIGKILL)
    worker_process.wait()

    alive, why = worker_health(launched_tags(), HERE, reported)

    assert alive is False
    assert why == f"its worker process {worker_process.pid} on {HERE.host} is gone (killed, or its code server was)"


def test_a_pid_taken_by_a_later_process_is_not_the_worker(worker_process: subprocess.Popen) -> None:
    # The worker reported this pid a minute before the process now holding it started.
    alive, why = worker_health(launched_tags(), HERE, (worker_process.pid, time.time() - 60))
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
