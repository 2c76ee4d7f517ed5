"""`python -m local.cdc_demo` (`make cdc-demo`): changes repaired within seconds by the change sensors' runs.

On the seeded local stack it brings both syncs in step from a terminal, starts `dagster dev`
(webserver and daemon) with the schedules stopped, turns `product_changes_sensor` and
`cart_changes_sensor` on, and then: changes a cart's quantity in the Cart DB and waits for
its Order DB document; changes a product's price in the Product MongoDB and waits for the
Cart DB row, then for the Order DB carts that hold the product.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
from bson import ObjectId

from local.dagster_dev import LOCATION, REPOSITORY, DagsterDev, dagster_job_execute, running_dagster_dev
from local.stack import CART_DB, ORDER_DB, PRODUCT_DB, LocalStack, free_port, stack_from_env
from resources.postgres import DEFAULT_REPLICATION_SLOT as DEFAULT_SLOT

PRODUCT_SENSOR, CART_SENSOR = "product_changes_sensor", "cart_changes_sensor"
START_SENSOR = """
mutation StartSensor($selector: SensorSelector!) {
  startSensor(sensorSelector: $selector) {
    __typename ... on Sensor { sensorState { status } } ... on PythonError { message }
  }
}"""
RUNS_TRIGGERED = """
query RunsTriggered($trigger: String!) {
  runsOrError(filter: {tags: [{key: "etl-sync/trigger", value: $trigger}]}, limit: 1) {
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
      assetMaterializations { metadataEntries { label ... on FloatMetadataEntry { floatValue }
                                                      ... on IntMetadataEntry { intValue } } }
    }
  }
}"""


@dataclass
class Repair:
    """A change, when it was seen repaired, and the run that carried it."""

    what: str
    changed_at: float  # POSIX seconds
    repaired_at: float
    run_id: str
    change_lag_s: float | None  # the run's own figure: the oldest change's commit time to the run's commit
    keys: int | None

    @property
    def seen_after_s(self) -> float:
        return self.repaired_at - self.changed_at

    def report(self) -> str:
        return (
            f"{datetime.fromtimestamp(self.repaired_at, UTC):%H:%M:%S} {self.what}, {self.seen_after_s:.1f}s after "
            f"the change; run {self.run_id}: {self.keys} key(s), change_lag_s {self.change_lag_s}"
        )


def _selector(sensor: str) -> dict[str, str]:
    return {"repositoryLocationName": LOCATION, "repositoryName": REPOSITORY, "sensorName": sensor}


def latest_tick(server: DagsterDev, sensor: str) -> dict | None:
    ticks = server.graphql(LATEST_TICK, selector=_selector(sensor))["sensorOrError"]["sensorState"]["ticks"]
    return ticks[0] if ticks else None


def start_sensor(server: DagsterDev, sensor: str) -> None:
    """Turn a sensor on and wait for its first tick after now (it takes its starting point)."""
    started = time.time()
    answer = server.graphql(START_SENSOR, selector=_selector(sensor))["startSensor"]
    if answer["__typename"] != "Sensor":
        raise RuntimeError(f"could not start {sensor}: {answer}")

    def ticked() -> dict | None:
        tick = latest_tick(server, sensor)
        return tick if tick and tick["timestamp"] >= started and tick["status"] != "STARTED" else None

    tick = server.wait_for(f"{sensor}'s first tick", ticked)
    print(f"{sensor} is on; first tick: {tick['status']}: {tick['skipReason']}")


def stop_sensor(server: DagsterDev, sensor: str) -> None:
    """Turn a sensor off again (its state lives in the instance, beyond this `dagster dev`)."""
    sensor_id = server.graphql(SENSOR_ID, selector=_selector(sensor))["sensorOrError"]["id"]
    answer = server.graphql(STOP_SENSOR, id=sensor_id)["stopSensor"]
    if answer["__typename"] == "PythonError":
        raise RuntimeError(f"could not stop {sensor}: {answer['message']}")


def _cart_db(stack: LocalStack, query: str, *params: Any) -> tuple | None:
    with psycopg.connect(stack.pg_url(CART_DB), autocommit=True) as conn:
        return conn.execute(query, params).fetchone()


def cart_db_price(stack: LocalStack, product_id: str) -> int | None:
    row = _cart_db(stack, "SELECT price FROM product WHERE id = %s", product_id)
    return row[0] if row else None


def _order_carts(stack: LocalStack, query: dict[str, Any]) -> list[dict[str, Any]]:
    client = stack.mongo_client()
    try:
        return list(client[ORDER_DB]["carts"].find(query))
    finally:
        client.close()


def _repaired(
    server: DagsterDev, what: str, trigger: str, changed_at: float, done: Callable[[], bool], timeout: float
) -> Repair:
    """Wait until `done()`, then the figures of the newest run `trigger` started."""
    server.wait_for(what, done, timeout)
    repaired_at = time.time()
    [newest] = server.graphql(RUNS_TRIGGERED, trigger=trigger)["runsOrError"]["results"]
    run_id = newest["runId"]
    server.finished_status(run_id)
    run = server.graphql(RUN, runId=run_id)["runOrError"]
    figures = {
        entry["label"]: entry.get("floatValue", entry.get("intValue"))
        for materialization in run["assetMaterializations"]
        for entry in materialization["metadataEntries"]
    }
    return Repair(what, changed_at, repaired_at, run_id, figures.get("change_lag_s"), figures.get("keys"))


def change_a_price(stack: LocalStack, product_id: ObjectId) -> tuple[int, float]:
    """Raise one product's price in the Product MongoDB by 111: (the new price, when)."""
    client = stack.mongo_client()
    try:
        products = client[PRODUCT_DB]["products"]
        old_price = products.find_one({"_id": product_id}, {"price": 1})["price"]
        changed_at = time.time()
        products.update_one({"_id": product_id}, {"$set": {"price": old_price + 111}})
    finally:
        client.close()
    print(
        f"{datetime.now(UTC):%H:%M:%S} changed product {product_id}'s price in the Product MongoDB: "
        f"{old_price} -> {old_price + 111}"
    )
    return old_price + 111, changed_at


def change_a_price_and_wait(server: DagsterDev, stack: LocalStack, product_id: ObjectId, timeout: float) -> Repair:
    """A price changed in the Product MongoDB, until the Cart DB row has it (product_changes_sensor's run)."""
    new_price, changed_at = change_a_price(stack, product_id)
    key = str(product_id)
    return _repaired(
        server,
        f"the Cart DB row of product {key} has price {new_price}",
        "product_changes",
        changed_at,
        lambda: cart_db_price(stack, key) == new_price,
        timeout,
    )


def order_prices_follow(
    server: DagsterDev, stack: LocalStack, product_id: str, changed_at: float, timeout: float
) -> Repair:
    """Wait until every Order DB cart holding `product_id` has the Cart DB's price (cart_changes_sensor's run),
    counting from `changed_at`, when the price changed at the source."""
    price = cart_db_price(stack, product_id)
    return _repaired(
        server,
        f"the Order DB carts holding product {product_id} have price {price}",
        "cart_changes",
        changed_at,
        lambda: all(doc["productPrice"] == price for doc in _order_carts(stack, {"productId": product_id})),
        timeout,
    )


def change_a_cart_and_wait(server: DagsterDev, stack: LocalStack, cart_id: str, timeout: float) -> Repair:
    """A cart's quantity changed in the Cart DB (a new version, as the Cart service writes it), until the
    Order DB document has it (cart_changes_sensor's run)."""
    changed_at = time.time()
    quantity, version = _cart_db(
        stack,
        "UPDATE cart SET quantity = quantity + 1, version = version + 1 WHERE id = %s RETURNING quantity, version",
        cart_id,
    )  # type: ignore[misc]
    print(f"{datetime.now(UTC):%H:%M:%S} changed cart {cart_id} in the Cart DB: quantity {quantity}, version {version}")
    return _repaired(
        server,
        f"the Order DB document of cart {cart_id} has quantity {quantity}",
        "cart_changes",
        changed_at,
        lambda: (
            [(d["cartQuantity"], d["version"]) for d in _order_carts(stack, {"cartId": cart_id})]
            == [(quantity, version)]
        ),
        timeout,
    )


def drop_cart_slot(stack: LocalStack, slot: str) -> None:
    """Drop the replication slot cart_changes_sensor created: a slot nobody reads keeps WAL."""
    row = _cart_db(
        stack, "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = %s", slot
    )
    if row is not None:
        print(f"dropped replication slot {slot} (the sensor is off again; a slot nobody reads keeps WAL)")


def a_cart_in_step(stack: LocalStack) -> tuple[str, ObjectId]:
    """A cart whose Order DB copy is in step, and whose product is a valid one in step with the Cart DB."""
    client = stack.mongo_client()
    try:
        products = client[PRODUCT_DB]["products"]
        for doc in _order_carts(stack, {}):
            row = _cart_db(
                stack,
                'SELECT c.version, p.price FROM cart c JOIN product p ON p.id = c."productId" WHERE c.id::text = %s',
                doc["cartId"],
            )
            if (
                not row
                or (doc.get("version"), doc.get("productPrice")) != row
                or not ObjectId.is_valid(doc["productId"])
            ):
                continue
            product = products.find_one({"_id": ObjectId(doc["productId"])}, {"price": 1})
            if product is not None and product.get("price") == row[1]:
                return doc["cartId"], product["_id"]
    finally:
        client.close()
    raise SystemExit("no cart is in step across the three databases: run make seed first")


def main() -> None:
    stack = stack_from_env()
    env = {
        **os.environ,
        **stack.env(),
        "DAGSTER_HOME": str(stack.state_dir / "dagster_home"),
        "ENABLE_SCHEDULER": "false",  # the sensors are turned on below; no schedule runs meanwhile
    }
    interval = int(env.setdefault("PRODUCT_CDC_INTERVAL_SECONDS", "10"))
    env.setdefault("CART_CDC_INTERVAL_SECONDS", str(interval))
    for job in ("product_sync_job", "cart_sync_job"):
        print(f"== {job} from a terminal, so the databases are in step before the changes")
        synced = dagster_job_execute(env, job)
        if synced.returncode != 0:
            raise SystemExit(f"{job} failed:\n{synced.stderr[-3000:]}")
    cart_id, product_id = a_cart_in_step(stack)
    other_cart = _cart_db(
        stack, 'SELECT id::text FROM cart WHERE "productId" <> %s AND id::text <> %s LIMIT 1', str(product_id), cart_id
    )
    log = stack.state_dir / "cdc-demo-dagster-dev.log"
    print(f"== dagster dev (webserver and daemon), both change sensors every {interval}s")
    timeout = 2 * interval + 120
    with running_dagster_dev(env, free_port(), log) as server:
        for sensor in (PRODUCT_SENSOR, CART_SENSOR):
            start_sensor(server, sensor)
        try:
            print(change_a_cart_and_wait(server, stack, other_cart[0] if other_cart else cart_id, timeout).report())
            price = change_a_price_and_wait(server, stack, product_id, timeout)
            print(price.report())
            print(order_prices_follow(server, stack, str(product_id), price.changed_at, timeout).report())
        finally:
            for sensor in (PRODUCT_SENSOR, CART_SENSOR):
                stop_sensor(server, sensor)
            drop_cart_slot(stack, env.get("CART_CDC_SLOT", DEFAULT_SLOT))
    print(
        f"Each sensor's interval: {interval}s, plus a run's start-up. The ticks and runs: make ui, then "
        f"Automation. dagster dev's log: {log}"
    )


if __name__ == "__main__":
    main()
