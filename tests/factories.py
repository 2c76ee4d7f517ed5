"""Test data builders: valid records by default, any field overridable."""

from __future__ import annotations

import itertools
import uuid
from typing import Any

from bson import ObjectId

from etl_defs.carts.table import CartTableRow
from etl_defs.products.table import ProductRow

_counter = itertools.count(1)


def product_doc(**overrides: Any) -> dict[str, Any]:
    """A valid Product service document."""
    n = next(_counter)
    doc: dict[str, Any] = {
        "_id": ObjectId(),
        "title": f"Product {n}",
        "image": f"/img/{n}.jpg",
        "price": 100 + n,
        "sellerId": ObjectId(),
        "quantity": n % 9,
        "description": "test",
        "category": "test",
        "tags": ["t"],
        "rating": 4.5,
        "originalPrice": 200 + n,
        "stockQuantity": 10,
    }
    doc.update(overrides)
    return {k: v for k, v in doc.items() if v is not DROP}


class _Drop:
    def __repr__(self) -> str:
        return "DROP"


#: Pass as a field value to leave the field out of the document.
DROP = _Drop()


def expected_row(doc: dict[str, Any]) -> tuple:
    """The `product` row the contract says `doc` becomes (written out by hand, not via transform)."""
    return (
        str(doc["_id"]),
        doc["title"],
        int(doc["price"]),
        doc["image"],
        str(doc["sellerId"]),
        int(doc.get("quantity") or 0),
    )


def new_product(**overrides: Any) -> ProductRow:
    """A valid Cart DB `product` row."""
    n = next(_counter)
    values = {
        "id": str(ObjectId()),
        "title": f"Product {n}",
        "price": 100 + n * 10,
        "image": f"/img/{n}.jpg",
        "sellerId": str(ObjectId()),
        "quantity": n % 7,
    }
    values.update(overrides)
    return ProductRow(**values)


def new_cart(product: ProductRow | str, **overrides: Any) -> CartTableRow:
    """A valid `cart` row holding `product` (a row, or just its id)."""
    values = {
        "id": str(uuid.uuid4()),
        "quantity": 2,
        "userId": "user-1",
        "version": 1,
        "productId": product if isinstance(product, str) else product.id,
    }
    values.update(overrides)
    return CartTableRow(**values)


def expected_doc(cart: CartTableRow, product: ProductRow) -> dict[str, Any]:
    """The Order document the contract says a cart becomes (written out by hand, not via transform)."""
    return {
        "cartId": cart.id,
        "userId": cart.userId,
        "productId": product.id,
        "productTitle": product.title,
        "productPrice": product.price,
        "productImage": product.image,
        "sellerId": product.sellerId,
        "productQuantity": product.quantity,
        "cartQuantity": cart.quantity,
        "total": product.price * cart.quantity,
        "version": cart.version,
    }
