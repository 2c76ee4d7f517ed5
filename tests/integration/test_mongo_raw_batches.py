"""`MongoResource.find_raw_batches` on a real server: the raw batches of `find`/`getMore` run as
commands (`resources/raw_batches.py`) hold the same bytes as pymongo's `find_raw_batches`."""

from __future__ import annotations

from typing import Any

import bson
import pytest
from bson import ObjectId
from pymongo.errors import OperationFailure

from resources import MongoResource
from resources.raw_batches import commands_reach_the_cursor
from tests.factories import product_doc
from tests.helpers import Databases, RecordMongoCommands

PROJECTION = {"title": 1, "price": 1}


def products(dbs: Databases, count: int) -> list[dict]:
    docs = [product_doc() for _ in range(count)]
    dbs.product_db.products.insert_many(docs)
    return sorted(docs, key=lambda doc: doc["_id"])


def resource(dbs: Databases, url_options: str = "", **options: Any) -> MongoResource:
    url = dbs.stack.mongo_url(dbs.product_db.name) + url_options
    state = dbs.stack.state
    return MongoResource(url=url, username=state.mongo_user, password=state.mongo_password, **options)


def pymongo_batches(dbs: Databases, projection: dict | None, fetch_size: int, **bounds: ObjectId) -> list[bytes]:
    cursor = dbs.product_db.products.find_raw_batches({}, projection).sort("_id", 1).hint("_id_")
    if "low" in bounds:
        cursor = cursor.min([("_id", bounds["low"])])
    if "high" in bounds:
        cursor = cursor.max([("_id", bounds["high"])])
    return list(cursor.batch_size(fetch_size))


@pytest.mark.parametrize("projection", [None, PROJECTION], ids=["whole", "projected"])
def test_batches_hold_the_bytes_pymongo_reads(
    dbs: Databases, mongo_commands: RecordMongoCommands, projection: dict | None
) -> None:
    docs = products(dbs, 25)
    db = resource(dbs)
    try:
        assert commands_reach_the_cursor(db.database())
        with mongo_commands() as commands:
            batches = list(db.find_raw_batches("products", {}, projection, order_by="_id", hint="_id_", batch_size=10))
    finally:
        db.close()

    assert [len(bson.decode_all(batch)) for batch in batches] == [10, 10, 5]
    assert b"".join(batches) == b"".join(pymongo_batches(dbs, projection, 10))
    assert [doc["_id"] for doc in bson.decode_all(b"".join(batches))] == [doc["_id"] for doc in docs]
    reads = [command.name for command in commands if command.name in ("find", "getMore", "killCursors")]
    assert reads == ["find", "getMore", "getMore"]  # the last batch ends the cursor: nothing to kill


def test_index_bounds_and_the_fetch_size_are_sent_as_the_cursor_sends_them(dbs: Databases) -> None:
    docs = products(dbs, 30)
    low, high = docs[4]["_id"], docs[20]["_id"]
    db = resource(dbs, fetch_size=4)
    try:
        batches = list(
            db.find_raw_batches(
                "products", {}, None, order_by="_id", hint="_id_", batch_size=100, index_from=low, index_to=high
            )
        )
    finally:
        db.close()

    assert {len(bson.decode_all(batch)) for batch in batches} == {4}  # 16 documents, 4 per round trip
    assert b"".join(batches) == b"".join(pymongo_batches(dbs, None, 4, low=low, high=high))


def test_a_reader_that_stops_early_kills_its_cursor(dbs: Databases, mongo_commands: RecordMongoCommands) -> None:
    products(dbs, 30)
    db = resource(dbs)
    try:
        with mongo_commands() as commands:
            batches = db.find_raw_batches("products", {}, None, order_by="_id", hint="_id_", batch_size=10)
            first = next(batches)
            batches.close()
    finally:
        db.close()

    assert len(bson.decode_all(first)) == 10
    [kill] = [command for command in commands if command.name == "killCursors"]
    [cursor_id] = kill.body["cursors"]
    assert cursor_id != 0
    with pytest.raises(OperationFailure) as lost:
        dbs.product_db.command({"getMore": cursor_id, "collection": "products"})
    assert lost.value.code == 43  # CursorNotFound: the server no longer holds it


def test_a_secondary_read_preference_reads_through_pymongos_cursor(
    dbs: Databases, mongo_commands: RecordMongoCommands
) -> None:
    products(dbs, 12)
    db = resource(dbs, url_options="?readPreference=secondaryPreferred")
    try:
        assert not commands_reach_the_cursor(db.database())
        batches = list(db.find_raw_batches("products", {}, None, order_by="_id", hint="_id_", batch_size=5))
    finally:
        db.close()

    assert b"".join(batches) == b"".join(pymongo_batches(dbs, None, 5))


def test_a_database_read_whole_drops_the_projection(dbs: Databases) -> None:
    products(dbs, 12)
    db = resource(dbs, project_fields=False)
    try:
        batches = list(db.find_raw_batches("products", {}, PROJECTION, order_by="_id", hint="_id_", batch_size=5))
    finally:
        db.close()

    assert b"".join(batches) == b"".join(pymongo_batches(dbs, None, 5))
