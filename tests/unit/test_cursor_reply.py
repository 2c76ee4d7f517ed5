"""Cutting the documents of a batch out of a raw cursor reply (`resources/raw_batches.py`)."""

from __future__ import annotations

import bson
import pytest
from bson import ObjectId
from bson.errors import InvalidBSON

from resources.raw_batches import cursor_batch, walk_array

DOCS = [
    {"_id": ObjectId(), "n": n, "nested": {"a": [1, {"b": "x" * n}], "t": bson.Timestamp(n, 1)}} for n in range(300)
]
STREAM = b"".join(bson.encode(doc) for doc in DOCS)


def test_the_walk_in_python_drops_the_element_names_and_keeps_each_document_whole() -> None:
    array = bson.encode({"a": DOCS})[4 + 1 + 2 : -1]  # the array value of element "a"

    assert walk_array(array) == STREAM
    assert bson.decode_all(walk_array(array)) == DOCS


@pytest.mark.parametrize("batch", ["firstBatch", "nextBatch"])
def test_a_cursor_document_gives_its_batch_and_its_id_whatever_else_it_holds(batch: str) -> None:
    cursor = {
        "id": bson.Int64(77),
        "ns": "product.products",
        batch: DOCS,
        "postBatchResumeToken": {"_data": "8263"},
        "atClusterTime": bson.Timestamp(5, 2),
        "partialResultsReturned": False,
        "regex": bson.Regex("^a", "i"),
        "blob": bson.Binary(b"\x00\x01", 4),
    }

    assert cursor_batch(bson.encode(cursor)) == (STREAM, 77)


def test_an_empty_last_batch_has_no_documents_and_cursor_id_zero() -> None:
    assert cursor_batch(bson.encode({"nextBatch": [], "id": bson.Int64(0), "ns": "p.p"})) == (b"", 0)


def test_a_batch_holding_a_value_that_is_not_a_document_is_refused() -> None:
    with pytest.raises(InvalidBSON):
        cursor_batch(bson.encode({"nextBatch": [1, 2], "id": bson.Int64(0)}))


def test_a_truncated_cursor_document_is_refused() -> None:
    whole = bson.encode({"nextBatch": DOCS[:3], "id": bson.Int64(5)})
    cut = (len(whole) - 8).to_bytes(4, "little") + whole[4:-8]

    with pytest.raises((InvalidBSON, ValueError, IndexError)):
        cursor_batch(cut)
