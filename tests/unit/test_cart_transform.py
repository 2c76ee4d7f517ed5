"""The pure cart transform and comparison: a joined Cart DB row -> an Order `carts` document."""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

import pytest
from bson import Decimal128, Int64
from hypothesis import given
from hypothesis import strategies as st

from etl_defs.carts import transform
from etl_defs.carts.pipeline import CART_SYNC
from etl_defs.carts.transform import CartRow, JoinedCart, compare_carts, transform_cart
from etl_defs.sync import Change, Rejection, plan_batches

CART_ID = "0b6f1d2e-3c4a-4e5f-8a9b-0c1d2e3f4a5b"


def joined(**overrides: Any) -> JoinedCart:
    values: dict[str, Any] = {
        "cart_id": CART_ID,
        "user_id": "user-1",
        "product_id": "65a000000000000000000001",
        "cart_quantity": 3,
        "version": 2,
        "product_found": True,
        "product_title": "Teapot",
        "product_price": 1999,
        "product_image": "/img/teapot.jpg",
        "seller_id": "65b000000000000000000002",
        "product_quantity": 7,
    }
    values.update(overrides)
    return JoinedCart(**values)


def order_doc(**overrides: Any) -> dict[str, Any]:
    """The Order document `joined()` should become, written out by hand."""
    doc: dict[str, Any] = {
        "cartId": CART_ID,
        "userId": "user-1",
        "productId": "65a000000000000000000001",
        "productTitle": "Teapot",
        "productPrice": 1999,
        "productImage": "/img/teapot.jpg",
        "sellerId": "65b000000000000000000002",
        "productQuantity": 7,
        "cartQuantity": 3,
        "total": 5997,
        "version": 2,
    }
    doc.update(overrides)
    return doc


def test_a_cart_with_its_product_becomes_the_order_document() -> None:
    row = transform_cart(joined())

    assert isinstance(row, CartRow)
    assert row.fields() == order_doc()


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        (
            {
                "product_found": False,
                "product_title": None,
                "product_price": None,
                "product_image": None,
                "seller_id": None,
                "product_quantity": None,
            },
            "product '65a000000000000000000001' is not in the Cart DB's product table, so its price is unknown",
        ),
        ({"cart_quantity": 0}, "cart quantity 0 is not positive"),
        ({"cart_quantity": -2}, "cart quantity -2 is not positive"),
        ({"product_price": -1}, "product '65a000000000000000000001' has a negative price -1"),
        (
            {"product_price": 2**62, "cart_quantity": 4},
            f"total {2**62} * 4 = {2**64} does not fit a 64-bit integer",
        ),
    ],
)
def test_a_cart_that_cannot_be_represented_is_rejected_with_its_reason(overrides: dict, reason: str) -> None:
    assert transform_cart(joined(**overrides)) == Rejection(CART_ID, reason)


def test_the_largest_total_a_64_bit_integer_holds_is_accepted() -> None:
    row = transform_cart(joined(product_price=2**63 - 1, cart_quantity=1))

    assert isinstance(row, CartRow)
    assert row.total == 2**63 - 1


def test_a_free_product_gives_a_zero_total() -> None:
    row = transform_cart(joined(product_price=0))

    assert isinstance(row, CartRow)
    assert row.total == 0


def source_row(**overrides: Any) -> CartRow:
    row = transform_cart(joined(**overrides))
    assert isinstance(row, CartRow)
    return row


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        (order_doc(), Change.UNCHANGED),
        (order_doc(createdAt="x", updatedAt="y", _id="z"), Change.UNCHANGED),  # not synced fields
        (order_doc(productPrice=1500.0, total=5997.0), Change.CHANGED),
        (order_doc(productPrice=1999.0, total=Int64(5997), version=2.0), Change.UNCHANGED),  # numeric types
        (order_doc(productPrice=Decimal128(Decimal("1999"))), Change.UNCHANGED),
        (order_doc(productPrice=1899, total=5697), Change.CHANGED),  # stale price
        (order_doc(productTitle="Old teapot"), Change.CHANGED),
        (order_doc(productImage="/img/old.jpg"), Change.CHANGED),
        (order_doc(sellerId="65b000000000000000000009"), Change.CHANGED),
        (order_doc(productQuantity=6), Change.CHANGED),
        (order_doc(total=1), Change.CHANGED),
        (order_doc(cartQuantity=2), Change.CHANGED),
        (order_doc(userId="someone-else"), Change.CHANGED),
        (order_doc(productPrice="1999"), Change.CHANGED),  # a string is not the number
        (order_doc(productQuantity=True), Change.CHANGED),
        ({k: v for k, v in order_doc().items() if k != "productImage"}, Change.CHANGED),
        (order_doc(version=1, productPrice=1), Change.OUTDATED),
        (order_doc(version=1), Change.OUTDATED),
        (order_doc(version=None), Change.OUTDATED),
        ({k: v for k, v in order_doc().items() if k != "version"}, Change.OUTDATED),
        (order_doc(version="2"), Change.OUTDATED),  # no usable version: the source is the truth
        (order_doc(version=float("nan")), Change.OUTDATED),
        (order_doc(version=3), Change.NEWER_IN_TARGET),
        (order_doc(version=3, productPrice=1), Change.NEWER_IN_TARGET),
        (order_doc(version=2.5), Change.NEWER_IN_TARGET),
        (order_doc(version=Decimal128("3")), Change.NEWER_IN_TARGET),
    ],
)
def test_compare_carts_classifies_by_version_then_by_every_synced_field(target: dict, expected: Change) -> None:
    assert compare_carts(source_row(), target) is expected


def test_the_cart_spec_plans_every_class_in_one_merge() -> None:
    ids = sorted(str(uuid.UUID(int=n)) for n in range(1, 8))
    source = [
        joined(cart_id=ids[0]),  # missing
        joined(cart_id=ids[1], version=3),  # outdated
        joined(cart_id=ids[2]),  # changed
        joined(cart_id=ids[3]),  # unchanged
        joined(cart_id=ids[4], version=1),  # newer in target
        joined(cart_id=ids[5], product_found=False),  # rejected
    ]
    target = [
        order_doc(cartId=ids[1]),
        order_doc(cartId=ids[2], productPrice=10),
        order_doc(cartId=ids[3]),
        order_doc(cartId=ids[4]),
        order_doc(cartId=ids[6]),  # orphaned
    ]

    (plan,) = plan_batches(CART_SYNC, [source], [target], batch_size=100)

    assert [row.cartId for row in plan.missing] == [ids[0]]
    assert [(row.cartId, row.version, doc["version"]) for row, doc in plan.outdated] == [(ids[1], 3, 2)]
    assert [(row.cartId, row.productPrice, doc["productPrice"]) for row, doc in plan.changed] == [(ids[2], 1999, 10)]
    assert plan.unchanged == [ids[3]]
    assert [(row.cartId, doc["version"]) for row, doc in plan.newer_in_target] == [(ids[4], 2)]
    assert [r.key for r in plan.rejected] == [ids[5]]
    assert [doc["cartId"] for doc in plan.orphaned] == [ids[6]]


_FIELD_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-3, max_value=3),
    st.floats(min_value=-3, max_value=3),
    st.sampled_from(["", "a", "1"]),
    st.builds(Int64, st.integers(min_value=-3, max_value=3)),
    st.builds(Decimal128, st.sampled_from(["1", "2.5", "NaN"])),
)


@given(
    st.dictionaries(st.sampled_from([*CartRow._fields, "extra"]), _FIELD_VALUES, max_size=6),
    st.sets(st.sampled_from(CartRow._fields), max_size=3),
)
def test_the_fast_comparison_of_a_cart_in_step_agrees_with_the_field_by_field_one(
    changes: dict[str, Any], removed: set[str]
) -> None:
    source = CartRow("c-1", "u-1", "p-1", "Teapot", 1, "/t.png", "s-1", 1, 1, 1, 1)
    target = {**source._asdict(), **changes}
    for name in removed:
        target.pop(name, None)

    assert compare_carts(source, target) == transform._compare_field_by_field(source, target)
