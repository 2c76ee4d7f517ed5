"""Demo data with drift: what an operator sees when events between the services were lost."""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime

import psycopg
from bson import ObjectId
from pymongo.database import Database

from etl_defs.carts.table import CART_COLUMNS, CART_TABLE
from etl_defs.products.table import PRODUCT_COLUMNS, PRODUCT_TABLE, SELECT_PRODUCTS_SQL, ProductRow
from resources.postgres import copy_rows

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
    malformed: int
    #: Ids of the products whose Cart DB row is stale: the product sync updates them.
    stale_ids: frozenset[str] = field(default_factory=frozenset)

    @property
    def stale_in_cart_db(self) -> int:
        return len(self.stale_ids)


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

    missing = 0
    stale_ids = set()
    rows = []
    for i, doc in enumerate(docs):
        if i % 10 == 3:
            missing += 1
            continue
        price, title = doc["price"], doc["title"]
        if i % 10 == 5:
            stale_ids.add(str(doc["_id"]))
            price, title = (price + 50, title) if i % 20 == 5 else (price, title + " (old title)")
        rows.append(
            ProductRow(str(doc["_id"]), title, price, doc["image"], str(doc["sellerId"]), doc.get("quantity") or 0)
        )
    with cart_conn.transaction():
        cart_conn.execute("TRUNCATE cart, product")
        copy_rows(cart_conn, PRODUCT_TABLE, PRODUCT_COLUMNS, rows)
    return DemoCounts(
        products=products, missing_in_cart_db=missing, malformed=len(malformed), stale_ids=frozenset(stale_ids)
    )


def new_cart_id(rng: random.Random) -> uuid.UUID:
    """A random UUID drawn from `rng`, so demo data is reproducible."""
    return uuid.UUID(int=rng.getrandbits(128), version=4)


#: The user whose carts a per-user demo run (`user_id: demo-user-1`) repairs.
DEMO_USER = "demo-user-1"
DEMO_USERS = [f"demo-user-{n}" for n in range(1, 13)]
_LONG_AGO = datetime(2025, 1, 1, tzinfo=UTC)


@dataclass
class CartDemoCounts:
    """What `seed_carts` planted in the Cart DB and the Order DB."""

    carts: int
    missing_in_order_db: int
    outdated_in_order_db: int
    stale_in_order_db: int
    newer_in_order_db: int
    #: Carts up to date in the Order DB whose product the product sync updates: then they are stale too.
    stale_after_product_sync: int
    orphaned_in_order_db: int
    unsyncable: int
    demo_user_carts: int


def order_doc_fields(cart: tuple, product: tuple) -> dict:
    """The synced fields of the Order document a cart becomes, spelled out here, not by the sync's transform.

    `cart` is a `cart` row (id, quantity, userId, version, productId), `product` a `product` row.
    """
    cart_id, quantity, user_id, version, _ = cart
    product_id, title, price, image, seller_id, product_quantity = product
    return {
        "cartId": str(cart_id),
        "userId": user_id,
        "productId": product_id,
        "productTitle": title,
        "productPrice": price,
        "productImage": image,
        "sellerId": seller_id,
        "productQuantity": product_quantity,
        "cartQuantity": quantity,
        "total": price * quantity,
        "version": version,
    }


def _order_doc(cart: tuple, product: tuple) -> dict:
    """The Order document a cart becomes, as the Order service stored it long ago."""
    return {**order_doc_fields(cart, product), "createdAt": _LONG_AGO, "updatedAt": _LONG_AGO}


def seed_carts(
    cart_conn: psycopg.Connection,
    order_db: Database,
    *,
    carts: int = 300,
    seed: int = 11,
    stale_product_ids: frozenset[str] = frozenset(),
) -> CartDemoCounts:
    """Replace the Cart DB's carts and the Order DB's copies with demo data that has drifted.

    Needs the Cart DB's products (`seed_products` first). Of every ten carts one is
    missing in the Order DB, one has an older version there, one the same version with a
    stale product price, one a newer version there; ten Order carts are orphans; three
    carts cannot be synced (two name a product row that does not exist, one has quantity
    0). The users are demo-user-1 .. demo-user-12. Carts of `stale_product_ids` (products
    whose Cart DB row is stale) that are otherwise up to date are counted apart: the product
    sync changes their product, so the cart sync then finds them changed too.
    """
    rng = random.Random(seed)
    products = cart_conn.execute(f"{SELECT_PRODUCTS_SQL} ORDER BY id").fetchall()
    cart_conn.rollback()
    if not products:
        raise ValueError("the Cart DB has no products: seed the products first")
    rows, docs = [], []
    counts = CartDemoCounts(carts, 0, 0, 0, 0, 0, 0, 0, 0)
    for i in range(carts):
        product = rng.choice(products)
        version = rng.randrange(2, 6)
        cart = (new_cart_id(rng), rng.randrange(1, 6), DEMO_USERS[i % len(DEMO_USERS)], version, product[0])
        rows.append(cart)
        counts.demo_user_carts += cart[2] == DEMO_USER
        doc = _order_doc(cart, product)
        match i % 10:
            case 1:
                counts.missing_in_order_db += 1
                continue
            case 2:
                counts.outdated_in_order_db += 1
                doc["version"] = version - 1
                doc["cartQuantity"] = cart[1] + 1
                doc["total"] = doc["productPrice"] * doc["cartQuantity"]
            case 4:
                counts.stale_in_order_db += 1
                doc["productPrice"] = product[2] + 100  # the price before the last change
                doc["total"] = doc["productPrice"] * doc["cartQuantity"]
            case 6:
                counts.newer_in_order_db += 1
                doc["version"] = version + 1  # the Order service is ahead: never overwritten
                doc["cartQuantity"] = cart[1] + 2
                doc["total"] = doc["productPrice"] * doc["cartQuantity"]
            case _:
                counts.stale_after_product_sync += product[0] in stale_product_ids
        docs.append(doc)
    for _ in range(10):
        orphan = (new_cart_id(rng), 1, rng.choice(DEMO_USERS), 1, None)
        docs.append(_order_doc(orphan, rng.choice(products)))
        counts.orphaned_in_order_db += 1
    zero_quantity = (new_cart_id(rng), 0, DEMO_USER, 1, products[0][0])
    no_product = [(new_cart_id(rng), 1, DEMO_USER, 1, str(ObjectId())) for _ in range(2)]
    counts.unsyncable = 1 + len(no_product)
    counts.demo_user_carts += 1 + len(no_product)
    counts.carts += 1 + len(no_product)
    with cart_conn.transaction():
        cart_conn.execute("TRUNCATE cart")
        copy_rows(cart_conn, CART_TABLE, CART_COLUMNS, [*rows, zero_quantity])
        # A cart whose product row is gone: only possible with the foreign key bypassed.
        cart_conn.execute("SET LOCAL session_replication_role = replica")
        copy_rows(cart_conn, CART_TABLE, CART_COLUMNS, no_product)
    order_db["carts"].delete_many({})
    order_db["carts"].insert_many(docs)
    return counts
