"""free_port: ports the test sessions' servers are given, never the same one twice while it may be in use."""

import os
import subprocess
import sys
from pathlib import Path

from local.stack import _ephemeral_low, _reserve, free_port


def test_a_port_held_by_a_live_process_is_not_given_again(tmp_path: Path) -> None:
    (tmp_path / "40001").write_text(str(os.getppid()))  # the process that started pytest: alive
    assert not _reserve(40001, tmp_path)
    assert (tmp_path / "40001").read_text() == str(os.getppid())


def test_a_port_whose_process_is_gone_is_taken_over(tmp_path: Path) -> None:
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / "40002").write_text(gone.stdout.strip())
    assert _reserve(40002, tmp_path)
    assert (tmp_path / "40002").read_text() == str(os.getpid())
    assert not _reserve(40002, tmp_path)  # and not twice to this process either


def test_ports_are_distinct_bindable_and_below_the_ephemeral_range() -> None:
    ports = [free_port() for _ in range(20)]
    assert len(set(ports)) == 20
    assert all(1024 <= port < _ephemeral_low() for port in ports)


def test_another_process_is_never_given_the_ports_this_one_holds() -> None:
    mine = {free_port() for _ in range(200)}  # without the marks, 500 more picks would meet about 10 of these
    code = "from local.stack import free_port; print(*[free_port() for _ in range(500)])"
    theirs = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert not mine & {int(port) for port in theirs.stdout.split()}
