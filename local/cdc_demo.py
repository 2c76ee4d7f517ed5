"""`python -m local.cdc_demo` (`make cdc-demo`): a price changed in MongoDB, repaired by product_changes_sensor's run.

On the seeded local stack it brings the Cart DB in step with a terminal `product_sync_job`,
starts `dagster dev` (webserver and daemon) with the schedules stopped, turns the sensor on,
changes one product's price in the Product MongoDB and waits for the Cart DB row to follow.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import psycopg
from bson import ObjectId

from local.dagster_dev import LOCATION, REPOSITORY, DagsterDev, dagster_job_execute, running_dagster_dev
from local.stack import CART_DB, PRODUCT_DB, LocalStack, free_port, stack_from_env

SENSOR = "product_changes_sensor"
SELECTOR = {"repositoryLocationName": LOCATION, "repositoryName": REPOSITORY, "sensorName": SENSOR}
START_SENSOR = """
mutation StartSensor($selector: SensorSelector!) {
  startSensor(sensorSelector: $selector) {
    __typename ... on Sensor { sensorState { status } } ... on PythonError { message }
  }
}"""
CHANGE_RUNS = """
query ChangeRuns {
  runsOrError(filter: {tags: [{key: "etl-sync/trigger", value: "product_changes"}]}, limit: 1) {
    ... on Runs { results { runId } }
  }
}"""
SENSOR_ID = """
query SensorId($selector: SensorSelector!) { sensorOrError(sensorSelector: $selector) { ... on Sensor { id } } }"""
STOP_SENSOR = """
mutation StopSensor($id: String!) { stopSensor(id: $id) { __typename ... on PythonError { message } } }"""
LATEST_TICK = """
query LatestTick($selector: SensorSelector!) {
  sensorOrError(sensorSelector: $selector) {
    ... on Sensor { sensorState { ticks(limit: 1) { status timestamp skipReason } } }
  }
}"""
RUN = """
query Run($runId: ID!) {
  runOrError(runId: $runId) {
    ... on Run {
      status startTime endTime
      assetMaterializations { metadataEntries { label ... on FloatMetadataEntry { floatValue }
                                                      ... on IntMetadataEntry { intValue } } }
    }
  }
}"""


@dataclass
class Repair:
    """A price change and the run that carried it into the Cart DB."""

    product_id: str
    old_price: int
    new_price: int
    changed_at: float  # POSIX seconds, when the price changed in MongoDB
    repaired_at: float  # when the Cart DB row showed the new price
    run_id: str
    change_lag_s: float | None  # the run's own figure: the change's cluster time to its commit
    keys: int | None

    @property
    def seen_after_s(self) -> float:
        return self.repaired_at - self.changed_at


def latest_tick(server: DagsterDev) -> dict | None:
    ticks = server.graphql(LATEST_TICK, selector=SELECTOR)["sensorOrError"]["sensorState"]["ticks"]
    return ticks[0] if ticks else None


def start_sensor(server: DagsterDev) -> None:
    """Turn the sensor on and wait for its first tick after now (it takes the stream's token)."""
    started = time.time()
    answer = server.graphql(START_SENSOR, selector=SELECTOR)["startSensor"]
    if answer["__typename"] != "Sensor":
        raise RuntimeError(f"could not start {SENSOR}: {answer}")

    def ticked() -> dict | None:
        tick = latest_tick(server)
        return tick if tick and tick["timestamp"] >= started and tick["status"] != "STARTED" else None

    tick = server.wait_for(f"{SENSOR}'s first tick", ticked)
    print(f"{SENSOR} is on; first tick: {tick['status']}: {tick['skipReason']}")


def stop_sensor(server: DagsterDev) -> None:
    """Turn the sensor off again (its state lives in the instance, beyond this `dagster dev`)."""
    sensor_id = server.graphql(SENSOR_ID, selector=SELECTOR)["sensorOrError"]["id"]
    answer = server.graphql(STOP_SENSOR, id=sensor_id)["stopSensor"]
    if answer["__typename"] == "PythonError":
        raise RuntimeError(f"could not stop {SENSOR}: {answer['message']}")


def cart_db_price(stack: LocalStack, product_id: str) -> int | None:
    with psycopg.connect(stack.pg_url(CART_DB)) as conn:
        row = conn.execute("SELECT price FROM product WHERE id = %s", (product_id,)).fetchone()
    return row[0] if row else None


def change_a_price_and_wait(server: DagsterDev, stack: LocalStack, product_id: ObjectId, timeout: float) -> Repair:
    """Raise one product's price in the Product MongoDB and wait until the Cart DB row has it."""
    client = stack.mongo_client()
    try:
        products = client[PRODUCT_DB]["products"]
        old_price = products.find_one({"_id": product_id}, {"price": 1})["price"]
        new_price = old_price + 111
        changed_at = time.time()
        products.update_one({"_id": product_id}, {"$set": {"price": new_price}})
    finally:
        client.close()
    key = str(product_id)
    print(
        f"{datetime.now(UTC):%H:%M:%S} changed the price of product {key} in the Product MongoDB: "
        f"{old_price} -> {new_price}"
    )
    server.wait_for("the Cart DB row to have the new price", lambda: cart_db_price(stack, key) == new_price, timeout)
    repaired_at = time.time()

    [newest] = server.graphql(CHANGE_RUNS)["runsOrError"]["results"]
    run_id = newest["runId"]
    server.finished_status(run_id)
    run = server.graphql(RUN, runId=run_id)["runOrError"]
    figures = {
        entry["label"]: entry.get("floatValue", entry.get("intValue"))
        for materialization in run["assetMaterializations"]
        for entry in materialization["metadataEntries"]
    }
    return Repair(
        key, old_price, new_price, changed_at, repaired_at, run_id, figures.get("change_lag_s"), figures.get("keys")
    )


def a_product_in_step(stack: LocalStack) -> ObjectId:
    """A product whose Cart DB row matches its document's price (the demo data has malformed ones too)."""
    client = stack.mongo_client()
    try:
        for doc in client[PRODUCT_DB]["products"].find({"_id": {"$type": "objectId"}, "price": {"$type": "int"}}):
            if cart_db_price(stack, str(doc["_id"])) == doc["price"]:
                return doc["_id"]
    finally:
        client.close()
    raise SystemExit("no product of the Product MongoDB is in step with the Cart DB: run make seed first")


def main() -> None:
    stack = stack_from_env()
    env = {
        **os.environ,
        **stack.env(),
        "DAGSTER_HOME": str(stack.state_dir / "dagster_home"),
        "ENABLE_SCHEDULER": "false",  # the sensor is turned on below; no schedule runs meanwhile
    }
    interval = int(env.setdefault("PRODUCT_CDC_INTERVAL_SECONDS", "10"))
    print("== product_sync_job from a terminal, so the Cart DB is in step before the change")
    synced = dagster_job_execute(env, "product_sync_job")
    if synced.returncode != 0:
        raise SystemExit(f"product_sync_job failed:\n{synced.stderr[-3000:]}")
    product_id = a_product_in_step(stack)
    log = stack.state_dir / "cdc-demo-dagster-dev.log"
    print(f"== dagster dev (webserver and daemon), {SENSOR} every {interval}s (PRODUCT_CDC_INTERVAL_SECONDS)")
    with running_dagster_dev(env, free_port(), log) as server:
        start_sensor(server)
        try:
            repair = change_a_price_and_wait(server, stack, product_id, timeout=interval + 120)
        finally:
            stop_sensor(server)
    print(
        f"{datetime.fromtimestamp(repair.repaired_at, UTC):%H:%M:%S} the Cart DB row has price {repair.new_price}, "
        f"{repair.seen_after_s:.1f}s after the change (sensor interval {interval}s, plus the run's start-up)"
    )
    print(
        f"run {repair.run_id} synced {repair.keys} key(s); its change_lag_s (the change's cluster time to the "
        f"commit): {repair.change_lag_s}"
    )
    print(f"The sensor's ticks and the run: make ui, then Automation > {SENSOR}. dagster dev's log: {log}")


if __name__ == "__main__":
    main()
