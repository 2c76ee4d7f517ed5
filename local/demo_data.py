"""Demo data with drift: what an operator sees when events between the services were lost."""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

import psycopg
from bson import ObjectId
from pymongo.database import Database

#: Malformed product documents the sync must reject, each with the reason it should give.
MALFORMED_PRODUCTS: list[tuple[str, dict]] = [
    ("title is missing", {"price": 1500, "image": "/img/x.png", "quantity": 3}),
    ("price must be a number", {"title": "Price as text", "price": "1999", "image": "/img/x.png"}),
    ("does not fit a PostgreSQL integer", {"title": "Too expensive", "price": 2**40, "image": "/img/x.png"}),
    ("sellerId is missing", {"title": "No seller", "price": 1500, "image": "/img/x.png", "_no_seller": True}),
    ("_id must be an ObjectId", {"_id": "not-an-object-id", "title": "Bad id", "price": 1500, "image": "/img/x.png"}),
]


@dataclass
class DemoCounts:
    """What `seed` planted, so a demo can show before and after."""

    products: int
    missing_in_cart_db: int
    stale_in_cart_db: int
    malformed: int


def _product(rng: random.Random, index: int) -> dict:
    return {
        "_id": ObjectId(),
        "title": f"Product {index:05d}",
        "image": f"/images/product-{index:05d}.jpg",
        "price": rng.randrange(100, 100_000),
        "sellerId": ObjectId(),
        "quantity": rng.choice([None, 0, 1, 5, 12]) if index % 7 == 0 else rng.randrange(0, 50),
        "description": "A fine product",
        "category": rng.choice(["books", "garden", "kitchen", "toys"]),
        "tags": ["demo"],
        "rating": round(rng.uniform(1, 5), 1),
        "originalPrice": rng.randrange(100, 100_000),
        "stockQuantity": rng.randrange(0, 500),
        "createdAt": datetime.now(UTC),
    }


def seed_products(
    product_db: Database, cart_conn: psycopg.Connection, *, products: int = 500, seed: int = 7
) -> DemoCounts:
    """Replace both sides' products with demo data in which ~10% are missing and ~10% stale."""
    rng = random.Random(seed)
    docs = [_product(rng, i) for i in range(products)]
    for doc in docs:
        if doc["quantity"] is None:
            del doc["quantity"]
    malformed = []
    for reason, template in MALFORMED_PRODUCTS:
        doc = {"_id": ObjectId(), "sellerId": ObjectId(), **template, "_demo_reason": reason}
        if doc.pop("_no_seller", False):
            del doc["sellerId"]
        malformed.append(doc)
    product_db["products"].drop()
    product_db["products"].insert_many(docs + malformed)

    missing = stale = 0
    rows = []
    for i, doc in enumerate(docs):
        if i % 10 == 3:
            missing += 1
            continue
        price, title = doc["price"], doc["title"]
        if i % 10 == 5:
            stale += 1
            price, title = (price + 50, title) if i % 20 == 5 else (price, title + " (old title)")
        rows.append((str(doc["_id"]), title, price, doc["image"], str(doc["sellerId"]), doc.get("quantity") or 0))
    with cart_conn.transaction():
        cart_conn.execute("TRUNCATE cart, product")
        with cart_conn.cursor().copy('COPY product (id, title, price, image, "sellerId", quantity) FROM STDIN') as copy:
            for row in rows:
                copy.write_row(row)
    return DemoCounts(products=products, missing_in_cart_db=missing, stale_in_cart_db=stale, malformed=len(malformed))


def new_cart_id(rng: random.Random) -> uuid.UUID:
    """A random UUID drawn from `rng`, so demo data is reproducible."""
    return uuid.UUID(int=rng.getrandbits(128), version=4)
