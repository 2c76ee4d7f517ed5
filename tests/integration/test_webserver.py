"""The UI's path: `dagster dev` (webserver + daemon) on loopback, driven through its GraphQL API.

`dagster dev` runs as `make ui` runs it: the repo's workspace.yaml and dagster.yaml (the
instance in the test server's `dagster` PostgreSQL database, the queued run coordinator
with its tag limits). Runs launched through GraphQL are queued, so the daemon has to
dequeue them; that is why this starts `dagster dev` and not the webserver alone (which
would need the DefaultRunCoordinator and would not exercise the queue nor run the
validate-after-sync sensor).

The `dagster_dev` fixture (tests/integration/conftest.py) starts it in its own session and
stops it by signalling its whole process group (webserver, daemon, code servers): a
background `dagster dev` without job control ignores SIGTERM.
"""

import json
from pathlib import Path
from typing import Any

from etl_defs.settings import SyncSettings
from local.cdc_demo import (
    CART_SENSOR,
    PRODUCT_SENSOR,
    change_a_cart_and_wait,
    change_a_price_and_wait,
    drop_cart_slot,
    start_sensor,
    stop_sensor,
)
from local.dagster_dev import DagsterDev
from tests.factories import expected_doc, expected_row, new_cart, new_product, product_doc
from tests.helpers import KEYED_RUN_S, RUN_START_S, TEST_SECRETS, Databases, copy_carts, copy_products
from tests.integration.helpers import dagster_job_execute, run_id_of

#: A keyed repair run's start and its run, after the change sensor's tick requested it.
REPAIR_RUN_S = RUN_START_S + KEYED_RUN_S

RUNS_TAGGED = """
query RunsTagged($key: String!, $value: String!) {
  runsOrError(filter: {tags: [{key: $key, value: $value}]}) { ... on Runs { results { runId jobName status } } }
}"""

LATEST_MATERIALIZATION = """
query LatestMaterialization($path: [String!]!) {
  assetOrError(assetKey: {path: $path}) {
    ... on Asset {
      assetMaterializations(limit: 1) { runId metadataEntries { label ... on IntMetadataEntry { intValue } } }
    }
  }
}"""

CHECK_EXECUTIONS = """
query CheckExecutions($path: [String!]!, $name: String!) {
  assetCheckExecutions(assetKey: {path: $path}, checkName: $name, limit: 5) { runId status evaluation { success } }
}"""


def test_product_sync_launched_through_graphql_succeeds_and_records_its_materialization(
    dbs: Databases, dagster_dev: DagsterDev
) -> None:
    docs = [product_doc() for _ in range(9)]
    dbs.product_db.products.insert_many(docs)

    run_id = dagster_dev.launch("product_sync_job", {"batch_size": 4})

    assert dagster_dev.finished_status(run_id) == "SUCCESS"
    asset = dagster_dev.graphql(LATEST_MATERIALIZATION, path=["cart_db", "product"])["assetOrError"]
    [materialization] = asset["assetMaterializations"]
    assert materialization["runId"] == run_id
    figures = {entry["label"]: entry.get("intValue") for entry in materialization["metadataEntries"]}
    assert (figures["source_rows"], figures["inserted"], figures["batches"]) == (9, 9, 3)
    assert dbs.product_rows() == {str(d["_id"]): expected_row(d) for d in docs}


def test_a_real_sync_from_the_ui_is_validated_by_a_run_the_sensor_starts_and_a_dry_run_is_not(
    dbs: Databases, dagster_dev: DagsterDev
) -> None:
    dbs.product_db.products.insert_many([product_doc() for _ in range(3)])

    dry_id = dagster_dev.launch("product_sync_job", {"dry_run": True})
    assert dagster_dev.finished_status(dry_id) == "SUCCESS"
    real_id = dagster_dev.launch("product_sync_job", {})
    assert dagster_dev.finished_status(real_id) == "SUCCESS"

    def validation_runs(run_id: str) -> list[dict[str, Any]]:
        found = dagster_dev.graphql(RUNS_TAGGED, key="etl-sync/validates-run", value=run_id)
        return found["runsOrError"]["results"]

    [validation] = dagster_dev.wait_for("the validation run after the sync", lambda: validation_runs(real_id))
    assert validation["jobName"] == "validation_job"
    assert dagster_dev.finished_status(validation["runId"]) == "SUCCESS"
    for check in ("no_missing_products", "no_stale_products", "no_orphaned_products"):
        found = dagster_dev.graphql(CHECK_EXECUTIONS, path=["cart_db", "product"], name=check)
        executions = found["assetCheckExecutions"]
        assert {"runId": validation["runId"], "status": "SUCCEEDED", "evaluation": {"success": True}} in executions
    # The sensor handles run events in order: it saw the dry run before the real run, and let it pass.
    assert validation_runs(dry_id) == []


def test_a_sync_from_the_terminal_is_validated_by_a_run_the_daemon_starts(
    dbs: Databases, dagster_dev: DagsterDev, tmp_path: Path
) -> None:
    dbs.product_db.products.insert_many([product_doc() for _ in range(4)])

    # `dagster job execute` beside the running UI, on the same instance: it bypasses the daemon.
    terminal = dagster_job_execute(dagster_dev.env, "product_sync_job", None, tmp_path)

    assert terminal.returncode == 0, terminal.stderr[-3000:]
    run_id = run_id_of("product_sync_job", terminal.stderr)
    found = dagster_dev.wait_for(
        "the validation run after the terminal sync",
        lambda: dagster_dev.graphql(RUNS_TAGGED, key="etl-sync/validates-run", value=run_id)["runsOrError"]["results"],
    )
    [validation] = found
    assert validation["jobName"] == "validation_job"
    assert dagster_dev.finished_status(validation["runId"]) == "SUCCESS"
    executions = dagster_dev.graphql(CHECK_EXECUTIONS, path=["cart_db", "product"], name="no_missing_products")
    assert {"runId": validation["runId"], "status": "SUCCEEDED", "evaluation": {"success": True}} in (
        executions["assetCheckExecutions"]
    )


RUN_TIMES = "query RunTimes($runId: ID!) { runOrError(runId: $runId) { ... on Run { status startTime endTime } } }"


def test_two_runs_launched_together_queue_one_behind_the_other(dbs: Databases, dagster_dev: DagsterDev) -> None:
    docs = [product_doc() for _ in range(12)]
    dbs.product_db.products.insert_many(docs)
    config = {"batch_size": 3, "batch_pause_ms": 800}  # ~3 s of writing: long enough to overlap if allowed

    first, second = (dagster_dev.launch("product_sync_job", config) for _ in range(2))

    assert dagster_dev.finished_status(first) == "SUCCESS"
    assert dagster_dev.finished_status(second) == "SUCCESS"
    times = sorted(
        (dagster_dev.graphql(RUN_TIMES, runId=run_id)["runOrError"] for run_id in (first, second)),
        key=lambda run: run["startTime"],
    )
    assert times[0]["endTime"] <= times[1]["startTime"], times  # the queue held one back: no overlap
    with dbs.cart_conn() as conn:
        assert conn.execute("SELECT count(*), count(DISTINCT id) FROM product").fetchone() == (12, 12)
    assert dbs.product_rows() == {str(d["_id"]): expected_row(d) for d in docs}


EVERYTHING_A_UI_SHOWS = """
{
  instance { info runLauncher { name } runQueuingSupported }
  runsOrError { ... on Runs { results {
    runId jobName status runConfigYaml tags { key value }
    eventConnection { events { __typename ... on MessageEvent { message }
      ... on ExecutionStepFailureEvent { error { message stack causes { message stack } } }
      ... on RunFailureEvent { error { message stack } }
      ... on MaterializationEvent { metadataEntries { label ... on TextMetadataEntry { text }
                                                      ... on JsonMetadataEntry { jsonString } } } } }
  } } }
  workspaceOrError { ... on Workspace { locationEntries { locationOrLoadError {
    ... on RepositoryLocation { repositories { allTopLevelResourceDetails {
      name configFields { name } configuredValues { key value type } } } }
    ... on PythonError { message stack } } } } }
}"""


def test_graphql_answers_hold_no_secret(dbs: Databases, dagster_dev: DagsterDev) -> None:
    dbs.product_db.products.insert_many([product_doc(), product_doc(price="not a number")])
    run_id = dagster_dev.launch("full_sync_job", {})
    assert dagster_dev.finished_status(run_id) == "SUCCESS"

    answer = json.dumps(dagster_dev.graphql(EVERYTHING_A_UI_SHOWS))

    assert run_id in answer and "price must be a number" in answer  # the answer covers the run and its events
    resources = {"MONGO_PASSWORD", "CART_DB_URL"}
    assert all(name in answer for name in resources)  # resources show the variables' names...
    leaked = [secret for secret in TEST_SECRETS if secret in answer]
    assert leaked == []  # ...and never their values


def test_the_daemon_runs_the_product_change_sensor_and_its_run_repairs_a_changed_price_within_an_interval(
    dbs: Databases, dagster_dev: DagsterDev
) -> None:
    docs = [product_doc() for _ in range(5)]
    dbs.product_db.products.insert_many(docs)
    with dbs.cart_conn() as conn:
        copy_products(conn, [expected_row(doc) for doc in docs])
    interval = int(dagster_dev.env["PRODUCT_CDC_INTERVAL_SECONDS"])

    start_sensor(dagster_dev, PRODUCT_SENSOR)
    try:
        repair = change_a_price_and_wait(dagster_dev, dbs.stack, docs[2]["_id"], timeout=interval + REPAIR_RUN_S)
    finally:
        stop_sensor(dagster_dev, PRODUCT_SENSOR)

    assert dbs.product_rows()[str(docs[2]["_id"])][2] == docs[2]["price"] + 111
    assert repair.seen_after_s < interval + REPAIR_RUN_S
    assert repair.keys == 1
    assert repair.change_lag_s is not None and 0 < repair.change_lag_s < interval + REPAIR_RUN_S
    others = {str(doc["_id"]): expected_row(doc) for doc in docs if doc is not docs[2]}
    assert {key: row for key, row in dbs.product_rows().items() if key in others} == others


def test_the_daemon_runs_the_cart_change_sensor_and_its_run_repairs_a_changed_cart_within_an_interval(
    dbs: Databases, dagster_dev: DagsterDev, settings: SyncSettings
) -> None:
    product = new_product()
    carts = [new_cart(product) for _ in range(3)]
    with dbs.cart_conn() as conn:
        copy_products(conn, [product])
        copy_carts(conn, carts)
    dbs.order_db.carts.insert_many([expected_doc(cart, product) for cart in carts])
    interval = int(dagster_dev.env["CART_CDC_INTERVAL_SECONDS"])

    start_sensor(dagster_dev, CART_SENSOR)  # its first tick creates the slot
    try:
        repair = change_a_cart_and_wait(dagster_dev, dbs.stack, carts[1].id, timeout=interval + REPAIR_RUN_S)
    finally:
        stop_sensor(dagster_dev, CART_SENSOR)
        drop_cart_slot(dbs.stack, settings.cart_cdc_slot)

    changed = carts[1]._replace(quantity=carts[1].quantity + 1, version=carts[1].version + 1)
    documents = {doc["cartId"]: doc for doc in dbs.order_db.carts.find({}, {"_id": 0, "createdAt": 0, "updatedAt": 0})}
    assert documents == {
        carts[0].id: expected_doc(carts[0], product),
        changed.id: expected_doc(changed, product),
        carts[2].id: expected_doc(carts[2], product),
    }
    assert repair.seen_after_s < interval + REPAIR_RUN_S
    assert repair.keys == 1
    assert repair.change_lag_s is not None and 0 < repair.change_lag_s < interval + REPAIR_RUN_S
