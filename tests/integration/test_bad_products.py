"""A corpus of malformed product documents through the real job: each rejected with its own
reason (or accepted as the contract says), and their batch neighbours land."""

from __future__ import annotations

import math

import dagster as dg
from bson import Decimal128, Int64, ObjectId
from hypothesis import given, settings
from hypothesis import strategies as st

from etl_defs.products.transform import PG_INT_MAX, PG_INT_MIN, ProductRow, transform_product
from etl_defs.sync import Rejection
from tests.factories import DROP, expected_row, product_doc
from tests.helpers import Databases

DUPLICATE_ID = ObjectId()

#: (what is wrong, overrides, the reason's beginning, or None when the contract accepts it)
PRODUCT_CORPUS: list[tuple[str, dict, str | None]] = [
    ("missing title", {"title": DROP}, "title is missing"),
    ("null title", {"title": None}, "title must be a string, got null"),
    ("nested document as title", {"title": {"en": "Mug"}}, "title must be a string, got dict"),
    ("array as image", {"image": ["/a.jpg"]}, "image must be a string, got list"),
    ("price as a string", {"price": "1999"}, "price must be a number, got str"),
    ("NaN price", {"price": math.nan}, "price is nan, not a finite number"),
    ("infinite price", {"price": -math.inf}, "price is -inf, not a finite number"),
    ("Decimal128 NaN price", {"price": Decimal128("NaN")}, "price is NaN, not a finite number"),
    ("fractional price", {"price": 199.99}, "price 199.99 is not a whole number"),
    ("price beyond PostgreSQL integer", {"price": Int64(2**31)}, "price 2147483648 does not fit a PostgreSQL integer"),
    ("price below the contract", {"price": 5}, "price 5 is below the contract minimum of 100"),
    ("boolean price", {"price": True}, "price must be a number, got bool"),
    ("negative quantity", {"quantity": -1}, "quantity -1 is negative"),
    ("quantity as a string", {"quantity": "3"}, "quantity must be a number, got str"),
    ("missing sellerId", {"sellerId": DROP}, "sellerId is missing"),
    ("sellerId not an ObjectId", {"sellerId": 12345}, "sellerId must be an ObjectId, got int"),
    ("NUL in a string", {"image": "/img/\x00.jpg"}, "image contains a NUL character"),
    # The same logical key twice: a valid product, and a copy whose _id is that ObjectId's text.
    ("duplicate logical key", {"_id": str(DUPLICATE_ID)}, "_id must be an ObjectId, got str"),
    ("integer _id", {"_id": 42}, "_id must be an ObjectId, got int"),
    # Accepted as the contract says:
    ("over-long title (varchar has no limit)", {"title": "x" * 200_000}, None),
    ("unicode edge cases", {"title": "Zero\u200bwidth \U0001f600 e\u0301 \ufeff"}, None),
    ("extra unknown fields", {"colour": "red", "dimensions": {"w": 1}}, None),
    ("integral float price", {"price": 250.0}, None),
    ("quantity null means 0", {"quantity": None}, None),
]


def test_every_malformed_document_is_rejected_with_its_reason_and_neighbours_land(
    dbs: Databases, instance: dg.DagsterInstance, defs: dg.Definitions
) -> None:
    bad = {name: product_doc(**overrides) for name, overrides, _ in PRODUCT_CORPUS}
    good = [product_doc() for _ in range(19)] + [product_doc(_id=DUPLICATE_ID)]
    dbs.product_db.products.insert_many(good + list(bad.values()))

    result = defs.resolve_job_def("product_sync_job").execute_in_process(
        run_config={"batch_size": 5}, instance=instance
    )

    assert result.success
    rejections = result.asset_materializations_for_node("report_product_sync")[0].metadata["rejections"].value
    reasons = {r["key"]: r["reason"] for r in rejections}
    accepted = [doc for doc in good]
    for name, _, reason in PRODUCT_CORPUS:
        doc = bad[name]
        key = str(doc["_id"]) if isinstance(doc["_id"], ObjectId) else repr(doc["_id"])
        if reason is None:
            assert key not in reasons, name
            accepted.append(doc)
        else:
            assert reasons.get(key, "").startswith(reason), (name, reasons.get(key))
    assert len(reasons) == sum(1 for *_, reason in PRODUCT_CORPUS if reason is not None)
    assert dbs.product_rows() == {str(d["_id"]): expected_row(d) for d in accepted}


values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.builds(ObjectId),
)
documents = st.fixed_dictionaries(
    {"_id": st.one_of(st.builds(ObjectId), values)},
    optional={name: values for name in ("title", "price", "image", "sellerId", "quantity")},
)


@settings(max_examples=400, deadline=None)
@given(doc=documents)
def test_the_transform_never_raises_and_what_it_accepts_fits_the_table(doc: dict) -> None:
    result = transform_product(doc)

    if isinstance(result, Rejection):
        assert result.reason
        assert result.ordered == isinstance(doc["_id"], ObjectId)
        return
    assert isinstance(result, ProductRow)
    assert result.id == str(doc["_id"])
    assert isinstance(result.title, str) and result.title.strip() and "\x00" not in result.title
    assert isinstance(result.image, str) and "\x00" not in result.image
    assert 100 <= result.price <= PG_INT_MAX and type(result.price) is int
    assert 0 <= result.quantity <= PG_INT_MAX and type(result.quantity) is int
    assert result.quantity >= PG_INT_MIN
    assert ObjectId.is_valid(result.sellerId) and result.sellerId == result.sellerId.lower()
