"""Planted drift for the fault tests, with every row's before and expected value written out.

A scenario knows, for every key, the target's value before the run (`before`, absent when
missing) and the value it must have after a converged run (`expected`). `whole_batches`
reads the target mid-way and proves that each batch of the plan is either fully applied
or not at all, in order.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from bson import ObjectId

from etl_defs.products.table import SELECT_PRODUCTS_SQL
from tests.factories import expected_row, product_doc
from tests.helpers import copy_carts, copy_products

if TYPE_CHECKING:
    from tests.faults.helpers import FaultStack


#: Order `carts` fields the cart sync owns (all but `_id`, `createdAt`, `updatedAt`).
CART_FIELDS = (
    "cartId",
    "userId",
    "productId",
    "productTitle",
    "productPrice",
    "productImage",
    "sellerId",
    "productQuantity",
    "cartQuantity",
    "total",
    "version",
)


#: `createdAt`/`updatedAt` of planted Order documents: anything the sync writes is later.
PLANTED_AT = datetime(2024, 1, 1, tzinfo=UTC)


@dataclass
class Drift:
    """Before and expected values of every key of one target, in the plan's key order."""

    before: dict[str, Any]
    expected: dict[str, Any]
    #: Keys whose target value is already right (the run must leave them untouched).
    correct: set[str] = field(default_factory=set)

    @property
    def keys(self) -> list[str]:
        """Every key the merge classifies (source and target), in byte order."""
        return sorted(self.before.keys() | self.expected.keys())

    @property
    def to_repair(self) -> set[str]:
        return {k for k in self.expected if self.before.get(k) != self.expected[k]}

    def whole_batches(self, current: dict[str, Any], batch_size: int, *, frontier_may_be_partial: bool = False) -> int:
        """How many batches `current` shows applied; fails unless they are whole and a prefix.

        Every key must hold its `before` or its `expected` value, nothing else. With
        `frontier_may_be_partial` the first batch not fully applied may be partly applied
        (a MongoDB bulk write is not atomic; its guarded writes make the replay harmless).
        """
        stray = [k for k in self.keys if current.get(k) not in (self.before.get(k), self.expected.get(k))]
        assert not stray, f"{len(stray)} keys hold neither their old nor their expected value, e.g. {stray[:3]}"
        keys = self.keys
        batches = [keys[i : i + batch_size] for i in range(0, len(keys), batch_size)]
        repair = self.to_repair
        applied: list[bool | None] = []  # None: the batch has nothing to write
        for number, batch in enumerate(batches, 1):
            done = [k for k in batch if current.get(k) == self.expected.get(k)]
            untouched = [k for k in batch if current.get(k) == self.before.get(k)]
            if not repair.intersection(batch):
                assert len(done) == len(batch), f"batch {number} had nothing to write, yet changed"
                applied.append(None)
            elif len(done) == len(batch):
                applied.append(True)
            elif len(untouched) == len(batch):
                applied.append(False)
            elif frontier_may_be_partial and False not in applied:
                applied.append(False)  # the frontier: partly applied
            else:
                half = [k for k in batch if k not in done]
                raise AssertionError(
                    f"batch {number} of {len(batches)} is half-written: {len(batch) - len(half)} of "
                    f"{len(batch)} keys applied, e.g. not {half[:3]}"
                )
        count = applied.index(False) if False in applied else len(applied)
        assert True not in applied[count:], f"batches applied out of order: {applied}"
        return count

    def batches(self, batch_size: int) -> int:
        """How many batches the plan has."""
        return -(-len(self.keys) // batch_size)


def product_drift(product_db: Any, cart_conn: Any, count: int) -> Drift:
    """`count` products; in the Cart DB a third missing, a third stale, a third right, plus orphans.

    Every batch of any size >= 3 has something to write, so a half-written batch shows.
    """
    docs = [product_doc() for _ in range(count)]
    product_db["products"].insert_many(docs)
    expected = {str(d["_id"]): expected_row(d) for d in docs}
    before: dict[str, tuple] = {}
    correct = set()
    for i, (key, row) in enumerate(sorted(expected.items())):
        match i % 3:
            case 0:
                pass  # missing
            case 1:
                before[key] = (row[0], row[1] + " (old)", row[2] + 7, *row[3:]) if i % 2 else (*row[:5], row[5] + 1)
            case 2:
                before[key] = row
                correct.add(key)
    for n in range(5):
        orphan = (str(ObjectId()), f"gone {n}", 500 + n, f"/img/gone-{n}.jpg", str(ObjectId()), n)
        before[orphan[0]] = expected[orphan[0]] = orphan  # counted, never deleted
        correct.add(orphan[0])
    copy_products(cart_conn, before.values())
    return Drift(before=before, expected=expected, correct=correct)


def product_rows(cart_conn: Any) -> dict[str, tuple]:
    return {row[0]: tuple(row) for row in cart_conn.execute(SELECT_PRODUCTS_SQL)}


def duplicate_product_ids(cart_conn: Any) -> list[tuple]:
    return cart_conn.execute("SELECT id, count(*) FROM product GROUP BY id HAVING count(*) > 1").fetchall()


def product_xmins(cart_conn: Any, keys: set[str]) -> dict[str, str]:
    """Row versions (`xmin`): unchanged exactly when the row was not written."""
    rows = cart_conn.execute("SELECT id, xmin::text FROM product WHERE id = ANY(%s)", (sorted(keys),))
    return dict(rows.fetchall())


@dataclass
class ProductScenario:
    """Product drift planted on the fault stack, and the checks every product fault ends with."""

    faults: FaultStack
    drift: Drift
    batch_size: int
    xmins: dict[str, str]  # of the rows that were right before

    @classmethod
    def plant(cls, faults: FaultStack, count: int, batch_size: int) -> ProductScenario:
        with faults.cart_conn() as conn:
            drift = product_drift(faults.product_db, conn, count)
            return cls(faults, drift, batch_size, product_xmins(conn, drift.correct))

    def applied_batches(self) -> int:
        """Batches written so far (each whole, in order: `Drift.whole_batches` fails otherwise)."""
        with self.faults.cart_conn() as conn:
            return self.drift.whole_batches(product_rows(conn), self.batch_size)

    def assert_stopped_part_way(self, at_least: int) -> int:
        applied = self.applied_batches()
        assert at_least <= applied < self.drift.batches(self.batch_size)
        return applied

    def assert_converged(self) -> None:
        """Every row as expected, no duplicate key, and rows that were right never rewritten."""
        with self.faults.cart_conn() as conn:
            assert product_rows(conn) == self.drift.expected
            assert duplicate_product_ids(conn) == []
            assert product_xmins(conn, self.drift.correct) == self.xmins


def cart_drift(cart_conn: Any, order_db: Any, carts: int, products: int) -> Drift:
    """`carts` carts over `products` products; in the Order DB a fifth each missing, outdated,
    changed at the same version, right, and newer than the Cart DB; plus orphans.

    Values are the Order document's synced fields as a tuple (`CART_FIELDS` order).
    """
    product_rows = [
        (str(ObjectId()), f"Product {n}", 150 + n, f"/img/{n}.jpg", str(ObjectId()), n % 7) for n in range(products)
    ]
    cart_rows = [
        (str(uuid.uuid4()), 1 + n % 4, f"user-{n % 50}", 1 + n % 3, product_rows[n % products][0]) for n in range(carts)
    ]
    copy_products(cart_conn, product_rows)
    copy_carts(cart_conn, cart_rows)
    by_id = {row[0]: row for row in product_rows}

    def doc(cart: tuple) -> tuple:
        """The Order document's synced fields for a cart, written out by hand."""
        cart_id, quantity, user, version, product_id = cart
        _, title, price, image, seller, stock = by_id[product_id]
        return (cart_id, user, product_id, title, price, image, seller, stock, quantity, price * quantity, version)

    before: dict[str, tuple] = {}
    expected: dict[str, tuple] = {}
    correct: set[str] = set()
    for i, cart in enumerate(sorted(cart_rows)):
        key, right = cart[0], doc(cart)
        expected[key] = right
        match i % 5:
            case 0:
                pass  # missing
            case 1:  # outdated: an older version with other figures
                before[key] = (*right[:8], right[8] + 1, right[4] * (right[8] + 1), right[10] - 1)
            case 2:  # changed: same version, the product's old price
                before[key] = (*right[:4], right[4] - 1, *right[5:9], (right[4] - 1) * right[8], right[10])
            case 3:
                before[key] = right
                correct.add(key)
            case 4:  # newer in the Order DB: never touched
                before[key] = expected[key] = (*right[:8], right[8] + 2, right[4] * (right[8] + 2), right[10] + 1)
                correct.add(key)
    for _n in range(5):  # orphans: counted, not deleted (no pruning)
        key = str(uuid.uuid4())
        before[key] = expected[key] = (
            key,
            "user-gone",
            str(ObjectId()),
            "gone",
            500,
            "/img/gone.jpg",
            str(ObjectId()),
            1,
            1,
            500,
            1,
        )
        correct.add(key)
    order_db["carts"].insert_many(
        [
            {**dict(zip(CART_FIELDS, value, strict=True)), "createdAt": PLANTED_AT, "updatedAt": PLANTED_AT}
            for value in before.values()
        ]
    )
    return Drift(before=before, expected=expected, correct=correct)


def order_carts(order_db: Any) -> dict[str, tuple]:
    """Synced fields of every Order cart by cartId (a duplicate cartId would show in the count)."""
    return {doc["cartId"]: tuple(doc.get(f) for f in CART_FIELDS) for doc in order_db["carts"].find({}, {"_id": 0})}


def duplicate_cart_ids(order_db: Any) -> list[dict]:
    pipeline = [{"$group": {"_id": "$cartId", "n": {"$sum": 1}}}, {"$match": {"n": {"$gt": 1}}}]
    return list(order_db["carts"].aggregate(pipeline))


def whole_order_docs(order_db: Any, keys: set[str]) -> dict[str, dict]:
    """Entire documents (`_id` and timestamps included): unchanged exactly when not written."""
    return {doc["cartId"]: doc for doc in order_db["carts"].find({"cartId": {"$in": sorted(keys)}})}


@dataclass
class CartScenario:
    """Cart drift planted on the fault stack, and the checks every cart fault ends with."""

    faults: FaultStack
    drift: Drift
    batch_size: int
    untouched: dict[str, dict]  # whole documents that were right (or newer) before

    @classmethod
    def plant(cls, faults: FaultStack, carts: int, products: int, batch_size: int) -> CartScenario:
        with faults.cart_conn() as conn:
            drift = cart_drift(conn, faults.order_db, carts, products)
        return cls(faults, drift, batch_size, whole_order_docs(faults.order_db, drift.correct))

    def applied_batches(self, *, frontier_may_be_partial: bool = False) -> int:
        """Batches written so far, in order; see `Drift.whole_batches` for the frontier."""
        current = order_carts(self.faults.order_db)
        return self.drift.whole_batches(current, self.batch_size, frontier_may_be_partial=frontier_may_be_partial)

    def assert_converged(self) -> None:
        """Every cart as expected, no duplicate cartId, and documents that were right never rewritten."""
        order_db = self.faults.order_db
        assert order_carts(order_db) == self.drift.expected
        assert duplicate_cart_ids(order_db) == []
        assert whole_order_docs(order_db, self.drift.correct) == self.untouched
        written = order_db["carts"].find({"cartId": {"$in": sorted(self.drift.to_repair)}})
        assert all(doc["updatedAt"] > PLANTED_AT for doc in written)
