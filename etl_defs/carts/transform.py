"""Pure transform of a Cart DB cart (joined with its product) into an Order DB `carts` document.

No I/O here. `JoinedCart` is one row of `cart LEFT JOIN product` as the endpoints select
it; `CartRow` holds the fields of the Order document the sync owns (everything but
`_id`, `createdAt` and `updatedAt`); `compare_carts` classifies a source cart against the
Order document found under the same `cartId`.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Mapping
from decimal import Decimal
from typing import Any, NamedTuple

from bson import Decimal128

from etl_defs.sync.plan import Change, Rejection

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1


class JoinedCart(NamedTuple):
    """One row of `cart c LEFT JOIN product p`, in the endpoints' SELECT order."""

    cart_id: str
    user_id: str
    product_id: str
    cart_quantity: int
    version: int
    product_found: bool  # false: no `product` row matched (every p.* below is None)
    product_title: str | None
    product_price: int | None
    product_image: str | None
    seller_id: str | None
    product_quantity: int | None


class CartRow(NamedTuple):
    """The synced fields of an Order DB `carts` document, named as the Order service names them."""

    cartId: str  # noqa: N815 - the Order service's field names
    userId: str  # noqa: N815
    productId: str  # noqa: N815
    productTitle: str  # noqa: N815
    productPrice: int  # noqa: N815
    productImage: str  # noqa: N815
    sellerId: str  # noqa: N815
    productQuantity: int  # noqa: N815
    cartQuantity: int  # noqa: N815
    total: int
    version: int

    def fields(self) -> dict[str, Any]:
        """The document's synced fields (no `_id`, no timestamps)."""
        return self._asdict()


#: The Order document fields a same-version comparison looks at (all but the key and version).
COMPARED_FIELDS = tuple(name for name in CartRow._fields if name not in ("cartId", "version"))

#: The compared fields of a `CartRow`, in `COMPARED_FIELDS` order, in one C call.
_compared_values = operator.itemgetter(*(CartRow._fields.index(name) for name in COMPARED_FIELDS))

#: Fields read from the Order MongoDB.
CART_DOC_PROJECTION = {"_id": 0, **dict.fromkeys(CartRow._fields, 1)}


def transform_cart(cart: JoinedCart) -> CartRow | Rejection:
    """The Order document fields for a joined cart, or a `Rejection` saying why there are none."""
    key = cart.cart_id
    if not cart.product_found:
        return Rejection(
            key, f"product {cart.product_id!r} is not in the Cart DB's product table, so its price is unknown"
        )
    if cart.cart_quantity <= 0:
        return Rejection(key, f"cart quantity {cart.cart_quantity} is not positive")
    price: int = cart.product_price  # type: ignore[assignment] - NOT NULL when the product row exists
    if price < 0:
        return Rejection(key, f"product {cart.product_id!r} has a negative price {price}")
    total = price * cart.cart_quantity
    if not INT64_MIN <= total <= INT64_MAX:
        return Rejection(key, f"total {price} * {cart.cart_quantity} = {total} does not fit a 64-bit integer")
    return CartRow(
        cartId=key,
        userId=cart.user_id,
        productId=cart.product_id,
        productTitle=cart.product_title,  # type: ignore[arg-type] - NOT NULL in the Cart DB
        productPrice=price,
        productImage=cart.product_image,  # type: ignore[arg-type]
        sellerId=cart.seller_id,  # type: ignore[arg-type]
        productQuantity=cart.product_quantity,  # type: ignore[arg-type]
        cartQuantity=cart.cart_quantity,
        total=total,
        version=cart.version,
    )


def cart_key(row: CartRow) -> str:
    """The source row's key, as the merge compares it."""
    return row.cartId


def cart_doc_key(doc: Mapping[str, Any]) -> str:
    """An Order document's key, as the merge compares it."""
    return doc["cartId"]


def version_number(value: Any) -> int | float | Decimal | None:
    """A target document's `version` as a comparable number, or None when it has no usable one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, Decimal128):
        value = value.to_decimal()
        return value if value.is_finite() else None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return None


def compare_carts(source: CartRow, target: Mapping[str, Any]) -> Change:
    """Classify a source cart against the Order document with the same `cartId`.

    - target version greater: NEWER_IN_TARGET (never touched);
    - source version greater, or the target has no usable version: OUTDATED;
    - same version, some synced field differs (a product's title, price, image, seller or
      quantity changed, so `total` too): CHANGED;
    - otherwise UNCHANGED.
    """
    found_version = target.get("version")
    if type(found_version) is int and found_version == source.version:
        # The usual case, a cart in step, checked without a Python call per field: every
        # field equal and of the same type (so True is not 1) is UNCHANGED; anything
        # else gets the field-by-field comparison below.
        found = tuple(map(target.get, COMPARED_FIELDS))
        expected = _compared_values(source)
        if found == expected and tuple(map(type, found)) == tuple(map(type, expected)):
            return Change.UNCHANGED
    return _compare_field_by_field(source, target)


def _compare_field_by_field(source: CartRow, target: Mapping[str, Any]) -> Change:
    """`compare_carts` for any target document, one field at a time."""
    target_version = version_number(target.get("version"))
    if target_version is None or target_version < source.version:
        return Change.OUTDATED
    if target_version > source.version:
        return Change.NEWER_IN_TARGET
    for name in COMPARED_FIELDS:
        if name not in target or not _same(getattr(source, name), target[name]):
            return Change.CHANGED
    return Change.UNCHANGED


def _same(expected: Any, found: Any) -> bool:
    """Equal values of the same kind (so 1500 == 1500.0, but True != 1 and "5" != 5)."""
    if isinstance(found, bool) or isinstance(expected, bool):
        return type(found) is type(expected) and found == expected
    if isinstance(found, Decimal128):
        found = found.to_decimal()
    if isinstance(expected, int) and isinstance(found, int | float | Decimal):
        return found == expected
    return type(found) is type(expected) and found == expected
