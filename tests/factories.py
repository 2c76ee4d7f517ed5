"""Test data builders: valid records by default, any field overridable."""

from __future__ import annotations

import itertools
from typing import Any

from bson import ObjectId

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
    return {k: v for k, v in doc.items() if v is not _DROP}


class _Drop:
    def __repr__(self) -> str:
        return "DROP"


#: Pass as a field value to leave the field out of the document.
_DROP = DROP = _Drop()


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
