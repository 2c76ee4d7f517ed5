"""The local stack's environment for the daemon: Dagster's launch deadline is the run's start timeout."""

from __future__ import annotations

from pathlib import Path

import pytest

from local.stack import LocalStack
from tests.helpers import LAUNCH_DEADLINE_S


def stack(tmp_path: Path) -> LocalStack:
    return LocalStack(tmp_path / "state", mongo_port=27017, pg_port=5432, pg_password="unused")


def test_the_daemon_waits_for_a_launch_as_long_as_the_start_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DAGSTER_GRPC_TIMEOUT_SECONDS", raising=False)
    assert stack(tmp_path).env()["DAGSTER_GRPC_TIMEOUT_SECONDS"] == str(LAUNCH_DEADLINE_S)  # the start timeout


def test_an_operators_own_launch_deadline_is_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DAGSTER_GRPC_TIMEOUT_SECONDS", "300")
    assert stack(tmp_path).env()["DAGSTER_GRPC_TIMEOUT_SECONDS"] == "300"
