"""The terminal path an operator uses: `dagster job execute` in a subprocess."""

from __future__ import annotations

from pathlib import Path

from tests.factories import expected_row, product_doc
from tests.helpers import Databases
from tests.integration.helpers import dagster_job_execute


def test_a_dry_run_then_a_real_run_from_the_terminal(dbs: Databases, dagster_env: dict, tmp_path: Path) -> None:
    docs = [product_doc() for _ in range(12)]
    dbs.product_db.products.insert_many(docs)

    dry = dagster_job_execute(dagster_env, "product_sync_job", "dry_run: true\n", tmp_path)

    assert dry.returncode == 0, dry.stderr[-3000:]
    assert "products sync DRY RUN (nothing written): source_rows=12, missing=12" in dry.stderr
    assert dbs.product_rows() == {}

    real = dagster_job_execute(dagster_env, "product_sync_job", None, tmp_path)

    assert real.returncode == 0, real.stderr[-3000:]
    assert "products sync applied: source_rows=12, missing=12" in real.stderr
    assert "inserted=12, updated=0" in real.stderr
    assert dbs.product_rows() == {str(d["_id"]): expected_row(d) for d in docs}


def test_a_failed_step_exits_non_zero(dbs: Databases, dagster_env: dict, tmp_path: Path) -> None:
    with dbs.cart_conn() as conn:
        conn.execute("ALTER TABLE product RENAME COLUMN price TO cost")
    try:
        result = dagster_job_execute(dagster_env, "product_sync_job", None, tmp_path)
    finally:
        with dbs.cart_conn() as conn:
            conn.execute("ALTER TABLE product RENAME COLUMN cost TO price")

    assert result.returncode == 1
    assert "column product.price is missing" in result.stderr


def test_bad_run_config_is_refused_before_the_run(dbs: Databases, dagster_env: dict, tmp_path: Path) -> None:
    dbs.product_db.products.insert_many([product_doc()])

    result = dagster_job_execute(dagster_env, "product_sync_job", "batch_size: 0\n", tmp_path)

    assert result.returncode != 0
    assert "invalid run config: batch_size=0: Input should be greater than or equal to 1" in result.stderr
    assert dbs.product_rows() == {}


def test_a_bad_environment_value_fails_at_load_naming_the_variable(
    dbs: Databases, dagster_env: dict, tmp_path: Path
) -> None:
    env = {**dagster_env, "SYNC_BATCH_SIZE": "-5"}

    result = dagster_job_execute(env, "product_sync_job", None, tmp_path)

    assert result.returncode != 0
    assert "SYNC_BATCH_SIZE='-5' Input should be greater than or equal to 1" in result.stderr
