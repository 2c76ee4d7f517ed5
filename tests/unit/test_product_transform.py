"""The product transform: the contract's row, or a rejection that says why."""

from __future__ import annotations

import math

import pytest
from bson import Decimal128, ObjectId
from hypothesis import given
from hypothesis import strategies as st

from etl_defs.products import transform
from etl_defs.products.transform import ProductRow, compare_products, transform_product
from etl_defs.sync import Change, Rejection
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


def test_compare_reports_any_column_difference() -> None:
    row = ProductRow("a", "t", 100, "i", "s", 1)

    assert compare_products(row, row) is Change.UNCHANGED
    assert compare_products(row, row._replace(price=101)) is Change.CHANGED
    assert compare_products(row, row._replace(quantity=0)) is Change.CHANGED


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
