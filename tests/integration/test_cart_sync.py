"""cart_sync_job and full_sync_job end to end on real servers (PostgreSQL 15, SecantusDB)."""

from __future__ import annotations

import dataclasses
import json
import logging
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import dagster as dg
import pytest
from bson import CodecOptions, ObjectId
from pymongo.collection import Collection

from etl_defs.assets import ORDER_DB_CARTS
from etl_defs.carts.endpoints import CartSyncEndpoints
from etl_defs.carts.pipeline import CART_SYNC
from etl_defs.carts.table import CartTableRow
from etl_defs.jobs import InvalidRunConfigError
from etl_defs.products.table import ProductRow
from etl_defs.sync import SyncScope, plan_batches, run_sync
from local.demo_data import DEMO_USER, seed_carts, seed_products
from local.report import CART_JOIN_SQL, cart_drift
from local.stack import CART_DB, ORDER_DB
from resources import MongoResource, PostgresResource
from tests.factories import expected_doc, new_cart, new_product
from tests.helpers import Databases, MongoCommand, RecordMongoCommands, copy_carts, copy_products
from tests.integration.helpers import sync_lock_held_elsewhere

LONG_AGO = datetime(2024, 1, 1, tzinfo=UTC)


def insert_products(dbs: Databases, *products: ProductRow) -> None:
    with dbs.cart_conn() as conn:
        copy_products(conn, products)


def insert_carts(dbs: Databases, *carts: CartTableRow, without_product_check: bool = False) -> None:
    """Cart rows; `without_product_check` lets a cart name a product row that does not exist."""
    with dbs.cart_conn() as conn:
        if without_product_check:
            conn.execute("SET session_replication_role = replica")
        copy_carts(conn, carts)


def order_carts(dbs: Databases) -> Collection:
    """The Order `carts` collection, reading timestamps as aware UTC datetimes."""
    return dbs.order_db.carts.with_options(codec_options=CodecOptions(tz_aware=True, tzinfo=UTC))


def insert_order_docs(dbs: Databases, *docs: dict[str, Any]) -> None:
    order_carts(dbs).insert_many([{**doc, "createdAt": LONG_AGO, "updatedAt": LONG_AGO} for doc in docs])


def order_docs(dbs: Databases) -> dict[str, dict[str, Any]]:
    """Every Order cart document by cartId (without `_id`); fails on a duplicate cartId."""
    docs = list(order_carts(dbs).find({}, {"_id": 0}))
    by_id = {doc["cartId"]: doc for doc in docs}
    assert len(by_id) == len(docs), "duplicate cartId in the Order DB"
    return by_id


def synced(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k not in ("createdAt", "updatedAt")}


def full_dump(dbs: Databases) -> tuple[list, list, list]:
    """Everything the syncs could touch, `_id`s and timestamps included."""
    with dbs.cart_conn() as conn:
        carts = conn.execute("SELECT * FROM cart ORDER BY id").fetchall()
        products = conn.execute("SELECT * FROM product ORDER BY id").fetchall()
    return carts, products, list(order_carts(dbs).find().sort("cartId", 1))


def run_job(
    defs: dg.Definitions, instance: dg.DagsterInstance, job_name: str, **config: Any
) -> dg.ExecuteInProcessResult:
    job = defs.resolve_job_def(job_name)
    return job.execute_in_process(run_config=config, instance=instance, raise_on_error=False)


def figures(result: dg.ExecuteInProcessResult, node: str = "report_cart_sync") -> dict[str, Any]:
    return result.output_for_node(node)


def materialized_metadata(result: dg.ExecuteInProcessResult) -> dict[str, Any]:
    (materialization,) = result.asset_materializations_for_node("report_cart_sync")
    assert materialization.asset_key == ORDER_DB_CARTS
    return {key: value.value for key, value in materialization.metadata.items()}


@dataclass
class Drift:
    """One cart of every class, and the documents the Order DB should hold after a sync."""

    products: dict[str, ProductRow]
    missing: CartTableRow
    outdated: CartTableRow
    changed: CartTableRow
    unchanged: CartTableRow
    newer: CartTableRow
    newer_doc: dict[str, Any]
    orphan_doc: dict[str, Any]
    no_product: CartTableRow
    zero_quantity: CartTableRow


def plant_drift(dbs: Databases, user: str = "user-1") -> Drift:
    teapot, cup, kettle = new_product(title="Teapot"), new_product(title="Cup"), new_product(title="Kettle")
    insert_products(dbs, teapot, cup, kettle)
    missing = new_cart(teapot, userId=user, quantity=3)
    outdated = new_cart(cup, userId=user, version=4, quantity=5)
    changed = new_cart(kettle, userId=user, version=2)
    unchanged = new_cart(teapot, userId=user, version=7, quantity=1)
    newer = new_cart(cup, userId=user, version=2)
    zero_quantity = new_cart(cup, userId=user, quantity=0)
    no_product = new_cart(str(ObjectId()), userId=user)
    insert_carts(dbs, missing, outdated, changed, unchanged, newer, zero_quantity)
    insert_carts(dbs, no_product, without_product_check=True)
    newer_doc = {**expected_doc(newer, cup), "version": 3, "cartQuantity": 9, "total": 9 * cup.price}
    orphan_doc = {**expected_doc(new_cart(teapot, userId=user), teapot)}
    insert_order_docs(
        dbs,
        {**expected_doc(outdated, cup), "version": 3, "cartQuantity": 4, "total": 4 * cup.price},
        {**expected_doc(changed, kettle), "productPrice": kettle.price - 5, "total": 2 * (kettle.price - 5)},
        expected_doc(unchanged, teapot),
        newer_doc,
        orphan_doc,
    )
    return Drift(
        products={p.id: p for p in (teapot, cup, kettle)},
        missing=missing,
        outdated=outdated,
        changed=changed,
        unchanged=unchanged,
        newer=newer,
        newer_doc=newer_doc,
        orphan_doc=orphan_doc,
        no_product=no_product,
        zero_quantity=zero_quantity,
    )


def expected_after_sync(drift: Drift) -> dict[str, dict[str, Any]]:
    """The synced fields of every Order document after a sync that does not prune."""
    p = drift.products
    return {
        drift.missing.id: expected_doc(drift.missing, p[drift.missing.productId]),
        drift.outdated.id: expected_doc(drift.outdated, p[drift.outdated.productId]),
        drift.changed.id: expected_doc(drift.changed, p[drift.changed.productId]),
        drift.unchanged.id: expected_doc(drift.unchanged, p[drift.unchanged.productId]),
        drift.newer.id: drift.newer_doc,
        drift.orphan_doc["cartId"]: drift.orphan_doc,
    }


def test_every_class_is_written_or_counted_and_reported(
    dbs: Databases, instance: dg.DagsterInstance, defs: dg.Definitions
) -> None:
    drift = plant_drift(dbs)
    before = datetime.now(UTC) - timedelta(milliseconds=1)

    result = run_job(defs, instance, "cart_sync_job")

    after = datetime.now(UTC)
    assert result.success
    docs = order_docs(dbs)
    assert {key: synced(doc) for key, doc in docs.items()} == expected_after_sync(drift)
    # inserted: both timestamps set now, equal
    inserted = docs[drift.missing.id]
    assert before <= inserted["createdAt"] == inserted["updatedAt"] <= after
    # updated (outdated and changed): createdAt kept, updatedAt now
    for cart in (drift.outdated, drift.changed):
        assert docs[cart.id]["createdAt"] == LONG_AGO
        assert before <= docs[cart.id]["updatedAt"] <= after
    # never touched: unchanged, newer in target, orphan
    for key in (drift.unchanged.id, drift.newer.id, drift.orphan_doc["cartId"]):
        assert (docs[key]["createdAt"], docs[key]["updatedAt"]) == (LONG_AGO, LONG_AGO)
    # rejected: never written
    assert drift.no_product.id not in docs
    assert drift.zero_quantity.id not in docs

    out = figures(result)
    assert {
        k: out[k]
        for k in (
            "source_rows",
            "missing",
            "outdated",
            "changed",
            "unchanged",
            "newer_in_target",
            "orphaned",
            "rejected",
            "inserted",
            "updated",
            "deleted",
            "newer_in_target_at_write",
            "rejected_at_write",
        )
    } == {
        "source_rows": 7,
        "missing": 1,
        "outdated": 1,
        "changed": 1,
        "unchanged": 1,
        "newer_in_target": 1,
        "orphaned": 1,
        "rejected": 2,
        "inserted": 1,
        "updated": 2,
        "deleted": 0,
        "newer_in_target_at_write": 0,
        "rejected_at_write": 0,
    }
    metadata = materialized_metadata(result)
    assert {k: metadata[k] for k in out} == out
    assert metadata["dry_run"] is False
    assert sorted(metadata["rejections"], key=lambda r: r["key"]) == sorted(
        [
            {
                "key": drift.no_product.id,
                "reason": f"product {drift.no_product.productId!r} is not in the Cart DB's "
                "product table, so its price is unknown",
            },
            {"key": drift.zero_quantity.id, "reason": "cart quantity 0 is not positive"},
        ],
        key=lambda r: r["key"],
    )
    assert metadata["sample_keys"]["newer_in_target"] == [drift.newer.id]
    assert metadata["sample_keys"]["orphaned"] == [drift.orphan_doc["cartId"]]


def test_a_second_run_finds_nothing_left_to_do(
    dbs: Databases, instance: dg.DagsterInstance, defs: dg.Definitions
) -> None:
    drift = plant_drift(dbs)
    assert run_job(defs, instance, "cart_sync_job").success
    first = list(order_carts(dbs).find().sort("cartId", 1))

    result = run_job(defs, instance, "cart_sync_job")

    assert result.success
    out = figures(result)
    assert (out["unchanged"], out["newer_in_target"], out["orphaned"], out["rejected"]) == (4, 1, 1, 2)
    assert (out["missing"], out["outdated"], out["changed"], out["inserted"], out["updated"]) == (0, 0, 0, 0, 0)
    assert list(order_carts(dbs).find().sort("cartId", 1)) == first
    assert {key: synced(doc) for key, doc in order_docs(dbs).items()} == expected_after_sync(drift)


def test_orphans_are_deleted_only_when_pruning(
    dbs: Databases, instance: dg.DagsterInstance, defs: dg.Definitions
) -> None:
    drift = plant_drift(dbs)
    second_orphan = {**drift.orphan_doc, "cartId": "not-a-uuid-orphan"}
    insert_order_docs(dbs, second_orphan)

    result = run_job(defs, instance, "cart_sync_job", prune_orphans=True)

    assert result.success
    expected = expected_after_sync(drift)
    del expected[drift.orphan_doc["cartId"]]
    assert {key: synced(doc) for key, doc in order_docs(dbs).items()} == expected
    out = figures(result)
    assert (out["orphaned"], out["deleted"]) == (2, 2)
    assert materialized_metadata(result)["deleted"] == 2


def test_pruning_keeps_an_orphan_whose_cart_appeared_in_the_cart_db_after_the_scan(dbs: Databases) -> None:
    product = new_product()
    insert_products(dbs, product)
    late = new_cart(product)
    insert_order_docs(dbs, expected_doc(late, product))
    with sync_endpoints(dbs, prune_orphans=True) as endpoints:
        (plan,) = plan_batches(CART_SYNC, endpoints.source_batches(10), endpoints.target_batches(10), 10)
        assert [doc["cartId"] for doc in plan.orphaned] == [late.id]
        insert_carts(dbs, late)  # the Cart service created it meanwhile

        result = endpoints.write(plan)

    assert result.deleted == 0
    assert list(order_docs(dbs)) == [late.id]


def test_user_id_touches_only_that_users_carts_on_both_sides(
    dbs: Databases, instance: dg.DagsterInstance, defs: dg.Definitions
) -> None:
    mine = plant_drift(dbs, user="user-1")
    theirs = plant_drift(dbs, user="user-2")
    untouched_before = {key: doc for key, doc in order_docs(dbs).items() if doc["userId"] == "user-2"}

    result = run_job(defs, instance, "cart_sync_job", user_id="user-1", prune_orphans=True)

    assert result.success
    docs = order_docs(dbs)
    expected_mine = expected_after_sync(mine)
    del expected_mine[mine.orphan_doc["cartId"]]
    assert {k: synced(d) for k, d in docs.items() if d["userId"] == "user-1"} == expected_mine
    assert {k: d for k, d in docs.items() if d["userId"] == "user-2"} == untouched_before
    assert theirs.missing.id not in docs
    out = figures(result)
    assert (out["source_rows"], out["inserted"], out["updated"], out["orphaned"], out["deleted"]) == (7, 1, 2, 1, 1)


def on_carts(commands: list[MongoCommand], *names: str) -> list[MongoCommand]:
    """The commands named `names` on the Order DB's `carts` (a getMore names it under `collection`)."""
    return [c for c in commands if c.name in names and "carts" in (c.body.get(c.name), c.body.get("collection"))]


def test_a_users_sync_reads_only_that_users_order_documents(
    dbs: Databases, instance: dg.DagsterInstance, defs: dg.Definitions, mongo_commands: RecordMongoCommands
) -> None:
    plant_drift(dbs, user="user-1")
    for other in range(30):
        plant_drift(dbs, user=f"someone-else-{other}")
    theirs = order_carts(dbs).count_documents({"userId": "user-1"})

    with mongo_commands() as commands:
        result = run_job(defs, instance, "cart_sync_job", user_id="user-1")

    assert result.success
    assert figures(result)["source_rows"] == 7
    reads = on_carts(commands, "find", "getMore")
    assert reads, "the sync read nothing from the Order DB"
    assert sum(c.returned for c in reads) == theirs == 5
    assert all(c.body["filter"] == {"userId": "user-1"} for c in on_carts(commands, "find"))


def test_every_cart_write_names_one_cart_id_beside_plain_conditions(
    dbs: Databases, instance: dg.DagsterInstance, defs: dg.Definitions, mongo_commands: RecordMongoCommands
) -> None:
    """Each update and delete is answered through the unique `cartId` index on any server:
    an equality (or `$in`) on `cartId`, and no `$or`/`$not`, which the embedded server answers
    with a scan of the whole collection per update."""
    drift = plant_drift(dbs)
    order_carts(dbs).update_one({"cartId": drift.unchanged.id}, {"$unset": {"version": ""}})  # an unusable version

    with mongo_commands() as commands:
        result = run_job(defs, instance, "cart_sync_job", prune_orphans=True)

    assert result.success
    filters = [u["q"] for c in on_carts(commands, "update") for u in c.body["updates"]]
    filters += [d["q"] for c in on_carts(commands, "delete") for d in c.body["deletes"]]
    assert len(filters) == 4  # the outdated, the changed, the versionless (now outdated) cart, the orphan
    writes = on_carts(commands, "insert", "update", "delete")
    # Acknowledged means journaled: every write command asks for `j: true` (a later command's journal wait did not
    # cover a batch's inserts on the embedded server, SIGKILLed).
    journaled = [c.body.get("writeConcern", {}).get("j") is True for c in writes]
    assert [c.name for c in writes] == ["insert", "update", "delete"]
    assert journaled == [True, True, True]
    for where in filters:
        assert isinstance(where["cartId"], str) or set(where["cartId"]) == {"$in"}, where
        assert not {"$or", "$not", "$nor", "$where", "$expr"} & set(json.dumps(where, default=str).split('"')), where


def test_an_outdated_cart_with_an_unusable_version_is_updated_unless_it_changed_after_the_plan(
    dbs: Databases,
) -> None:
    drift = plant_drift(dbs)
    cup, teapot = drift.products[drift.outdated.productId], drift.products[drift.unchanged.productId]
    versionless, text = new_cart(cup, version=2), new_cart(teapot, version=5)
    raced = new_cart(cup, version=3)
    insert_carts(dbs, versionless, text, raced)
    no_version = {k: v for k, v in expected_doc(versionless, cup).items() if k != "version"}
    insert_order_docs(
        dbs, no_version, {**expected_doc(text, teapot), "version": "5"}, {**expected_doc(raced, cup), "version": None}
    )
    with sync_endpoints(dbs) as endpoints:
        (plan,) = plan_batches(CART_SYNC, endpoints.source_batches(100), endpoints.target_batches(100), 100)
        assert {row.cartId for row, _ in plan.outdated} == {drift.outdated.id, versionless.id, text.id, raced.id}
        # Meanwhile the Order service writes the raced cart at a version of its own.
        order_carts(dbs).update_one({"cartId": raced.id}, {"$set": {"version": 4, "cartQuantity": 7}})

        result = endpoints.write(plan)

    assert (result.updated, result.newer_in_target) == (4, 1)
    docs = order_docs(dbs)
    assert synced(docs[versionless.id]) == expected_doc(versionless, cup)
    assert synced(docs[text.id]) == expected_doc(text, teapot)
    assert (docs[raced.id]["version"], docs[raced.id]["cartQuantity"]) == (4, 7)


def test_a_user_id_is_a_value_never_part_of_the_query(
    dbs: Databases, instance: dg.DagsterInstance, defs: dg.Definitions
) -> None:
    plant_drift(dbs, user="user-1")
    before = full_dump(dbs)

    result = run_job(defs, instance, "cart_sync_job", user_id="x' OR '1'='1", prune_orphans=True)

    assert result.success
    assert figures(result)["source_rows"] == 0
    assert figures(result)["orphaned"] == 0
    assert full_dump(dbs) == before


class sync_endpoints:  # noqa: N801 - used as a context manager
    """CartSyncEndpoints on resources of their own, closed afterwards."""

    def __init__(self, dbs: Databases, **options: Any) -> None:
        self.cart_db = PostgresResource(url=dbs.stack.pg_url(CART_DB))
        self.order_db = MongoResource(
            url=dbs.stack.mongo_url(ORDER_DB),
            label="Order MongoDB",
            username=dbs.stack.state.mongo_user,
            password=dbs.stack.state.mongo_password,
        )
        self.options = options

    def __enter__(self) -> CartSyncEndpoints:
        return CartSyncEndpoints(self.cart_db, self.order_db, **self.options)

    def __exit__(self, *exc: object) -> None:
        self.order_db.close()
        self.cart_db.dispose()


def test_the_version_guard_never_overwrites_a_target_that_moved_on_after_the_plan(dbs: Databases) -> None:
    drift = plant_drift(dbs)
    with sync_endpoints(dbs) as endpoints:
        (plan,) = plan_batches(CART_SYNC, endpoints.source_batches(100), endpoints.target_batches(100), 100)
        assert [row.cartId for row in plan.missing] == [drift.missing.id]
        assert [row.cartId for row, _ in plan.outdated] == [drift.outdated.id]
        assert [row.cartId for row, _ in plan.changed] == [drift.changed.id]
        # Meanwhile the Order service catches up: the outdated cart reaches the source's
        # version 4 (equal), the changed one version 3 (newer), the missing one is created.
        cup = drift.products[drift.outdated.productId]
        kettle = drift.products[drift.changed.productId]
        teapot = drift.products[drift.missing.productId]
        race = {
            drift.outdated.id: {**expected_doc(drift.outdated, cup), "cartQuantity": 8, "total": 8 * cup.price},
            drift.changed.id: {**expected_doc(drift.changed, kettle), "version": 3, "productTitle": "Kettle v3"},
            drift.missing.id: {**expected_doc(drift.missing, teapot), "version": 2, "cartQuantity": 6},
        }
        order_carts(dbs).delete_many({"cartId": {"$in": [drift.outdated.id, drift.changed.id]}})
        insert_order_docs(dbs, *race.values())
        before = order_docs(dbs)

        result = endpoints.write(plan)

    assert (result.inserted, result.updated, result.newer_in_target, result.rejected) == (0, 0, 3, [])
    assert order_docs(dbs) == before
    for key, doc in race.items():
        assert synced(before[key]) == doc


def test_a_keyed_cart_sync_reads_and_repairs_only_its_carts(
    dbs: Databases, mongo_commands: RecordMongoCommands
) -> None:
    """The scope of a set of cart ids, on both sides: a deleted cart's document is its orphan,
    and an id that is not a uuid (it cannot be in the Cart DB) is only looked up in the Order DB."""
    drift = plant_drift(dbs)
    before = order_docs(dbs)
    keys = [drift.missing.id, drift.outdated.id, drift.unchanged.id, drift.orphan_doc["cartId"], "not-a-uuid"]

    with mongo_commands() as commands, sync_endpoints(dbs, scope=SyncScope.of_keys(keys)) as endpoints:
        report = run_sync(CART_SYNC, endpoints, batch_size=2, dry_run=False, log=logging.getLogger("test"))

    counts = {change.value: n for change, n in report.counts.items() if n}
    assert counts == {"missing": 1, "outdated": 1, "unchanged": 1, "orphaned": 1}
    assert (report.inserted, report.updated, report.deleted) == (1, 1, 0)
    after = order_docs(dbs)
    p = drift.products
    assert synced(after[drift.missing.id]) == expected_doc(drift.missing, p[drift.missing.productId])
    assert synced(after[drift.outdated.id]) == expected_doc(drift.outdated, p[drift.outdated.productId])
    untouched = set(before) - {drift.missing.id, drift.outdated.id}
    assert {key: after[key] for key in untouched} == {key: before[key] for key in untouched}
    finds = on_carts(commands, "find")
    assert finds and all(set(c.body["filter"]["cartId"]["$in"]) <= set(keys) for c in finds)


def test_a_guarded_update_applies_when_the_target_is_still_older(dbs: Databases) -> None:
    drift = plant_drift(dbs)
    with sync_endpoints(dbs) as endpoints:
        (plan,) = plan_batches(CART_SYNC, endpoints.source_batches(100), endpoints.target_batches(100), 100)
        # Another writer bumps the outdated cart, but still below the Cart DB's version 4.
        order_carts(dbs).update_one({"cartId": drift.outdated.id}, {"$set": {"version": 3.0, "cartQuantity": 1}})

        result = endpoints.write(plan)

    assert (result.inserted, result.updated, result.newer_in_target) == (1, 2, 0)
    assert synced(order_docs(dbs)[drift.outdated.id]) == expected_doc(
        drift.outdated, drift.products[drift.outdated.productId]
    )


#: One cart_sync_job run through execute_in_process, in a process of its own; prints its outcome as JSON.
RUN_IN_ITS_OWN_PROCESS = """
import json, sys
import dagster as dg
import etl_defs

job = etl_defs.defs().resolve_job_def("cart_sync_job")  # the environment is the test's
result = job.execute_in_process(
    run_config=json.loads(sys.argv[1]), instance=dg.DagsterInstance.ephemeral(), raise_on_error=False
)

def error_chain(error):
    while error is not None:
        yield error.cls_name
        error = error.cause


print(json.dumps({
    "success": result.success,
    "failures": [[e.step_key, *error_chain(e.step_failure_data.error)] for e in result.get_step_failure_events()],
}))
"""


def test_two_runs_at_the_same_time_leave_one_correct_copy_of_each_cart(dbs: Databases) -> None:
    """Two threads each start a run at the same moment.

    Each run is an `execute_in_process` in a process of its own: two `execute_in_process`
    calls in one process deadlock in Dagster's logging setup (it calls
    `logging.config.dictConfig` at every run start while the other run's event handler
    holds its lock; cpython#96727), and separate processes are how two runs meet in
    production anyway.
    """
    products = [new_product() for _ in range(20)]
    insert_products(dbs, *products)
    carts = [new_cart(products[i % 20], userId=f"user-{i % 13}", version=1 + i % 3) for i in range(400)]
    insert_carts(dbs, *carts)
    insert_order_docs(dbs, *[{**expected_doc(c, products[i % 20]), "version": 0} for i, c in enumerate(carts[::4])])
    config = json.dumps({"batch_size": 20, "batch_pause_ms": 30})
    outcomes: list[dict[str, Any]] = []
    start = threading.Barrier(2)

    def run() -> None:
        start.wait()
        done = subprocess.run(
            [sys.executable, "-c", RUN_IN_ITS_OWN_PROCESS, config], capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stderr[-3000:]
        outcomes.append(json.loads(done.stdout.strip().splitlines()[-1]))

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=320)

    assert len(outcomes) == 2
    assert any(outcome["success"] for outcome in outcomes)
    for failed in (outcome for outcome in outcomes if not outcome["success"]):
        assert failed["failures"] == [
            ["sync_cart_range[range_1_of_1]", "DagsterExecutionStepExecutionError", "SyncAlreadyRunningError"]
        ]
    docs = order_docs(dbs)  # asserts there is no duplicate cartId
    assert order_carts(dbs).count_documents({}) == 400
    assert {k: synced(d) for k, d in docs.items()} == {
        c.id: expected_doc(c, products[i % 20]) for i, c in enumerate(carts)
    }


def test_small_batches_give_the_same_result_as_one_batch(
    dbs: Databases, instance: dg.DagsterInstance, defs: dg.Definitions
) -> None:
    drift = plant_drift(dbs)
    extra = [new_cart(next(iter(drift.products.values())), version=2) for _ in range(9)]
    insert_carts(dbs, *extra)

    result = run_job(defs, instance, "cart_sync_job", batch_size=2, batch_pause_ms=1)

    assert result.success
    expected = expected_after_sync(drift)
    for cart in extra:
        expected[cart.id] = expected_doc(cart, drift.products[cart.productId])
    assert {key: synced(doc) for key, doc in order_docs(dbs).items()} == expected
    out = figures(result)
    assert (out["source_rows"], out["orphaned"], out["inserted"], out["updated"]) == (16, 1, 10, 2)
    # Eight plans of two source rows; a ninth when the orphan's key falls where a plan already holds two
    # target records (a plan takes at most batch_size of each side).
    assert out["batches"] in (8, 9)


class SlowWrites(CartSyncEndpoints):
    """The cart sync's endpoints, each write held for a while and noted (interval and thread)."""

    HOLD_S = 0.3

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.writes: list[tuple[float, float, str]] = []

    def write(self, plan: Any) -> Any:
        began = time.monotonic()
        time.sleep(self.HOLD_S)
        result = super().write(plan)
        self.writes.append((began, time.monotonic(), threading.current_thread().name))
        return result


def test_the_next_batch_is_planned_while_a_write_waits_and_every_write_is_on_the_syncs_thread(
    dbs: Databases,
) -> None:
    drift = plant_drift(dbs)
    extra = [new_cart(next(iter(drift.products.values())), version=2) for _ in range(5)]
    insert_carts(dbs, *extra)
    planned: list[tuple[float, str]] = []

    def classify(*args: Any) -> Any:
        planned.append((time.monotonic(), threading.current_thread().name))
        return CART_SYNC.classify(*args)

    with sync_endpoints(dbs) as plain:
        endpoints = SlowWrites(plain.cart_db, plain.order_db)
        spec = dataclasses.replace(CART_SYNC, classify=classify)
        report = run_sync(spec, endpoints, batch_size=2, dry_run=False, log=logging.getLogger("test"))

    expected = expected_after_sync(drift)
    for cart in extra:
        expected[cart.id] = expected_doc(cart, drift.products[cart.productId])
    assert {key: synced(doc) for key, doc in order_docs(dbs).items()} == expected
    assert report.inserted == 6
    assert len(endpoints.writes) >= 3
    assert {name for _, _, name in endpoints.writes} == {threading.current_thread().name}
    assert {name for _, name in planned} == {"sync-plan"}
    during_a_write = [at for at, _ in planned if any(began < at < ended for began, ended, _ in endpoints.writes)]
    assert during_a_write, "no batch was planned while a write was held"


def test_a_dry_run_reports_the_plan_and_writes_nothing(
    dbs: Databases, instance: dg.DagsterInstance, defs: dg.Definitions
) -> None:
    plant_drift(dbs)
    before = full_dump(dbs)

    result = run_job(defs, instance, "cart_sync_job", dry_run=True, prune_orphans=True)

    assert result.success
    assert full_dump(dbs) == before
    out = figures(result)
    assert (
        out["missing"],
        out["outdated"],
        out["changed"],
        out["newer_in_target"],
        out["orphaned"],
        out["rejected"],
    ) == (1, 1, 1, 1, 1, 2)
    assert (out["inserted"], out["updated"], out["deleted"]) == (0, 0, 0)
    assert result.asset_materializations_for_node("report_cart_sync") == []


def test_full_sync_carries_a_product_price_change_to_the_carts_in_one_run(
    dbs: Databases, instance: dg.DagsterInstance, defs: dg.Definitions
) -> None:
    source_products = [
        {
            "_id": ObjectId(),
            "title": f"P{i}",
            "image": f"/img/p{i}.jpg",
            "price": 1000 + i,
            "sellerId": ObjectId(),
            "quantity": 3,
        }
        for i in range(3)
    ]
    dbs.product_db.products.insert_many(source_products)
    assert run_job(defs, instance, "product_sync_job").success
    rows = dbs.product_rows()
    products = {key: ProductRow(*row) for key, row in rows.items()}
    carts = [new_cart(products[str(doc["_id"])], quantity=i + 1) for i, doc in enumerate(source_products)]
    insert_carts(dbs, *carts)
    assert run_job(defs, instance, "cart_sync_job").success
    # The Product service changes a price; the Cart DB and the Order DB do not know yet.
    repriced = source_products[1]
    dbs.product_db.products.update_one({"_id": repriced["_id"]}, {"$set": {"price": 4321}})

    result = run_job(defs, instance, "full_sync_job")

    assert result.success
    assert dbs.product_rows()[str(repriced["_id"])][2] == 4321
    products[str(repriced["_id"])] = ProductRow(*dbs.product_rows()[str(repriced["_id"])])
    assert {k: synced(d) for k, d in order_docs(dbs).items()} == {
        c.id: expected_doc(c, products[c.productId]) for c in carts
    }
    assert synced(order_docs(dbs)[carts[1].id])["total"] == 4321 * 2
    assert (figures(result, "report_product_sync")["changed"], figures(result, "report_product_sync")["updated"]) == (
        1,
        1,
    )
    assert (figures(result, "report_cart_sync")["changed"], figures(result, "report_cart_sync")["updated"]) == (1, 1)
    steps = [e.step_key for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_SUCCESS]
    assert steps.index("report_product_sync") < steps.index("split_cart_sync")


def test_full_sync_batch_size_overrides_both_pipelines_or_each_keeps_its_own(
    dbs: Databases, instance: dg.DagsterInstance, defs: dg.Definitions
) -> None:
    docs = [
        {"_id": ObjectId(), "title": f"P{i}", "image": "/i.jpg", "price": 500, "sellerId": ObjectId(), "quantity": 1}
        for i in range(5)
    ]
    dbs.product_db.products.insert_many(docs)
    product = new_product()
    insert_products(dbs, product)
    insert_carts(dbs, *[new_cart(product) for _ in range(5)])

    overridden = run_job(defs, instance, "full_sync_job", batch_size=2, dry_run=True)
    defaults = run_job(defs, instance, "full_sync_job", dry_run=True)

    assert overridden.success and defaults.success
    # products: 5 documents + 1 orphan row; carts: 5 carts
    assert (
        figures(overridden, "report_product_sync")["batches"],
        figures(overridden, "report_cart_sync")["batches"],
    ) == (3, 3)
    assert (figures(defaults, "report_product_sync")["batches"], figures(defaults, "report_cart_sync")["batches"]) == (
        1,
        1,
    )


def test_full_sync_skips_the_carts_when_the_product_sync_fails(
    dbs: Databases, instance: dg.DagsterInstance, defs: dg.Definitions
) -> None:
    product = new_product()
    insert_products(dbs, product)
    insert_carts(dbs, new_cart(product))
    with sync_lock_held_elsewhere(dbs, "products"):  # a product sync is running elsewhere
        result = run_job(defs, instance, "full_sync_job")

    assert not result.success
    assert [e.step_key for e in result.get_step_failure_events()] == ["sync_product_range[range_1_of_1]"]
    started = [e.step_key for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_START]
    assert not {"split_cart_sync", "report_cart_sync"} & set(started)
    assert order_carts(dbs).count_documents({}) == 0


def test_the_cart_sync_refuses_an_order_db_without_its_unique_cart_id_index(
    dbs: Databases, instance: dg.DagsterInstance, defs: dg.Definitions
) -> None:
    product = new_product()
    insert_products(dbs, product)
    insert_carts(dbs, new_cart(product))
    order_carts(dbs).drop_index("cartId_1")

    result = run_job(defs, instance, "cart_sync_job")

    assert not result.success
    (failure,) = result.get_step_failure_events()
    assert failure.step_key == "check_cart_sync_ready"
    assert "collection carts has no index cartId_1 (unique on cartId)" in failure.step_failure_data.error.message
    assert order_carts(dbs).count_documents({}) == 0


@pytest.mark.parametrize("job_name", ["product_sync_job", "cart_sync_job", "full_sync_job"])
def test_batch_size_zero_is_refused_by_every_sync_job_naming_the_field_value_and_range(
    dbs: Databases, instance: dg.DagsterInstance, job_name: str, defs: dg.Definitions
) -> None:
    product = new_product()
    insert_products(dbs, product)
    insert_carts(dbs, new_cart(product))

    with pytest.raises(InvalidRunConfigError) as refused:
        run_job(defs, instance, job_name, batch_size=0)

    assert str(refused.value) == (
        "invalid run config: batch_size=0: Input should be greater than or equal to 1 (allowed: 1 to 100000)"
    )
    assert instance.get_runs_count() == 0
    assert order_carts(dbs).count_documents({}) == 0


def test_a_bad_run_config_is_refused_before_the_run(
    dbs: Databases, instance: dg.DagsterInstance, defs: dg.Definitions
) -> None:
    with pytest.raises(InvalidRunConfigError) as refused:
        run_job(defs, instance, "cart_sync_job", user_id="")
    assert str(refused.value) == "invalid run config: user_id='': String should have at least 1 character"
    with pytest.raises(dg.DagsterInvalidConfigError):
        run_job(defs, instance, "cart_sync_job", prune_orphans="yes")


def test_the_demo_seed_plants_the_cart_drift_the_report_counts_and_the_sync_repairs(
    dbs: Databases, instance: dg.DagsterInstance, defs: dg.Definitions
) -> None:
    with dbs.cart_conn() as conn:
        products = seed_products(dbs.product_db, conn, products=60)
        planted = seed_carts(conn, dbs.order_db, carts=100, stale_product_ids=products.stale_ids)

    def report() -> dict[str, int]:
        with dbs.cart_conn() as conn:
            rows = conn.execute(CART_JOIN_SQL).fetchall()
        return cart_drift(rows, list(dbs.order_db.carts.find({}, {"_id": 0})))

    assert report() == {
        "carts_in_cart_db": 103,
        "unsyncable": 3,
        "missing_in_order_db": 10,
        "outdated_in_order_db": 10,
        "stale_in_order_db": 10,
        "newer_in_order_db": 10,
        "orphaned_in_order_db": 10,
    }
    assert (
        planted.carts,
        planted.unsyncable,
        planted.missing_in_order_db,
        planted.outdated_in_order_db,
        planted.stale_in_order_db,
        planted.newer_in_order_db,
        planted.orphaned_in_order_db,
    ) == (103, 3, 10, 10, 10, 10, 10)

    result = run_job(defs, instance, "full_sync_job", prune_orphans=True)

    assert result.success
    out = figures(result)
    assert (out["missing"], out["outdated"], out["newer_in_target"], out["orphaned"], out["rejected"]) == (
        10,
        10,
        10,
        10,
        3,
    )
    # The planted stale prices, plus the up-to-date carts of the products the product sync updated.
    assert planted.stale_after_product_sync > 0
    assert out["changed"] == planted.stale_in_order_db + planted.stale_after_product_sync
    assert report() == {
        "carts_in_cart_db": 103,
        "unsyncable": 3,
        "missing_in_order_db": 0,
        "outdated_in_order_db": 0,
        "stale_in_order_db": 0,
        "newer_in_order_db": 10,
        "orphaned_in_order_db": 0,
    }
    demo_user_docs = dbs.order_db.carts.count_documents({"userId": DEMO_USER})
    assert demo_user_docs == planted.demo_user_carts - planted.unsyncable
