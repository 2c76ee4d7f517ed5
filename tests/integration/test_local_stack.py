"""The local stack as a new operator meets it: `make up|report|down` and `python -m local`, in any folder.

Each test starts its own servers on free ports in a folder of its own, so it never touches
the session's stack or a developer's `.local/`. As root (CI, a fresh machine), pytest's
`tmp_path` lies under a mode-700 folder, as a clone in root's home or in `mktemp -d` does:
PostgreSQL's user must still reach its files.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from local.stack import CART_DB, LocalStack, StackError, free_port, listening
from tests.helpers import REPO

pytestmark = pytest.mark.processes  # `make` and `python -m local` in a terminal


def local_env(state_dir: Path) -> dict[str, str]:
    """The LOCAL_* variables of a stack of its own, on free ports."""
    return {
        **os.environ,
        "LOCAL_STATE_DIR": str(state_dir),
        "LOCAL_MONGO_PORT": str(free_port()),
        "LOCAL_PG_PORT": str(free_port()),
        "LOCAL_PG_PASSWORD": "stack-test",
    }


def sh(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def private_folder(tmp_path: Path) -> Path:
    """A folder nobody but its owner can enter, like root's home or a `mktemp -d` folder."""
    folder = tmp_path / "private"
    folder.mkdir(mode=0o700)
    return folder


def test_a_stack_in_a_folder_other_users_cannot_enter_starts_serves_and_stops(tmp_path: Path) -> None:
    stack = LocalStack(private_folder(tmp_path) / "clone" / ".local", free_port(), free_port(), "stack-test")
    try:
        stack.up()
        with psycopg.connect(stack.pg_url(CART_DB), connect_timeout=10) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        client = stack.mongo_client(serverSelectionTimeoutMS=10_000)
        assert client.admin.command("ping")["ok"] == 1
        client.close()
        if os.geteuid() == 0:  # PostgreSQL runs as another user: its files live where that user can reach them
            assert stack.state.pg_dir is not None and not Path(stack.state.pg_dir).is_relative_to(tmp_path)
        pids = (stack.state.mongo_pid, stack.state.pg_pid)
    finally:
        stack.clean()
    assert not any(Path(f"/proc/{pid}").exists() for pid in pids)
    assert not listening(stack.state.mongo_port) and not listening(stack.state.pg_port)
    assert not stack.state_dir.exists()
    assert stack.state.pg_dir is None or not Path(stack.state.pg_dir).exists()


def test_a_failed_up_stops_the_server_it_had_started(tmp_path: Path) -> None:
    stack = LocalStack(tmp_path / ".local", free_port(), free_port(), "stack-test")
    with socket.socket() as squatter:  # PostgreSQL cannot bind its port, after SecantusDB has started
        squatter.bind(("127.0.0.1", stack.state.pg_port))
        squatter.listen()
        with pytest.raises(StackError, match=r"PostgreSQL cannot start: 127.0.0.1:\d+ is already in use"):
            stack.up()
        assert not listening(stack.state.mongo_port)
        assert not stack.mongo_running and not stack.pg_running
    stack.clean()


def test_make_honours_local_state_dir_from_up_to_down(tmp_path: Path) -> None:
    state_dir = private_folder(tmp_path) / "state"
    env = local_env(state_dir)

    up = sh(["make", "up"], env)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert (state_dir / "stack.env").exists()
        report = sh(["make", "report"], env)
        assert report.returncode == 0, report.stdout + report.stderr
        assert "products_in_mongodb" in report.stdout
        # The terminal path: `make shell` gives the stack's environment to the dagster CLI.
        shell = subprocess.run(
            ["make", "shell"],
            cwd=REPO,
            env={**env, "SHELL": "/bin/bash"},
            capture_output=True,
            text=True,
            timeout=300,
            input='echo "home=$DAGSTER_HOME"; dagster job list -m etl_defs\n',
        )
        assert shell.returncode == 0, shell.stdout + shell.stderr
        assert f"home={state_dir / 'dagster_home'}" in shell.stdout
        assert "Job: product_sync_job" in shell.stdout
    finally:
        down = sh(["make", "down"], env)
    assert down.returncode == 0, down.stdout + down.stderr
    assert "mongodb: pid" in down.stdout and "postgresql: pid" in down.stdout and "stopped" in down.stdout
    assert not listening(int(env["LOCAL_MONGO_PORT"])) and not listening(int(env["LOCAL_PG_PORT"]))
    sh([sys.executable, "-m", "local", "clean"], env)


def test_down_of_a_folder_with_no_stack_says_so_and_names_ports_still_answering(tmp_path: Path) -> None:
    running = local_env(tmp_path / "started-here")
    elsewhere = {**running, "LOCAL_STATE_DIR": str(tmp_path / "never-started")}
    python = [sys.executable, "-m", "local"]
    assert sh([*python, "up"], running).returncode == 0
    try:
        down = sh([*python, "down"], elsewhere)

        assert down.returncode == 0
        assert f"no local stack is recorded in {tmp_path / 'never-started'}: nothing to stop" in down.stdout
        assert "stopped" not in down.stdout
        assert f"127.0.0.1:{running['LOCAL_MONGO_PORT']}, the MongoDB port, still answers" in down.stderr
        assert f"127.0.0.1:{running['LOCAL_PG_PORT']}, the PostgreSQL port, still answers" in down.stderr
    finally:
        stopped = sh([*python, "clean"], running)
    assert stopped.returncode == 0, stopped.stderr
    assert "still answers" not in stopped.stderr
    assert not listening(int(running["LOCAL_MONGO_PORT"])) and not listening(int(running["LOCAL_PG_PORT"]))
