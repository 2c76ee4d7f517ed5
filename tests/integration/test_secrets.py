"""Secrets never leak: the suite runs with recognisable passwords (MONGO_PASSWORD and the
one inside CART_DB_URL), and these tests search every surface an operator or a log
shipper sees for them: log lines, the Dagster event log, run config, tags, metadata,
error messages and the terminal output of the CLI. (The webserver's GraphQL answers are
scanned in test_webserver.py, which owns the running webserver.)"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from urllib.parse import quote

import dagster as dg
import pytest

from local.dagster_dev import DAGSTER
from local.stack import DAGSTER_DB
from tests.factories import DROP, product_doc
from tests.helpers import MONGO_TEST_PASSWORD, PG_TEST_PASSWORD, REPO, TEST_SECRETS, Databases


def secrets_in(text: str) -> list[str]:
    """Which test secrets (plain or URL-encoded) occur in `text`."""
    return [s for s in TEST_SECRETS if s in text or quote(s, safe="") in text]


def test_the_suite_really_runs_with_the_secrets(service_env: dict[str, str]) -> None:
    assert os.environ["MONGO_PASSWORD"] == MONGO_TEST_PASSWORD
    assert PG_TEST_PASSWORD in os.environ["CART_DB_URL"]
    assert secrets_in(f"x{MONGO_TEST_PASSWORD}y") == [MONGO_TEST_PASSWORD]  # the scanner finds what it should


def _run_everything(
    dbs: Databases, defs: dg.Definitions, instance: dg.DagsterInstance
) -> list[dg.ExecuteInProcessResult]:
    """Every job, real and dry, with rejections, plus a run that fails on an unreachable database."""
    dbs.product_db.products.insert_many([product_doc() for _ in range(5)] + [product_doc(title=DROP)])
    results = []
    for job, config in [
        ("product_sync_job", {"dry_run": True}),
        ("product_sync_job", {}),
        ("cart_sync_job", {}),
        ("full_sync_job", {"dry_run": True}),
        ("full_sync_job", {"prune_orphans": True}),
        ("validation_job", None),
    ]:
        result = defs.resolve_job_def(job).execute_in_process(
            run_config=config, instance=instance, raise_on_error=False
        )
        assert result.success, job
        results.append(result)
    return results


def test_event_log_run_config_tags_metadata_and_errors_hold_no_secret(
    dbs: Databases,
    instance: dg.DagsterInstance,
    capfd: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    defs: dg.Definitions,
) -> None:
    results = _run_everything(dbs, defs, instance)
    # A failed run: the Cart DB (password and all) on a port where nothing listens.
    closed = dbs.stack.pg_url("cart").replace(f":{dbs.stack.state.pg_port}/", ":1/")
    monkeypatch.setenv("CART_DB_URL", closed)
    failed = defs.resolve_job_def("product_sync_job").execute_in_process(instance=instance, raise_on_error=False)
    assert not failed.success
    failure = failed.failure_data_for_node("check_product_sync_ready")
    assert failure is not None
    assert "Failure: Cart PostgreSQL (127.0.0.1:1/cart) is unavailable" in failure.error.message

    scanned = 0
    for result in [*results, failed]:
        run = instance.get_run_by_id(result.run_id)
        assert run is not None
        assert secrets_in(dg.serialize_value(run)) == [], f"run record of {run.job_name}"
        for entry in instance.all_logs(result.run_id):
            assert secrets_in(dg.serialize_value(entry)) == [], entry.message
            scanned += 1
    printed = capfd.readouterr()
    assert secrets_in(printed.out + printed.err) == []
    assert scanned > 100  # the scan saw the whole event log, not an empty one
    assert "rejected" in printed.err  # and the log lines it scanned are the runs' own


def test_resource_config_is_stored_as_variable_names(
    dbs: Databases, instance: dg.DagsterInstance, defs: dg.Definitions
) -> None:
    result = defs.resolve_job_def("product_sync_job").execute_in_process(instance=instance)

    snapshot = instance.get_job_snapshot(instance.get_run_by_id(result.run_id).job_snapshot_id)
    serialized = dg.serialize_value(snapshot)
    assert secrets_in(serialized) == []
    assert "MONGO_PASSWORD" in serialized and "CART_DB_URL" in serialized


def test_the_cli_prints_no_secret_on_success_or_failure(dbs: Databases, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "DAGSTER_PG_URL": dbs.stack.pg_url(DAGSTER_DB, scheme="postgresql+psycopg2"),
    }
    dbs.product_db.products.insert_many([product_doc(), product_doc(price="oops")])
    command = [DAGSTER, "job", "execute", "-m", "etl_defs", "-j", "full_sync_job"]

    ok = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    wrong_password = {**env, "MONGO_PASSWORD": "not-" + MONGO_TEST_PASSWORD[::-1]}
    refused = subprocess.run(command, env=wrong_password, cwd=REPO, capture_output=True, text=True, timeout=300)
    bad_url = {**env, "CART_DB_URL": env["CART_DB_URL"].replace("postgresql://", "mysql://")}
    unloadable = subprocess.run(command, env=bad_url, cwd=REPO, capture_output=True, text=True, timeout=300)

    assert ok.returncode == 0, ok.stderr[-2000:]
    assert refused.returncode == 1 and "authentication failed" in refused.stderr
    assert unloadable.returncode != 0 and "CART_DB_URL='mysql://shop:***@" in unloadable.stderr
    for name, process in (("success", ok), ("auth failure", refused), ("bad URL", unloadable)):
        assert secrets_in(process.stdout + process.stderr) == [], name
