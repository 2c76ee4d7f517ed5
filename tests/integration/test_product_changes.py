"""product_changes_sensor and keyed product syncs, on real SecantusDB and PostgreSQL.

The sensor is evaluated through `build_sensor_context` against a real instance, and each
run it requests is executed for real with its run config and tags, as the daemon would.
"""

from __future__ import annotations

import math
import subprocess
import time
from typing import Any

import dagster as dg
import pytest
from bson import ObjectId

from etl_defs.assets import CART_DB_PRODUCT
from etl_defs.definitions import build_definitions
from etl_defs.jobs import InvalidRunConfigError
from etl_defs.products.sensors import CHANGES_TRIGGER, HISTORY_LOST_TRIGGER, MAX_KEYS_PER_RUN, ChangesCursor
from etl_defs.run_config import MAX_SYNC_KEYS
from etl_defs.settings import SyncSettings
from etl_defs.tags import KEYED_REPAIR_MAX_RUNTIME_S, MAX_RETRIES_TAG, MAX_RUNTIME_TAG, OLDEST_CHANGE_TAG, TRIGGER_TAG
from tests.factories import expected_row, product_doc
from tests.helpers import (
    Databases,
    RecordMongoCommands,
    copy_products,
    monitor_started_run,
    run_failure_message,
)
from tests.integration.helpers import LogLines, started_on_this_machine, sync_lock_held_elsewhere

SENSOR = "product_changes_sensor"


def tick(
    defs: dg.Definitions, instance: dg.DagsterInstance, cursor: str | None, log: list[str] | None = None
) -> dg.SensorResult:
    """One evaluation of the sensor, as the daemon runs it (its log lines into `log`, when given)."""
    sensor = defs.resolve_sensor_def(SENSOR)
    with dg.build_sensor_context(instance=instance, cursor=cursor, resources=defs.resources) as context:
        if log is not None:
            context.log.addHandler(LogLines(log))
        result = sensor(context)
    assert isinstance(result, dg.SensorResult)
    return result


def execute(defs: dg.Definitions, instance: dg.DagsterInstance, request: dg.RunRequest) -> dg.ExecuteInProcessResult:
    """The requested run, executed for real with its run config and tags."""
    job = defs.resolve_job_def("product_sync_job")
    return job.execute_in_process(
        run_config=request.run_config, tags=request.tags, instance=instance, raise_on_error=False
    )


def in_step(dbs: Databases, count: int) -> list[dict[str, Any]]:
    """`count` products in MongoDB, copied exactly into the Cart DB."""
    docs = [product_doc() for _ in range(count)]
    dbs.product_db.products.insert_many(docs)
    with dbs.cart_conn() as conn:
        copy_products(conn, [expected_row(doc) for doc in docs])
    return docs


def materialization(result: dg.ExecuteInProcessResult) -> dict[str, Any]:
    [event] = [e for e in result.get_asset_materialization_events() if e.asset_key == CART_DB_PRODUCT]
    return {key: value.value for key, value in event.materialization.metadata.items()}


def test_a_tick_requests_one_run_for_exactly_the_changed_products_which_repairs_them(
    dbs: Databases, instance: dg.DagsterInstance, defs: dg.Definitions
) -> None:
    docs = in_step(dbs, 20)
    products = dbs.product_db.products

    first = tick(defs, instance, None)
    assert first.run_requests == []
    assert first.skip_reason is not None and "first tick" in first.skip_reason.skip_message
    assert ChangesCursor.parse(first.cursor).token is not None

    updated = docs[:5]
    for n, doc in enumerate(updated):
        products.update_one({"_id": doc["_id"]}, {"$set": {"price": 1000 + n}})
    inserted = [product_doc() for _ in range(3)]
    products.insert_many(inserted)
    deleted = docs[5]
    products.delete_one({"_id": deleted["_id"]})
    malformed = docs[6]
    products.update_one({"_id": malformed["_id"]}, {"$set": {"price": "twelve"}})
    changed = {str(d["_id"]) for d in [*updated, *inserted, deleted, malformed]}

    second = tick(defs, instance, first.cursor)

    [request] = second.run_requests
    assert set(request.run_config["keys"]) == changed
    assert request.tags[TRIGGER_TAG] == CHANGES_TRIGGER
    assert request.run_key and request.run_key.startswith(CHANGES_TRIGGER)
    result = execute(defs, instance, request)
    assert result.success
    figures = result.output_for_node("report_product_sync")
    assert (figures["missing"], figures["changed"], figures["rejected"], figures["orphaned"]) == (3, 5, 1, 1)
    assert (figures["inserted"], figures["updated"], figures["source_rows"]) == (3, 5, 9)
    rows = dbs.product_rows()
    for doc in [*updated, *inserted]:
        current = products.find_one({"_id": doc["_id"]})
        assert rows[str(doc["_id"])] == expected_row(current)
    assert rows[str(deleted["_id"])] == expected_row(deleted), "a product deleted at the source is left alone"
    assert rows[str(malformed["_id"])] == expected_row(malformed), "a rejected product keeps its row"
    metadata = materialization(result)
    assert metadata["scope"] == "keys" and metadata["keys"] == len(changed) == 10
    [rejection] = metadata["rejections"]
    assert rejection["key"] == str(malformed["_id"]) and "price must be a number" in rejection["reason"]
    oldest = request.tags[OLDEST_CHANGE_TAG]
    assert 0 <= metadata["change_lag_s"] < 120, f"lag from {oldest}"

    third = tick(defs, instance, second.cursor)
    assert third.run_requests == []
    assert third.skip_reason is not None and "no product changed" in third.skip_reason.skip_message
    assert ChangesCursor.parse(third.cursor).token != ChangesCursor.parse(second.cursor).token, "an idle tick moves on"


def test_a_tick_evaluated_twice_gives_the_same_run_key(
    dbs: Databases, instance: dg.DagsterInstance, defs: dg.Definitions
) -> None:
    in_step(dbs, 3)
    first = tick(defs, instance, None)
    dbs.product_db.products.update_many({}, {"$inc": {"price": 1}})

    again = [tick(defs, instance, first.cursor).run_requests[0] for _ in range(2)]

    assert again[0].run_key == again[1].run_key
    assert again[0].run_config == again[1].run_config


def test_a_burst_lands_in_bounded_runs_and_every_change_lands(
    dbs: Databases, instance: dg.DagsterInstance, defs: dg.Definitions
) -> None:
    burst = 20_000
    in_step(dbs, burst)
    cursor = tick(defs, instance, None).cursor
    dbs.product_db.products.update_many({}, {"$inc": {"price": 7}})

    requests = []
    for _ in range(2 * math.ceil(burst / MAX_KEYS_PER_RUN) + 2):
        result = tick(defs, instance, cursor)
        cursor = result.cursor
        if not result.run_requests:
            break
        requests.extend(result.run_requests)
    assert len(requests) == math.ceil(burst / MAX_KEYS_PER_RUN)
    assert all(len(r.run_config["keys"]) <= MAX_KEYS_PER_RUN for r in requests)
    assert len({r.run_key for r in requests}) == len(requests)
    for request in requests:
        assert execute(defs, instance, request).success
    expected = {str(doc["_id"]): expected_row(doc) for doc in dbs.product_db.products.find()}
    assert dbs.product_rows() == expected
    assert all(row[2] >= 107 for row in expected.values())  # every product got its +7


@pytest.mark.parametrize(
    "token", [{"_data": "00"}, {"_data": "8263a1b2c3000000012b022c0100296e5a1004"}], ids=["garbled", "unknown"]
)
def test_a_token_that_cannot_resume_requests_one_full_sync_and_a_fresh_cursor(
    dbs: Databases, instance: dg.DagsterInstance, token: dict[str, str], defs: dg.Definitions
) -> None:
    in_step(dbs, 2)
    stale = ChangesCursor(token=token, failures_until=time.time()).text()
    log: list[str] = []

    result = tick(defs, instance, stale, log)

    [request] = result.run_requests
    assert request.run_config == {}, "a full product_sync_job, not a keyed one"
    assert request.tags == {TRIGGER_TAG: HISTORY_LOST_TRIGGER}
    [said] = [line for line in log if "cannot resume from the saved token" in line]
    assert said.endswith("taking a fresh token and requesting a full product_sync_job")
    fresh = ChangesCursor.parse(result.cursor).token
    assert fresh is not None and fresh != token
    assert execute(defs, instance, request).success
    # The fresh token resumes: a change after it is seen by the next tick.
    dbs.product_db.products.update_many({}, {"$inc": {"quantity": 1}})
    [follow_up] = tick(defs, instance, result.cursor).run_requests
    assert len(follow_up.run_config["keys"]) == 2


def test_an_unreadable_cursor_is_treated_as_history_lost(
    dbs: Databases, instance: dg.DagsterInstance, defs: dg.Definitions
) -> None:
    result = tick(defs, instance, "not json")

    [request] = result.run_requests
    assert request.run_config == {} and request.tags == {TRIGGER_TAG: HISTORY_LOST_TRIGGER}
    assert ChangesCursor.parse(result.cursor).token is not None


def test_a_product_whose_id_is_not_an_object_id_is_reported_not_requested(
    dbs: Databases, instance: dg.DagsterInstance, defs: dg.Definitions
) -> None:
    [doc] = in_step(dbs, 1)
    cursor = tick(defs, instance, None).cursor
    dbs.product_db.products.insert_one(product_doc(_id="sku-17"))
    dbs.product_db.products.update_one({"_id": doc["_id"]}, {"$set": {"price": 999}})

    log: list[str] = []
    [request] = tick(defs, instance, cursor, log).run_requests

    assert request.run_config == {"keys": [str(doc["_id"])]}
    assert "product with _id 'sku-17' changed: not an ObjectId, so no sync can take it" in log


def test_a_keyed_run_reads_only_its_keys_on_both_sides(
    dbs: Databases, instance: dg.DagsterInstance, defs: dg.Definitions, mongo_commands: RecordMongoCommands
) -> None:
    docs = in_step(dbs, 3000)
    changed = docs[100:105]
    for doc in changed:
        dbs.product_db.products.update_one({"_id": doc["_id"]}, {"$set": {"title": "renamed"}})
    keys = sorted(str(doc["_id"]) for doc in changed)
    before = product_table_reads(dbs)

    with mongo_commands() as commands:
        result = defs.resolve_job_def("product_sync_job").execute_in_process(
            run_config={"keys": keys}, instance=instance
        )

    assert result.success
    figures = result.output_for_node("report_product_sync")
    assert (figures["source_rows"], figures["changed"], figures["updated"]) == (5, 5, 5)
    on_products = [c for c in commands if "products" in (c.body.get("find"), c.body.get("collection"))]
    assert {c.name for c in on_products} <= {"find", "getMore"}, "no scan, count or aggregate of the collection"
    product_finds = [c for c in on_products if c.name == "find"]
    assert product_finds, "the run read nothing from the Product DB"
    assert all(set(c.body["filter"]["_id"]["$in"]) == {ObjectId(k) for k in keys} for c in product_finds)
    assert sum(c.returned for c in on_products) == 5
    reads = wait_for_table_reads(dbs, before)
    assert reads["seq_scan"] == 0, reads
    assert reads["idx_tup_fetch"] >= len(keys), reads
    assert reads["idx_tup_fetch"] <= 2 * len(keys), reads  # the keyed read, and the upsert's conflict checks
    assert dbs.product_rows()[keys[0]][1] == "renamed"


def product_table_reads(dbs: Databases) -> dict[str, int]:
    with dbs.cart_conn() as conn:
        row = conn.execute(
            "SELECT seq_scan, seq_tup_read, coalesce(idx_tup_fetch, 0) "
            "FROM pg_stat_user_tables WHERE relname = 'product'"
        ).fetchone()
    assert row is not None
    return {"seq_scan": row[0], "seq_tup_read": row[1], "idx_tup_fetch": row[2]}


def wait_for_table_reads(dbs: Databases, before: dict[str, int]) -> dict[str, int]:
    """The product table's reads since `before`, once the run's backends reported their statistics
    (PostgreSQL 15 flushes them at most once a second, and within 10 s of a backend going idle)."""
    deadline = time.monotonic() + 15
    while True:
        now = product_table_reads(dbs)
        delta = {key: now[key] - before[key] for key in now}
        if delta["idx_tup_fetch"] > 0 or time.monotonic() > deadline:
            return delta
        time.sleep(0.5)


def test_keys_past_the_bound_or_not_object_ids_are_refused_before_the_run(
    instance: dg.DagsterInstance, defs: dg.Definitions
) -> None:
    job = defs.resolve_job_def("product_sync_job")
    too_many = [str(ObjectId()) for _ in range(MAX_SYNC_KEYS + 1)]

    with pytest.raises(InvalidRunConfigError) as refused:
        job.execute_in_process(run_config={"keys": too_many}, instance=instance)
    assert f"{MAX_SYNC_KEYS + 1} keys is more than the {MAX_SYNC_KEYS} one run takes" in str(refused.value)
    assert len(str(refused.value)) < 500, "the refusal does not quote ten thousand keys"

    with pytest.raises(InvalidRunConfigError) as refused:
        job.execute_in_process(run_config={"keys": ["not-an-id"]}, instance=instance)
    assert "product ids are 24 hex digits (an ObjectId); not: 'not-an-id'" in str(refused.value)
    assert instance.get_runs() == [], "nothing started"


def test_a_keyed_run_that_finds_the_lock_held_fails_and_its_keys_are_requested_again(
    dbs: Databases, instance: dg.DagsterInstance, defs: dg.Definitions
) -> None:
    docs = in_step(dbs, 4)
    cursor = tick(defs, instance, None).cursor
    dbs.product_db.products.update_one({"_id": docs[0]["_id"]}, {"$set": {"price": 4321}})
    first = tick(defs, instance, cursor)
    [request] = first.run_requests

    with sync_lock_held_elsewhere(dbs, "products"):  # a full product sync holds it, started in a terminal
        failed = execute(defs, instance, request)
    assert not failed.success
    assert "another run holds the 'products' sync lock" in failure_message(failed)

    dbs.product_db.products.update_one({"_id": docs[1]["_id"]}, {"$set": {"price": 1234}})
    retry = tick(defs, instance, first.cursor)
    [again] = retry.run_requests
    assert set(again.run_config["keys"]) == {str(docs[0]["_id"]), str(docs[1]["_id"])}
    assert again.tags[OLDEST_CHANGE_TAG] == request.tags[OLDEST_CHANGE_TAG], "the lag counts from the first change"
    assert execute(defs, instance, again).success
    rows = dbs.product_rows()
    assert (rows[str(docs[0]["_id"])][2], rows[str(docs[1]["_id"])][2]) == (4321, 1234)
    # Requested again once: the tick after does not ask for the failed run's keys a second time.
    assert tick(defs, instance, retry.cursor).run_requests == []


def failure_message(result: dg.ExecuteInProcessResult) -> str:
    """The step failures' messages, with the errors they were caused by."""
    messages = []
    for event in result.get_step_failure_events():
        error = event.step_failure_data.error
        while error is not None:
            messages.append(error.message)
            error = error.cause
    return "\n".join(messages)


def test_a_keyed_sync_does_not_set_off_a_whole_table_validation(
    dbs: Databases, instance: dg.DagsterInstance, defs: dg.Definitions
) -> None:
    docs = in_step(dbs, 3)
    validate = defs.resolve_sensor_def("validate_after_sync_sensor")
    keyed = defs.resolve_job_def("product_sync_job").execute_in_process(
        run_config={"keys": [str(docs[0]["_id"])]}, instance=instance
    )
    assert keyed.success and materialization(keyed)["scope"] == "keys"

    with dg.build_sensor_context(instance=instance) as context:
        after_keyed = validate(context)
    assert after_keyed.run_requests == []
    full = defs.resolve_job_def("product_sync_job").execute_in_process(instance=instance)
    keyed_again = defs.resolve_job_def("product_sync_job").execute_in_process(
        run_config={"keys": [str(docs[1]["_id"])]}, instance=instance
    )
    assert keyed_again.success
    with dg.build_sensor_context(instance=instance, cursor=after_keyed.cursor) as context:
        after_full = validate(context)
    [request] = after_full.run_requests
    assert request.tags["etl-sync/validates-run"] == full.run_id, "the whole-table sync, behind a newer keyed one"


def test_the_sensor_follows_its_interval_setting_and_enable_scheduler(settings: SyncSettings) -> None:
    custom = settings.model_copy(update={"product_cdc_interval_seconds": 7, "enable_scheduler": True})

    on = build_definitions(custom).resolve_sensor_def(SENSOR)
    off = build_definitions(custom.model_copy(update={"enable_scheduler": False})).resolve_sensor_def(SENSOR)

    assert on.minimum_interval_seconds == 7
    assert (on.default_status, off.default_status) == (dg.DefaultSensorStatus.RUNNING, dg.DefaultSensorStatus.STOPPED)
    assert on.job_name == "product_sync_job"


def test_a_keyed_run_whose_worker_died_is_failed_by_run_monitoring_and_its_keys_are_requested_again(
    dbs: Databases, monitored_instance: dg.DagsterInstance, worker_process: subprocess.Popen, defs: dg.Definitions
) -> None:
    instance = monitored_instance
    docs = in_step(dbs, 3)
    cursor = tick(defs, instance, None).cursor
    dbs.product_db.products.update_one({"_id": docs[0]["_id"]}, {"$set": {"price": 4321}})
    first = tick(defs, instance, cursor)
    [request] = first.run_requests
    assert (request.tags[MAX_RETRIES_TAG], request.tags[MAX_RUNTIME_TAG]) == ("0", str(KEYED_REPAIR_MAX_RUNTIME_S))
    run_id = started_on_this_machine(defs, instance, request, "product_sync_job", worker_process.pid)

    monitor_started_run(instance, run_id)
    assert instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.STARTED
    assert tick(defs, instance, first.cursor).run_requests == [], "in flight: its keys are its own"

    worker_process.kill()
    worker_process.wait()
    monitor_started_run(instance, run_id)
    assert instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.FAILURE
    assert f"the run's worker died: its worker process {worker_process.pid}" in run_failure_message(instance, run_id)

    [again] = tick(defs, instance, first.cursor).run_requests
    assert again.run_config == request.run_config and again.run_key != request.run_key
    assert execute(defs, instance, again).success
    assert dbs.product_rows()[str(docs[0]["_id"])][2] == 4321
