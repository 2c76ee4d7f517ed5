"""Split syncs (`parallelism: N`) on real servers: the same repair as one step, range by range."""

from __future__ import annotations

import re
import subprocess
import time
from datetime import UTC, datetime
from typing import Any

import dagster as dg
import pytest
from bson import ObjectId

from etl_defs.assets import CART_DB_PRODUCT, ORDER_DB_CARTS
from local.demo_data import DEMO_USER, seed_carts, seed_products
from tests.factories import product_doc
from tests.helpers import Databases, copy_products
from tests.integration.helpers import sync_lock_held_elsewhere

#: The figures a split must reproduce exactly (batches, durations and rates may differ).
COMPARED = (
    "source_rows",
    "missing",
    "changed",
    "outdated",
    "unchanged",
    "orphaned",
    "rejected",
    "newer_in_target",
    "inserted",
    "updated",
    "deleted",
    "newer_in_target_at_write",
    "rejected_at_write",
)


def run_job(defs: dg.Definitions, instance: dg.DagsterInstance, job: str, **config: Any) -> dg.ExecuteInProcessResult:
    return defs.resolve_job_def(job).execute_in_process(run_config=config, instance=instance, raise_on_error=False)


def compared(result: dg.ExecuteInProcessResult, node: str) -> dict[str, Any]:
    figures = result.output_for_node(node)
    return {name: figures[name] for name in COMPARED}


def materialized(result: dg.ExecuteInProcessResult, node: str, asset_key: dg.AssetKey) -> dict[str, Any]:
    (materialization,) = result.asset_materializations_for_node(node)
    assert materialization.asset_key == asset_key
    return {key: value.value for key, value in materialization.metadata.items()}


def range_steps(result: dg.ExecuteInProcessResult, op: str) -> list[str]:
    return sorted(
        event.step_key  # type: ignore[misc]
        for event in result.all_events
        if event.event_type == dg.DagsterEventType.STEP_SUCCESS and (event.step_key or "").startswith(f"{op}[")
    )


def plant_product_drift(dbs: Databases) -> list[tuple]:
    """Demo products (missing, stale, malformed) plus `_id`s of other BSON types and target ids
    outside the hex alphabet; returns the Cart DB's rows, to put back between two runs."""
    with dbs.cart_conn() as conn:
        seed_products(dbs.product_db, conn, products=300)
    dbs.product_db.products.insert_many(
        [
            product_doc(_id="legacy-17"),  # a string sorts before every ObjectId
            product_doc(_id=42),  # so does a number
            product_doc(_id=datetime(2020, 1, 1, tzinfo=UTC)),  # a date sorts after every ObjectId
        ]
    )
    foreign_rows = [(key, "foreign", 500, "/i.jpg", str(ObjectId()), 1) for key in ("", "AAA", "zzz", "~tilde")]
    with dbs.cart_conn() as conn:
        copy_products(conn, foreign_rows)
        return conn.execute("SELECT * FROM product").fetchall()


def put_back_products(dbs: Databases, rows: list[tuple]) -> None:
    with dbs.cart_conn() as conn:
        conn.execute("TRUNCATE product CASCADE")
        copy_products(conn, rows)


def test_a_split_product_sync_repairs_exactly_what_one_step_repairs(
    dbs: Databases, instance: dg.DagsterInstance, defs: dg.Definitions
) -> None:
    drifted = plant_product_drift(dbs)

    whole = run_job(defs, instance, "product_sync_job", batch_size=50)
    after_whole = dbs.product_rows()
    put_back_products(dbs, drifted)
    split = run_job(defs, instance, "product_sync_job", batch_size=50, parallelism=4)

    assert whole.success and split.success
    assert dbs.product_rows() == after_whole
    assert compared(split, "report_product_sync") == compared(whole, "report_product_sync")
    figures = compared(split, "report_product_sync")
    assert figures["missing"] > 0 and figures["changed"] > 0
    assert figures["orphaned"] >= 4  # '', 'AAA', 'zzz' and '~tilde' are counted, in whichever range holds them
    assert range_steps(split, "sync_product_range") == [f"sync_product_range[range_{n}_of_4]" for n in range(1, 5)]
    metadata = materialized(split, "report_product_sync", CART_DB_PRODUCT)
    assert metadata["parallelism"] == 4 and len(metadata["ranges"]) == 4
    assert sum(part["source_rows"] for part in metadata["ranges"]) == metadata["source_rows"]
    assert min(part["source_rows"] for part in metadata["ranges"]) > 0  # split points from the data: no empty range
    # The `_id`s of other types are found once, by the first and last ranges, and rejected with their reason.
    rejected = {r["key"]: r["reason"] for r in metadata["rejections"]}
    whole_rejected = {r["key"] for r in materialized(whole, "report_product_sync", CART_DB_PRODUCT)["rejections"]}
    assert set(rejected) == whole_rejected
    for foreign in ("legacy-17", "42", "2020"):
        assert [key for key in rejected if foreign in key], f"{foreign} was not rejected"
    assert metadata["ranges"][0]["rejected"] >= 2 and metadata["ranges"][-1]["rejected"] >= 1


def test_a_split_dry_run_writes_nothing_and_reports_what_a_real_run_would(
    dbs: Databases, instance: dg.DagsterInstance, defs: dg.Definitions
) -> None:
    drifted = plant_product_drift(dbs)

    dry = run_job(defs, instance, "product_sync_job", dry_run=True, parallelism=3)

    assert dry.success
    assert sorted(dbs.product_rows().values()) == sorted(drifted)
    assert dry.asset_materializations_for_node("report_product_sync") == []
    real = run_job(defs, instance, "product_sync_job", parallelism=3)
    planned, done = compared(dry, "report_product_sync"), compared(real, "report_product_sync")
    assert {k: v for k, v in planned.items() if k not in ("inserted", "updated")} == {
        k: v for k, v in done.items() if k not in ("inserted", "updated")
    }
    assert (planned["inserted"], planned["updated"]) == (0, 0)
    assert (done["inserted"], done["updated"]) == (done["missing"], done["changed"])


def plant_cart_drift(dbs: Databases) -> list[dict[str, Any]]:
    """Demo carts (missing, outdated, stale price, newer in the Order DB, orphans) plus an Order
    document whose cartId sorts after every uuid; returns the Order DB's documents."""
    with dbs.cart_conn() as conn:
        seed_products(dbs.product_db, conn, products=60)
        seed_carts(conn, dbs.order_db, carts=400)
    dbs.order_db.carts.insert_one({"cartId": "zzz-not-a-uuid", "userId": DEMO_USER, "version": 1})
    return list(dbs.order_db.carts.find())


def put_back_carts(dbs: Databases, docs: list[dict[str, Any]]) -> None:
    dbs.order_db.carts.delete_many({})
    dbs.order_db.carts.insert_many(docs)


def order_state(dbs: Databases) -> dict[str, dict[str, Any]]:
    """Each Order document by cartId, without the write times a run sets."""
    return {
        doc["cartId"]: {k: v for k, v in doc.items() if k not in ("_id", "createdAt", "updatedAt")}
        for doc in dbs.order_db.carts.find()
    }


@pytest.mark.parametrize("config", [{"prune_orphans": True}, {"user_id": DEMO_USER}], ids=["pruning", "one-user"])
def test_a_split_cart_sync_repairs_exactly_what_one_step_repairs(
    dbs: Databases, instance: dg.DagsterInstance, config: dict[str, Any], defs: dg.Definitions
) -> None:
    drifted = plant_cart_drift(dbs)

    whole = run_job(defs, instance, "cart_sync_job", batch_size=40, **config)
    after_whole = order_state(dbs)
    put_back_carts(dbs, drifted)
    split = run_job(defs, instance, "cart_sync_job", batch_size=40, parallelism=4, **config)

    assert whole.success and split.success
    assert order_state(dbs) == after_whole
    assert compared(split, "report_cart_sync") == compared(whole, "report_cart_sync")
    figures = compared(split, "report_cart_sync")
    classes = ("missing", "outdated", "changed", "newer_in_target") if "prune_orphans" in config else ("changed",)
    assert min(figures[name] for name in classes) > 0, figures
    metadata = materialized(split, "report_cart_sync", ORDER_DB_CARTS)
    assert metadata["parallelism"] == 4
    assert [part["range"] for part in metadata["ranges"]] == [
        "[start, 40000000-0000-0000-0000-000000000000)",
        "[40000000-0000-0000-0000-000000000000, 80000000-0000-0000-0000-000000000000)",
        "[80000000-0000-0000-0000-000000000000, c0000000-0000-0000-0000-000000000000)",
        "[c0000000-0000-0000-0000-000000000000, end)",
    ]
    if "prune_orphans" in config:
        assert figures["deleted"] == figures["orphaned"] > 0
        assert "zzz-not-a-uuid" not in order_state(dbs)  # the last range holds ids past every uuid
        assert metadata["ranges"][-1]["deleted"] >= 1


def test_a_split_full_sync_runs_both_pipelines_split(
    dbs: Databases, instance: dg.DagsterInstance, defs: dg.Definitions
) -> None:
    plant_cart_drift(dbs)

    result = run_job(defs, instance, "full_sync_job", parallelism=2)

    assert result.success
    assert len(range_steps(result, "sync_product_range")) == 2
    assert len(range_steps(result, "sync_cart_range")) == 2
    again = run_job(defs, instance, "full_sync_job", parallelism=2)
    product_figures, cart_figures = compared(again, "report_product_sync"), compared(again, "report_cart_sync")
    assert (product_figures["inserted"], product_figures["updated"]) == (0, 0)
    assert (cart_figures["inserted"], cart_figures["updated"]) == (0, 0)


def test_a_split_run_writes_nothing_while_another_run_holds_the_lock(
    dbs: Databases, instance: dg.DagsterInstance, defs: dg.Definitions
) -> None:
    drifted = plant_product_drift(dbs)

    with sync_lock_held_elsewhere(dbs, "products"):
        result = run_job(defs, instance, "product_sync_job", parallelism=4)

    assert not result.success
    failures = result.get_step_failure_events()
    assert len(failures) == 4
    for failure in failures:
        assert failure.step_key.startswith("sync_product_range[range_")  # type: ignore[union-attr]
        assert "SyncAlreadyRunningError" in str(failure.step_failure_data.error)
    assert sorted(dbs.product_rows().values()) == sorted(drifted)


def test_a_keyed_run_splits_its_keys_between_ranges(
    dbs: Databases, instance: dg.DagsterInstance, defs: dg.Definitions
) -> None:
    docs = [product_doc() for _ in range(9)]
    dbs.product_db.products.insert_many(docs)
    keys = [str(doc["_id"]) for doc in docs[:6]]

    result = run_job(defs, instance, "product_sync_job", keys=keys, parallelism=3)

    assert result.success
    assert set(dbs.product_rows()) == set(keys)
    metadata = materialized(result, "report_product_sync", CART_DB_PRODUCT)
    assert metadata["scope"] == "keys" and metadata["keys"] == 6
    assert [part["source_rows"] for part in metadata["ranges"]] == [2, 2, 2]


def keepalive_timers_s(port: int) -> list[float]:
    """The keepalive timers (seconds left) of the server side of every idle TCP session on `port`, from `ss`."""
    out = subprocess.run(
        ["ss", "-tnoH", "state", "established", f"( sport = :{port} )"], capture_output=True, text=True, check=True
    ).stdout
    timers = []
    for found in re.finditer(r"timer:\(keepalive,([^,]+),", out):
        minutes, seconds = re.fullmatch(r"(?:(\d+)min)?(?:([\d.]+)(?:sec|ms))?", found[1]).groups()
        timers.append(int(minutes or 0) * 60 + float(seconds or 0))
    return timers


def test_the_server_ends_the_session_of_a_lock_holder_whose_machine_went_silent_within_seconds(
    dbs: Databases,
) -> None:
    """A machine that dies sends no FIN: the server learns the client is gone from TCP keepalives, after the
    kernel's two hours unless the session asks for less. The sync lock's session asks for 10 s."""
    port = dbs.stack.state.pg_port
    with sync_lock_held_elsewhere(dbs, "products"), dbs.cart_conn():  # and a session of our own, for contrast
        time.sleep(1.5)  # idle, so that the server's sockets run their keepalive timers
        timers = sorted(keepalive_timers_s(port))
    assert len(timers) == 2, timers
    assert timers[0] <= 10, f"the lock's session keeps the kernel's keepalive: {timers}"
    assert timers[1] > 600, f"a session without the setting keeps the kernel's two hours: {timers}"
