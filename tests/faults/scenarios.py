"""Planted drift for the fault tests, with every row's before and expected value written out.

A scenario knows, for every key, the target's value before the run (`before`, absent when
missing) and the value it must have after a converged run (`expected`). `whole_batches`
reads the target mid-way and proves that each batch of the plan is either fully applied
or not at all, in order.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bson import ObjectId

from tests.factories import expected_row, product_doc

if TYPE_CHECKING:
    from tests.faults.conftest import FaultStack

PRODUCT_COLUMNS = 'id, title, price, image, "sellerId", quantity'

#: Order `carts` fields the cart sync owns (all but `_id`, `createdAt`, `updatedAt`).
CART_FIELDS = (
    "cartId", "userId", "productId", "productTitle", "productPrice", "productImage",
    "sellerId", "productQuantity", "cartQuantity", "total", "version",
)  # fmt: skip


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

    def whole_batches(self, current: dict[str, Any], batch_size: int) -> int:
        """How many batches `current` shows applied; fails unless they are whole and a prefix."""
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
    with cart_conn.cursor().copy(f"COPY product ({PRODUCT_COLUMNS}) FROM STDIN") as copy:
        for row in before.values():
            copy.write_row(row)
    return Drift(before=before, expected=expected, correct=correct)


def product_rows(cart_conn: Any) -> dict[str, tuple]:
    return {row[0]: tuple(row) for row in cart_conn.execute(f"SELECT {PRODUCT_COLUMNS} FROM product")}


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


def new_uuid() -> str:
    return str(uuid.uuid4())
