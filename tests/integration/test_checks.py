"""The validation checks (the old `/validate`) on real servers: validation_job in process and from the terminal."""

import uuid
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from bson import ObjectId

from etl_defs.assets import CART_DB_PRODUCT, ORDER_DB_CARTS
from etl_defs.checks import CART_CHECK_KEYS, PRODUCT_CHECK_KEYS, VALIDATION_CHECK_KEYS
from etl_defs.definitions import build_definitions
from etl_defs.settings import SyncSettings
from tests.factories import expected_row, product_doc
from tests.helpers import Databases, copy_carts, copy_products
from tests.integration.helpers import dagster_job_execute

ERROR = dg.AssetCheckSeverity.ERROR
WARN = dg.AssetCheckSeverity.WARN


def run_job(definitions: dg.Definitions, name: str, instance: dg.DagsterInstance, **config: Any):
    return definitions.resolve_job_def(name).execute_in_process(run_config=config, instance=instance)


def results(run: dg.ExecuteInProcessResult) -> dict[str, dg.AssetCheckEvaluation]:
    return {evaluation.check_name: evaluation for evaluation in run.get_asset_check_evaluations()}


def meta(evaluation: dg.AssetCheckEvaluation) -> dict[str, Any]:
    return {key: value.value for key, value in evaluation.metadata.items()}


def plant_product_drift(dbs: Databases) -> dict[str, set[str]]:
    """20 products: 4 missing from the Cart DB, 3 stale there, 2 orphans there; the rest equal."""
    docs = [product_doc() for _ in range(20)]
    dbs.product_db.products.insert_many(docs)
    keys: dict[str, set[str]] = {"missing": set(), "stale": set(), "orphaned": set()}
    rows = []
    for i, doc in enumerate(docs):
        row = expected_row(doc)
        if i < 4:
            keys["missing"].add(row[0])
            continue
        if i < 7:
            row = (*row[:2], row[2] + 5, *row[3:])  # an old price
            keys["stale"].add(row[0])
        rows.append(row)
    for _ in range(2):
        orphan = (str(ObjectId()), "deleted at the source", 300, "/img/x.jpg", str(ObjectId()), 1)
        keys["orphaned"].add(orphan[0])
        rows.append(orphan)
    with dbs.cart_conn() as conn:
        copy_products(conn, rows)
    return keys


def test_product_drift_is_reported_with_counts_samples_and_severities(
    dbs: Databases, instance, defs: dg.Definitions
) -> None:
    keys = plant_product_drift(dbs)
    before = dbs.product_rows()

    run = run_job(defs, "validation_job", instance)

    assert run.success  # failed checks do not fail the run (blocking=False)
    got = results(run)
    missing, stale, orphaned = got["no_missing_products"], got["no_stale_products"], got["no_orphaned_products"]
    assert (missing.passed, missing.severity, meta(missing)["count"]) == (False, ERROR, 4)
    assert (stale.passed, stale.severity, meta(stale)["count"]) == (False, ERROR, 3)
    assert (orphaned.passed, orphaned.severity, meta(orphaned)["count"]) == (False, WARN, 2)
    assert set(meta(missing)["sample_keys"]) == keys["missing"]
    assert set(meta(stale)["sample_keys"]) == keys["stale"]
    assert set(meta(orphaned)["sample_keys"]) == keys["orphaned"]
    assert meta(missing)["source_rows"] == 20 and meta(missing)["target_rows"] == 18
    assert missing.description.startswith("4 products are in the Product MongoDB but not in the Cart DB (e.g. ")
    assert all(evaluation.asset_key == CART_DB_PRODUCT for evaluation in (missing, stale, orphaned))
    assert dbs.product_rows() == before  # read-only


def test_after_a_product_sync_missing_and_stale_pass_and_orphans_still_warn(
    dbs: Databases, instance, defs: dg.Definitions
) -> None:
    plant_product_drift(dbs)
    assert run_job(defs, "product_sync_job", instance).success

    got = results(run_job(defs, "validation_job", instance))

    assert got["no_missing_products"].passed and meta(got["no_missing_products"])["count"] == 0
    assert got["no_stale_products"].passed and meta(got["no_stale_products"])["count"] == 0
    assert not got["no_orphaned_products"].passed  # the product sync never deletes orphans
    assert meta(got["no_orphaned_products"])["count"] == 2


def test_samples_stay_at_five_whatever_the_drift_and_batch_size(
    dbs: Databases, instance, settings: SyncSettings
) -> None:
    dbs.product_db.products.insert_many([product_doc() for _ in range(40)])  # all 40 missing
    small_batches = build_definitions(settings.model_copy(update={"sync_batch_size": 3}))

    got = results(run_job(small_batches, "validation_job", instance))

    assert meta(got["no_missing_products"])["count"] == 40
    assert len(meta(got["no_missing_products"])["sample_keys"]) == 5


def test_rejected_source_records_are_counted_apart_from_missing(dbs: Databases, instance, defs: dg.Definitions) -> None:
    good, bad = product_doc(), product_doc(price=5)  # below the contract minimum
    dbs.product_db.products.insert_many([good, bad])
    with dbs.cart_conn() as conn:
        copy_products(conn, [expected_row(good)])

    got = meta(results(run_job(defs, "validation_job", instance))["no_missing_products"])

    assert got["count"] == 0
    assert got["rejected_source_records"] == 1 and got["rejected_sample_keys"] == [str(bad["_id"])]


def plant_cart_drift(defs: dg.Definitions, dbs: Databases, instance: dg.DagsterInstance) -> dict[str, set[str]]:
    """Synced carts, then drift in the Order DB: 3 missing, 2 outdated, 1 changed price, 2 orphans."""
    docs = [product_doc() for _ in range(3)]
    dbs.product_db.products.insert_many(docs)
    with dbs.cart_conn() as conn:
        copy_products(conn, [expected_row(doc) for doc in docs])
    carts = [(str(uuid.uuid4()), 1 + i % 3, f"user-{i % 4}", 1, str(docs[i % 3]["_id"])) for i in range(12)]
    with dbs.cart_conn() as conn:
        copy_carts(conn, carts)
    assert run_job(defs, "cart_sync_job", instance).success
    ids = sorted(cart[0] for cart in carts)
    order = dbs.order_db.carts
    order.delete_many({"cartId": {"$in": ids[:3]}})
    order.update_many({"cartId": {"$in": ids[3:5]}}, {"$set": {"version": 0}})
    order.update_one({"cartId": ids[5]}, {"$inc": {"productPrice": 7}})
    orphans = [str(uuid.uuid4()) for _ in range(2)]
    template = order.find_one({"cartId": ids[6]}, {"_id": 0})
    order.insert_many([{**template, "cartId": orphan} for orphan in orphans])
    return {"missing": set(ids[:3]), "outdated": set(ids[3:6]), "orphaned": set(orphans)}


def test_cart_drift_is_reported_on_order_db_carts(dbs: Databases, instance, defs: dg.Definitions) -> None:
    keys = plant_cart_drift(defs, dbs, instance)

    run = run_job(defs, "validation_job", instance)

    assert run.success
    got = results(run)
    missing, outdated, orphaned = got["no_missing_carts"], got["no_outdated_carts"], got["no_orphaned_carts"]
    assert all(evaluation.asset_key == ORDER_DB_CARTS for evaluation in (missing, outdated, orphaned))
    assert (missing.passed, missing.severity, meta(missing)["count"]) == (False, ERROR, 3)
    assert (outdated.passed, outdated.severity, meta(outdated)["count"]) == (False, ERROR, 3)
    assert (meta(outdated)["outdated"], meta(outdated)["changed"]) == (2, 1)
    assert (orphaned.passed, orphaned.severity, meta(orphaned)["count"]) == (False, WARN, 2)
    assert set(meta(missing)["sample_keys"]) == keys["missing"]
    assert set(meta(outdated)["sample_keys"]) == keys["outdated"]
    assert set(meta(orphaned)["sample_keys"]) == keys["orphaned"]
    # The product checks ran in the same job and found nothing wrong.
    assert all(got[key.name].passed for key in PRODUCT_CHECK_KEYS)


def test_the_cart_sync_clears_missing_and_outdated(dbs: Databases, instance, defs: dg.Definitions) -> None:
    plant_cart_drift(defs, dbs, instance)
    assert run_job(defs, "cart_sync_job", instance).success

    got = results(run_job(defs, "validation_job", instance))

    assert got["no_missing_carts"].passed and got["no_outdated_carts"].passed
    assert meta(got["no_orphaned_carts"])["count"] == 2


def test_validation_job_runs_only_the_six_validation_checks(dbs: Databases, instance, defs: dg.Definitions) -> None:
    run = run_job(defs, "validation_job", instance)

    assert run.success
    assert {e.asset_check_key for e in run.get_asset_check_evaluations()} == set(VALIDATION_CHECK_KEYS)
    assert run.get_asset_materialization_events() == []


def test_one_check_can_run_alone(dbs: Databases, instance, defs: dg.Definitions) -> None:
    plant_product_drift(dbs)
    one = defs.resolve_job_def("validation_job").get_subset(asset_check_selection={PRODUCT_CHECK_KEYS[1]})

    run = one.execute_in_process(instance=instance)

    assert [(e.check_name, meta(e)["count"]) for e in run.get_asset_check_evaluations()] == [("no_stale_products", 3)]
    assert CART_CHECK_KEYS[0] not in {e.asset_check_key for e in run.get_asset_check_evaluations()}


def test_validation_job_from_the_terminal(dbs: Databases, dagster_env: dict, tmp_path: Path) -> None:
    plant_product_drift(dbs)

    result = dagster_job_execute(dagster_env, "validation_job", None, tmp_path)

    assert result.returncode == 0, result.stderr[-3000:]
    assert "ERROR cart_db/product no_missing_products: 4 products are in the Product MongoDB" in result.stderr
    assert "WARN cart_db/product no_orphaned_products: 2 Cart DB products" in result.stderr
    assert "PASSED order_db/carts no_missing_carts: 0 carts" in result.stderr
    assert "RUN_SUCCESS" in result.stderr


@pytest.mark.faults
def test_a_database_down_fails_the_validation_run_after_retries_instead_of_passing(
    dbs: Databases, instance, defs: dg.Definitions
) -> None:
    plant_product_drift(dbs)
    dbs.stack.stop_postgres()
    try:
        run = defs.resolve_job_def("validation_job").execute_in_process(instance=instance, raise_on_error=False)
    finally:
        dbs.stack.start_postgres()

    assert not run.success
    assert run.get_asset_check_evaluations() == []  # nothing claimed to pass
    failures = [event for event in run.all_events if event.event_type == dg.DagsterEventType.STEP_FAILURE]
    assert {event.step_key for event in failures} == {"validate_products", "validate_carts"}
    assert all("Cart PostgreSQL" in event.step_failure_data.error.message for event in failures)
    assert all("gave up after 3 retries; nothing was checked" in e.step_failure_data.error.message for e in failures)
    retries = [event for event in run.all_events if event.event_type == dg.DagsterEventType.STEP_UP_FOR_RETRY]
    assert len(retries) == 6  # three per check step
