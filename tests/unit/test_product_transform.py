"""The product transform: the contract's row, or a rejection that says why."""

from __future__ import annotations

import math
import sys

import bson
import pytest
from bson import Decimal128, ObjectId
from hypothesis import given
from hypothesis import strategies as st

from etl_defs.products import columns, transform
from etl_defs.products.transform import ProductRow, transform_product
from etl_defs.sync import Rejection
from tests.factories import DROP, expected_row, product_doc


def test_a_valid_document_becomes_the_contract_row() -> None:
    doc = product_doc(quantity=7)

    row = transform_product(doc)

    assert row == ProductRow(*expected_row(doc))
    assert row.id == str(doc["_id"]) and row.sellerId == str(doc["sellerId"])


@pytest.mark.parametrize("quantity", [DROP, None, 0])
def test_a_missing_or_empty_quantity_becomes_zero(quantity: object) -> None:
    row = transform_product(product_doc(quantity=quantity))

    assert isinstance(row, ProductRow) and row.quantity == 0


@pytest.mark.parametrize(("price", "expected"), [(150.0, 150), (Decimal128("2500"), 2500), (2**31 - 1, 2**31 - 1)])
def test_whole_number_prices_of_any_numeric_type_are_accepted(price: object, expected: int) -> None:
    row = transform_product(product_doc(price=price))

    assert isinstance(row, ProductRow) and row.price == expected


def test_a_seller_id_given_as_object_id_text_is_normalised() -> None:
    seller = ObjectId()

    row = transform_product(product_doc(sellerId=str(seller).upper()))

    assert isinstance(row, ProductRow) and row.sellerId == str(seller)


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"title": DROP}, "title is missing"),
        ({"title": None}, "title must be a string, got null"),
        ({"title": "   "}, "title is empty"),
        ({"title": {"en": "nested"}}, "title must be a string, got dict"),
        ({"title": "a\x00b"}, "title contains a NUL character"),
        ({"price": DROP}, "price is missing"),
        ({"price": "1999"}, "price must be a number, got str '1999'"),
        ({"price": True}, "price must be a number, got bool"),
        ({"price": math.nan}, "price is nan, not a finite number"),
        ({"price": math.inf}, "price is inf, not a finite number"),
        ({"price": 150.5}, "price 150.5 is not a whole number"),
        ({"price": 2**31}, "price 2147483648 does not fit a PostgreSQL integer"),
        ({"price": 99}, "price 99 is below the contract minimum of 100"),
        ({"image": DROP}, "image is missing"),
        ({"image": 42}, "image must be a string, got int"),
        ({"sellerId": DROP}, "sellerId is missing"),
        ({"sellerId": "seller-7"}, "sellerId must be an ObjectId, got str 'seller-7'"),
        ({"quantity": -3}, "quantity -3 is negative"),
        ({"quantity": "5"}, "quantity must be a number, got str '5'"),
        ({"quantity": 2**40}, "quantity 1099511627776 does not fit a PostgreSQL integer"),
    ],
)
def test_malformed_documents_are_rejected_with_their_reason(overrides: dict, reason: str) -> None:
    doc = product_doc(**overrides)

    result = transform_product(doc)

    assert isinstance(result, Rejection)
    assert result.key == str(doc["_id"]) and result.ordered
    assert result.reason.startswith(reason)


@pytest.mark.parametrize("bad_id", ["abc", 17, None])
def test_an_id_that_is_not_an_object_id_is_rejected_outside_the_ordered_merge(bad_id: object) -> None:
    result = transform_product(product_doc(_id=bad_id))

    assert result == Rejection(
        key=repr(bad_id),
        reason=f"_id must be an ObjectId, got {type(bad_id).__name__ if bad_id is not None else 'null'}",
        ordered=False,
    )


def test_unknown_fields_and_unicode_are_carried_as_the_contract_says() -> None:
    doc = product_doc(title="Tasse « Ünïcødé » 😀", extra={"nested": True})

    row = transform_product(doc)

    assert isinstance(row, ProductRow) and row.title == "Tasse « Ünïcødé » 😀"


def test_the_columns_classify_each_key_of_an_interval_once() -> None:
    rows = [ProductRow(key, "t", 100, "i", "s", 1) for key in ("a", "b", "c")]
    found = [
        rows[0],
        rows[1]._replace(price=101),
        ProductRow("d", "t", 100, "i", "s", 1),
        ProductRow("e", "t", 1, "", "", 0),
    ]

    plan = columns.classify_products(
        columns.product_records(columns.rows_table(rows)), columns.product_records(columns.rows_table(found)), {"e"}
    )

    assert plan.unchanged.to_pylist() == ["a"]
    assert plan.changed["id"].to_pylist() == ["b"] and plan.changed["price"].to_pylist() == [100]
    assert plan.missing["id"].to_pylist() == ["c"]
    assert plan.orphaned["id"].to_pylist() == ["d"]  # "e" is a rejected source key's row: consumed


_ANY_VALUE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**33), max_value=2**33),
    st.floats(allow_nan=True),
    st.text(max_size=4),
    st.sampled_from(["", " ", "\x00", "Teapot", "a\x00b", "\u2003"]),
    st.builds(ObjectId),
)


@given(
    st.dictionaries(st.sampled_from(["title", "price", "image", "sellerId", "quantity"]), _ANY_VALUE),
    st.builds(ObjectId),
)
def test_the_fast_path_for_plainly_valid_documents_agrees_with_the_field_by_field_checks(
    fields: dict, _id: ObjectId
) -> None:
    doc = {"_id": _id, **fields}
    try:
        expected: object = transform._row(doc, str(_id))
    except transform._Invalid as invalid:
        expected = Rejection(str(_id), str(invalid))
    assert transform_product(doc) == expected


_DOCUMENT = st.builds(
    lambda _id, fields: {"_id": _id, **fields},
    st.one_of(st.builds(ObjectId), st.builds(ObjectId), st.integers(0, 9), st.text(max_size=2)),
    st.dictionaries(
        st.sampled_from(["title", "price", "image", "sellerId", "quantity"]),
        st.one_of(_ANY_VALUE, st.builds(Decimal128, st.sampled_from(["150", "1e3", "NaN", "2.5"]))),
    ),
)


@given(st.lists(_DOCUMENT, max_size=12))
def test_the_columnar_decode_agrees_with_the_per_document_transform(docs: list[dict]) -> None:
    """Every document, in any mix: the same rows, the same rejections with the same reasons."""
    ordered = sorted({d["_id"]: d for d in docs if isinstance(d["_id"], ObjectId)}.values(), key=lambda d: d["_id"])
    docs = [d for d in docs if not isinstance(d["_id"], ObjectId)] + ordered
    raw = b"".join(bson.encode(doc) for doc in docs)

    batch = columns.decode_products(raw)

    results = [transform_product(doc) for doc in bson.decode_all(raw)]  # as the server hands them over
    assert batch.rows.records.to_pylist() == [row._asdict() for row in results if isinstance(row, ProductRow)]
    assert batch.rows.keys == [row.id for row in results if isinstance(row, ProductRow)]
    assert sorted(batch.rejected, key=repr) == sorted([r for r in results if isinstance(r, Rejection)], key=repr)
    assert batch.keys == [str(d["_id"]) for d in ordered]


def test_rows_go_through_csv_and_back_whole_however_the_stream_is_cut() -> None:
    """What the sync writes with COPY and reads back with COPY: quotes, commas, newlines, empty strings."""
    titles = ['a "quoted", title', "two\nlines", "\r\n", "é😀", "plain"]
    rows = [ProductRow(f"k{i}", title, 100 + i, "" if i % 2 else "/i.jpg", "s", i) for i, title in enumerate(titles)]
    payload = columns.csv_payload(columns.rows_table(rows))

    for size in (1, 3, 7, len(payload)):
        chunks = [payload[i : i + size] for i in range(0, len(payload), size)]
        tables = list(columns.read_csv_rows(chunks, block_size=size))
        assert [ProductRow(**row) for table in tables for row in table.to_pylist()] == rows


def test_the_columns_know_every_whitespace_character_python_does() -> None:
    every = "".join(filter(str.isspace, map(chr, range(sys.maxunicode + 1))))

    assert every == columns.PYTHON_WHITESPACE
