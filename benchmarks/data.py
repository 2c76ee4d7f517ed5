"""The benchmark's data set, derived from each record's index alone: no I/O, nothing random at run time.

Product ids are ObjectIds that grow with the index, so index order is `_id` order and
`id COLLATE "C"` order, and the expected rows can be regenerated instead of kept. Cart ids
are uuid4s (random order, as the Cart service makes them), hashed from the index.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from enum import Enum
from typing import Any

from bson import ObjectId

from etl_defs.carts.transform import CartRow
from etl_defs.products.table import ProductRow

PRODUCT_EPOCH = 1_700_000_000
#: The five "random" bytes of an ObjectId: one per kind, so product, seller and user ids never collide.
_PRODUCT_MACHINE = bytes.fromhex("5eca110500")
_SELLER_MACHINE = bytes.fromhex("5e11e40100")
_USER_MACHINE = bytes.fromhex("0a5e400200")
SELLERS = 997
#: Distinct users over all carts, besides the one user the user_id sync is measured on.
USERS = 3000
FOCUS_USER_CARTS = 20
CATEGORIES = ("books", "garden", "kitchen", "toys", "tools", "music")
TIMESTAMP = datetime(2024, 5, 1, 12, 0, 0, 123000, tzinfo=UTC)  # millisecond precision, as MongoDB stores it


class Drift(Enum):
    """How a record differs on the target side before a sync."""

    IN_SYNC = "in_sync"
    MISSING = "missing"
    STALE = "stale"  # same version (carts), another price
    OUTDATED = "outdated"  # carts only: a lower version in the Order DB


def _object_id(machine: bytes, index: int) -> ObjectId:
    """An ObjectId that grows with `index`: timestamp, fixed machine bytes, counter."""
    timestamp = PRODUCT_EPOCH + index // 4096
    return ObjectId(timestamp.to_bytes(4, "big") + machine + (index % 2**24).to_bytes(3, "big"))


def _spread(index: int, salt: int) -> int:
    """A well-mixed non-negative number for `index` (Knuth's multiplicative hash)."""
    return ((index + salt) * 2654435761) % 2**32


# ----- products -----
def product_doc(index: int) -> dict[str, Any]:
    """The Product service's document: the synced fields and the others a real one carries."""
    price = 100 + _spread(index, 1) % 50_000
    return {
        "_id": _object_id(_PRODUCT_MACHINE, index),
        "title": f"Product {index}",
        "image": f"https://cdn.example.com/products/{index}.jpg",
        "price": price,
        "sellerId": _object_id(_SELLER_MACHINE, index % SELLERS),
        "quantity": index % 40,
        "description": f"Product {index}, a benchmark product with a description of realistic length. " * 3,
        "category": CATEGORIES[index % len(CATEGORIES)],
        "tags": ["bench", CATEGORIES[index % len(CATEGORIES)]],
        "rating": round(1 + (index % 40) / 10, 1),
        "originalPrice": price + price // 5,
        "stockQuantity": index % 500,
        "createdAt": TIMESTAMP,
        "updatedAt": TIMESTAMP,
    }


def product_row(index: int) -> ProductRow:
    """The Cart DB row the sync must make of `product_doc(index)`."""
    doc = product_doc(index)
    return ProductRow(str(doc["_id"]), doc["title"], doc["price"], doc["image"], str(doc["sellerId"]), doc["quantity"])


def product_drift(index: int) -> Drift:
    """5% missing from the Cart DB, 5% with a stale price."""
    return {0: Drift.MISSING, 1: Drift.STALE}.get(index % 20, Drift.IN_SYNC)


def drifted_product_rows(products: int) -> Iterator[ProductRow]:
    """The Cart DB's `product` rows before the sync, in id order."""
    for index in range(products):
        drift = product_drift(index)
        if drift is Drift.MISSING:
            continue
        row = product_row(index)
        yield row._replace(price=row.price + 1) if drift is Drift.STALE else row


# ----- carts -----
def cart_id(index: int) -> str:
    """A uuid4 in canonical text, hashed from the index."""
    digest = hashlib.blake2b(index.to_bytes(8, "big"), digest_size=16, person=b"bench-cart").digest()
    return str(uuid.UUID(bytes=digest, version=4))


def user_id(user: int) -> str:
    """User `user`'s id: ObjectId text, as the User service makes them."""
    return str(_object_id(_USER_MACHINE, user))


#: The user of the user_id sync: ~20 carts, where the other users have carts / USERS each.
FOCUS_USER = user_id(USERS)


def _focus_step(carts: int) -> int:
    return max(1, carts // FOCUS_USER_CARTS)


def is_focus_cart(index: int, carts: int) -> bool:
    """Whether cart `index` of `carts` belongs to FOCUS_USER (FOCUS_USER_CARTS of them, evenly spread)."""
    step = _focus_step(carts)
    return index % step == min(3, step - 1) and index // step < FOCUS_USER_CARTS


def focus_carts(carts: int) -> list[int]:
    """The indexes of FOCUS_USER's carts, in index order."""
    step = _focus_step(carts)
    return [index for index in range(min(3, step - 1), carts, step) if is_focus_cart(index, carts)]


def _cart_product(index: int, products: int) -> ProductRow:
    """The product in cart `index`, as the product sync leaves it in the Cart DB."""
    return product_row(_spread(index, 3) % products)


def cart_row(index: int, carts: int, products: int) -> tuple[str, int, str, int, str]:
    """The Cart DB `cart` row: id, quantity, userId, version, productId."""
    user = USERS if is_focus_cart(index, carts) else _spread(index, 2) % USERS
    return cart_id(index), 1 + index % 5, user_id(user), 2 + index % 9, _cart_product(index, products).id


def expected_cart(index: int, carts: int, products: int) -> CartRow:
    """The Order document fields the sync must write for cart `index`."""
    cart, quantity, user, version, _ = cart_row(index, carts, products)
    product = _cart_product(index, products)
    return CartRow(
        cartId=cart,
        userId=user,
        productId=product.id,
        productTitle=product.title,
        productPrice=product.price,
        productImage=product.image,
        sellerId=product.sellerId,
        productQuantity=product.quantity,
        cartQuantity=quantity,
        total=product.price * quantity,
        version=version,
    )


def cart_drift(index: int) -> Drift:
    """5% missing from the Order DB, 5% outdated there (a lower version), 1% stale (same version, old price)."""
    slot = index % 100
    if slot < 5:
        return Drift.MISSING
    if slot < 10:
        return Drift.OUTDATED
    return Drift.STALE if slot == 10 else Drift.IN_SYNC


def order_doc(row: CartRow, drift: Drift = Drift.IN_SYNC) -> dict[str, Any]:
    """The Order DB document for `row` as the sync writes it, or as it was before `drift`."""
    if drift is Drift.OUTDATED:
        quantity = row.cartQuantity % 5 + 1
        row = row._replace(version=row.version - 1, cartQuantity=quantity, total=row.productPrice * quantity)
    elif drift is Drift.STALE:
        row = row._replace(productPrice=row.productPrice + 1, total=(row.productPrice + 1) * row.cartQuantity)
    return {**row.fields(), "createdAt": TIMESTAMP, "updatedAt": TIMESTAMP}


#: The drift planted in FOCUS_USER's carts (in index order) before the user_id sync; the rest are in sync.
FOCUS_DRIFT = (Drift.MISSING, Drift.MISSING, Drift.OUTDATED, Drift.OUTDATED, Drift.OUTDATED, Drift.STALE)
