"""product_sync_job end to end on real servers, through execute_in_process."""

from __future__ import annotations

import logging
import re
from typing import Any

import dagster as dg
import pytest
from bson import ObjectId

from etl_defs.assets import CART_DB_PRODUCT
from etl_defs.jobs import InvalidRunConfigError
from etl_defs.products.endpoints import ProductSyncEndpoints
from etl_defs.products.pipeline import PRODUCT_SYNC
from etl_defs.products.transform import PRODUCT_DOC_PROJECTION
from etl_defs.sync import Change, run_sync
from local.stack import CART_DB, PRODUCT_DB
from resources import MongoResource, PostgresResource
from tests.factories import DROP, expected_row, product_doc
from tests.helpers import Databases, RecordMongoCommands, copy_products


def run_product_sync(defs: dg.Definitions, instance: dg.DagsterInstance, **config: Any) -> dg.ExecuteInProcessResult:
    job = defs.resolve_job_def("product_sync_job")
    return job.execute_in_process(run_config=config, instance=instance, raise_on_error=False)


def plant_drift(dbs: Databases) -> tuple[list[dict], dict[str, tuple]]:
    """Products in MongoDB; in PostgreSQL some missing, some stale, one orphan."""
    docs = [product_doc() for _ in range(30)]
    dbs.product_db.products.insert_many(docs)
    cart_rows = {}
    for i, doc in enumerate(docs):
        row = expected_row(doc)
        if i % 5 == 0:
            continue  # missing
        if i % 5 == 1:
            row = (*row[:2], row[2] + 1, *row[3:])  # stale price
        if i % 5 == 2:
            row = (row[0], "old title", *row[2:])  # stale title
        cart_rows[row[0]] = row
    orphan = (str(ObjectId()), "gone", 500, "/img/gone.jpg", str(ObjectId()), 1)
    cart_rows[orphan[0]] = orphan
    with dbs.cart_conn() as conn:
        copy_products(conn, cart_rows.values())
    return docs, cart_rows


def before_keys_missing(dbs: Databases) -> set[str]:
    in_cart = set(dbs.product_rows())
    return {str(d["_id"]) for d in dbs.product_db.products.find({}, {"_id": 1})} - in_cart


def figures(result: dg.ExecuteInProcessResult) -> dict[str, Any]:
    return result.output_for_node("report_product_sync")


def test_drift_is_repaired_exactly(dbs: Databases, instance: dg.DagsterInstance, defs: dg.Definitions) -> None:
    docs, before = plant_drift(dbs)
    orphan_id = next(key for key, row in before.items() if row[1] == "gone")

    result = run_product_sync(defs, instance, batch_size=7)

    assert result.success
    expected = {str(d["_id"]): expected_row(d) for d in docs}
    expected[orphan_id] = before[orphan_id]  # orphans are counted and left alone
    assert dbs.product_rows() == expected
    got = figures(result)
    assert {k: got[k] for k in ("source_rows", "missing", "changed", "unchanged", "orphaned", "rejected")} == {
        "source_rows": 30,
        "missing": 6,
        "changed": 12,
        "unchanged": 12,
        "orphaned": 1,
        "rejected": 0,
    }
    assert (got["inserted"], got["updated"]) == (6, 12)


def test_progress_lines_count_up_to_the_summary_with_the_estimated_total(
    dbs: Databases, instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch, defs: dg.Definitions
) -> None:
    plant_drift(dbs)
    dbs.product_db.products.insert_one(product_doc(price="not a number"))
    monkeypatch.setattr("etl_defs.sync.runner.PROGRESS_INTERVAL_S", 0.0)  # a line after every batch but the first

    result = run_product_sync(defs, instance, batch_size=7)

    assert result.success
    messages = [entry.user_message for entry in instance.all_logs(result.run_id)]
    lines = [m for m in messages if m.startswith("products sync progress: ")]
    [summary] = [m for m in messages if m.startswith("products sync applied: ")]
    assert len(lines) == figures(result)["batches"] - 1 > 1  # the first batch starts the rate's window
    done = [int(re.search(r"progress: ([\d,]+) source rows", line).group(1).replace(",", "")) for line in lines]
    assert done == sorted(done) and done[-1] == figures(result)["source_rows"]
    total = dbs.product_db.products.estimated_document_count()
    assert all(f" of ~{total:,} (" in line and " rows/s, ETA " in line for line in lines)
    last_written = dict(re.findall(r"(inserted|updated|deleted)=(\d+)", lines[-1]))
    assert last_written == dict(re.findall(r"(inserted|updated|deleted)=(\d+)", summary))
    assert last_written["inserted"] == "6" and last_written["updated"] == "12"
    assert not [m for m in messages if re.match(r"products batch \d+: ", m)]  # no line per batch


def test_a_real_run_records_a_materialization_with_numeric_figures(
    dbs: Databases, instance: dg.DagsterInstance, defs: dg.Definitions
) -> None:
    plant_drift(dbs)

    result = run_product_sync(defs, instance)

    assert result.success
    materializations = result.asset_materializations_for_node("report_product_sync")
    assert [m.asset_key for m in materializations] == [CART_DB_PRODUCT]
    metadata = materializations[0].metadata
    for key in ("source_rows", "inserted", "updated", "unchanged", "orphaned", "rejected", "duration_s", "rows_per_s"):
        assert isinstance(metadata[key].value, int | float), key
    assert metadata["inserted"].value == 6 and metadata["updated"].value == 12
    event = instance.get_latest_materialization_event(CART_DB_PRODUCT)
    assert event is not None and event.run_id == result.run_id


def test_the_second_run_writes_nothing(dbs: Databases, instance: dg.DagsterInstance, defs: dg.Definitions) -> None:
    plant_drift(dbs)
    assert run_product_sync(defs, instance).success
    with dbs.cart_conn() as conn:
        xmin_before = dict(conn.execute("SELECT id, xmin::text FROM product").fetchall())

    second = run_product_sync(defs, instance)

    assert second.success
    assert (figures(second)["inserted"], figures(second)["updated"]) == (0, 0)
    assert figures(second)["missing"] == figures(second)["changed"] == 0
    with dbs.cart_conn() as conn:
        assert dict(conn.execute("SELECT id, xmin::text FROM product").fetchall()) == xmin_before


def test_a_dry_run_plans_the_same_and_writes_nothing(
    dbs: Databases, instance: dg.DagsterInstance, defs: dg.Definitions
) -> None:
    plant_drift(dbs)
    before = dbs.product_rows()

    result = run_product_sync(defs, instance, dry_run=True)

    assert result.success
    assert dbs.product_rows() == before
    got = figures(result)
    assert (got["missing"], got["changed"], got["inserted"], got["updated"]) == (6, 12, 0, 0)
    assert result.asset_materializations_for_node("report_product_sync") == []
    output = next(
        e for e in result.all_node_events if e.event_type_value == "STEP_OUTPUT" and e.step_key == "report_product_sync"
    )
    samples = output.event_specific_data.metadata["sample_keys"].value
    assert len(samples["missing"]) == 5 and len(samples["changed"]) == 5
    assert set(samples["missing"]) <= {key for key in before_keys_missing(dbs)}


def test_malformed_documents_are_rejected_and_their_batch_neighbours_land(
    dbs: Databases, instance: dg.DagsterInstance, defs: dg.Definitions
) -> None:
    good = [product_doc() for _ in range(6)]
    bad = {
        "title is missing": product_doc(title=DROP),
        "price must be a number": product_doc(price="1999"),
        "does not fit a PostgreSQL integer": product_doc(price=2**40),
        "sellerId is missing": product_doc(sellerId=DROP),
        "_id must be an ObjectId": product_doc(_id="not-an-object-id"),
    }
    # Interleave by _id so every batch of 4 holds good and bad documents together.
    dbs.product_db.products.insert_many(good + list(bad.values()))

    result = run_product_sync(defs, instance, batch_size=4)

    assert result.success
    assert dbs.product_rows() == {str(d["_id"]): expected_row(d) for d in good}
    got = figures(result)
    assert (got["rejected"], got["inserted"]) == (5, 6)
    rejections = result.asset_materializations_for_node("report_product_sync")[0].metadata["rejections"].value
    reasons = {r["key"]: r["reason"] for r in rejections}
    for reason, doc in bad.items():
        key = str(doc["_id"]) if isinstance(doc["_id"], ObjectId) else repr(doc["_id"])
        assert reasons[key].startswith(reason) or reason in reasons[key], (key, reasons.get(key))


def test_a_row_the_database_refuses_is_rejected_alone(
    dbs: Databases, instance: dg.DagsterInstance, defs: dg.Definitions
) -> None:
    docs = [product_doc() for _ in range(8)]
    refused = docs[3]
    dbs.product_db.products.insert_many(docs)
    with dbs.cart_conn() as conn:
        # A constraint the contract does not know about: only the database can refuse this row.
        conn.execute(f"ALTER TABLE product ADD CONSTRAINT no_refused CHECK (title <> '{refused['title']}')")
    try:
        result = run_product_sync(defs, instance, batch_size=8)
    finally:
        with dbs.cart_conn() as conn:
            conn.execute("ALTER TABLE product DROP CONSTRAINT no_refused")

    assert result.success
    assert dbs.product_rows() == {str(d["_id"]): expected_row(d) for d in docs if d is not refused}
    got = figures(result)
    assert (got["inserted"], got["rejected_at_write"]) == (7, 1)


def test_a_missing_target_table_fails_the_preflight_clearly(
    dbs: Databases, instance: dg.DagsterInstance, defs: dg.Definitions
) -> None:
    with dbs.cart_conn() as conn:
        conn.execute('ALTER TABLE product RENAME COLUMN "sellerId" TO seller')
    try:
        result = run_product_sync(defs, instance)
    finally:
        with dbs.cart_conn() as conn:
            conn.execute('ALTER TABLE product RENAME COLUMN seller TO "sellerId"')

    assert not result.success
    failure = result.failure_data_for_node("check_product_sync_ready")
    assert failure is not None
    assert "column product.sellerId is missing" in str(failure.error.message)


def test_run_config_with_a_bad_batch_size_is_refused_before_the_run(
    dbs: Databases, instance: dg.DagsterInstance, defs: dg.Definitions
) -> None:
    job = defs.resolve_job_def("product_sync_job")

    with pytest.raises(InvalidRunConfigError) as error:
        job.execute_in_process(run_config={"batch_size": -1}, instance=instance)

    assert str(error.value) == (
        "invalid run config: batch_size=-1: Input should be greater than or equal to 1 (allowed: 1 to 100000)"
    )
    assert instance.get_runs_count() == 0


@pytest.mark.parametrize("project_fields", [True, False], ids=["projected", "whole"])
def test_both_read_shapes_repair_the_same_drift(
    dbs: Databases, mongo_commands: RecordMongoCommands, project_fields: bool
) -> None:
    docs, _ = plant_drift(dbs)
    state = dbs.stack.state
    product_db = MongoResource(
        url=dbs.stack.mongo_url(PRODUCT_DB),
        username=state.mongo_user,
        password=state.mongo_password,
        project_fields=project_fields,
    )
    cart_db = PostgresResource(url=dbs.stack.pg_url(CART_DB))
    try:
        with mongo_commands() as commands:
            report = run_sync(
                PRODUCT_SYNC, ProductSyncEndpoints(product_db, cart_db), batch_size=7, dry_run=False, log=logging
            )
    finally:
        product_db.close()

    assert (report.inserted, report.updated, report.counts[Change.ORPHANED]) == (6, 12, 1)
    expected = {str(d["_id"]): expected_row(d) for d in docs}
    assert {key: row for key, row in dbs.product_rows().items() if key in expected} == expected
    [find] = [command for command in commands if command.name == "find"]
    assert find.body.get("projection") == (PRODUCT_DOC_PROJECTION if project_fields else None)
