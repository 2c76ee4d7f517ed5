"""Pure transform of a Product service document into a Cart DB `product` row: the contract's rules,
with a reason for every rejection.

The product sync checks the plainly valid case column-wise (`columns.py`) and sends here only
the documents the columns do not take, which this accepts as the contract says or rejects.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from bson import Decimal128, ObjectId

from etl_defs.products.table import ProductRow
from etl_defs.sync.plan import Rejection

PG_INT_MIN = -(2**31)
PG_INT_MAX = 2**31 - 1
MIN_PRICE = 100  # the Product service's contract: price >= 100
#: What the sync reads of a Product document (with `_id`): the fields a `product` row is made of.
PRODUCT_DOC_PROJECTION = dict.fromkeys(("title", "price", "image", "sellerId", "quantity"), 1)


class _Invalid(ValueError):
    pass


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _text(doc: Mapping[str, Any], name: str) -> str:
    if name not in doc:
        raise _Invalid(f"{name} is missing")
    value = doc[name]
    if not isinstance(value, str):
        raise _Invalid(f"{name} must be a string, got {_type_name(value)}")
    if "\x00" in value:
        raise _Invalid(f"{name} contains a NUL character, which PostgreSQL cannot store")
    return value


def _whole_number(name: str, value: Any) -> int:
    """An int from an int, an integral float or a Decimal128; anything else is invalid."""
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal128):
        raise _Invalid(f"{name} must be a number, got {_type_name(value)} {value!r}"[:200])
    if isinstance(value, Decimal128):
        value = value.to_decimal()
        if not value.is_finite():
            raise _Invalid(f"{name} is {value}, not a finite number")
    if isinstance(value, float) and not math.isfinite(value):
        raise _Invalid(f"{name} is {value}, not a finite number")
    if isinstance(value, float | Decimal) and value != int(value):
        raise _Invalid(f"{name} {value} is not a whole number (the Cart DB column is integer)")
    number = int(value)
    if not PG_INT_MIN <= number <= PG_INT_MAX:
        raise _Invalid(f"{name} {number} does not fit a PostgreSQL integer")
    return number


def _object_id_text(name: str, value: Any) -> str:
    if isinstance(value, ObjectId):
        return str(value)
    if isinstance(value, str) and ObjectId.is_valid(value):
        return value.lower()
    if value is None:
        raise _Invalid(f"{name} is missing")
    raise _Invalid(f"{name} must be an ObjectId, got {_type_name(value)} {value!r}"[:200])


def _row(doc: Mapping[str, Any], key: str) -> ProductRow:
    title = _text(doc, "title")
    if not title.strip():
        raise _Invalid("title is empty")
    if "price" not in doc:
        raise _Invalid("price is missing")
    price = _whole_number("price", doc["price"])
    if price < MIN_PRICE:
        raise _Invalid(f"price {price} is below the contract minimum of {MIN_PRICE}")
    image = _text(doc, "image")
    seller = _object_id_text("sellerId", doc.get("sellerId"))
    quantity = _whole_number("quantity", doc.get("quantity") or 0)
    if quantity < 0:
        raise _Invalid(f"quantity {quantity} is negative")
    return ProductRow(key, title, price, image, seller, quantity)


def _valid_row(doc: Mapping[str, Any], _id: ObjectId) -> ProductRow | None:
    """The row of a document that is plainly valid (exact types, values in range), else None.

    The common case in one expression; anything it does not accept goes through `_row`,
    which accepts or rejects it with a reason.
    """
    title, price, image = doc.get("title"), doc.get("price"), doc.get("image")
    seller, quantity = doc.get("sellerId"), doc.get("quantity")
    if (
        type(title) is str
        and type(price) is int
        and type(image) is str
        and type(seller) is ObjectId
        and type(quantity) is int
        and MIN_PRICE <= price <= PG_INT_MAX
        and 0 <= quantity <= PG_INT_MAX
        and title
        and not title.isspace()
        and "\x00" not in title
        and "\x00" not in image
    ):
        return ProductRow(str(_id), title, price, image, str(seller), quantity)
    return None


def transform_product(doc: Mapping[str, Any]) -> ProductRow | Rejection:
    """The `product` row for a Product document, or a `Rejection` saying why there is none."""
    _id = doc.get("_id")
    if type(_id) is ObjectId and (row := _valid_row(doc, _id)) is not None:
        return row
    if not isinstance(_id, ObjectId):
        return Rejection(key=repr(_id)[:100], reason=f"_id must be an ObjectId, got {_type_name(_id)}", ordered=False)
    key = str(_id)
    try:
        return _row(doc, key)
    except _Invalid as invalid:
        return Rejection(key=key, reason=str(invalid))
