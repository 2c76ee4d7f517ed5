"""I/O of the cart sync: Cart PostgreSQL `cart` LEFT JOIN `product` -> Order MongoDB `carts`."""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, NamedTuple

import psycopg
from pymongo import InsertOne, UpdateOne
from pymongo.collection import Collection
from pymongo.errors import BulkWriteError
from pymongo.write_concern import WriteConcern

from etl_defs.carts.table import CART_COLUMN_TYPES, CART_ID_INDEX, CART_TABLE, ORDER_CARTS
from etl_defs.carts.transform import CART_DOC_PROJECTION, CartRow, JoinedCart, cart_doc_key, version_number
from etl_defs.products.endpoints import product_schema_problems
from etl_defs.sync import WHOLE_TABLE, BatchPlan, Rejection, SyncScope, WriteResult, uuid_points
from resources import MongoResource, PostgresResource
from resources.postgres import column_type_problems

#: MongoDB's duplicate-key error codes.
DUPLICATE_KEY_CODES = frozenset({11000, 11001, 12582})

_SELECT = (
    'SELECT c.id::text, c."userId", c."productId", c.quantity, c.version, p.id IS NOT NULL, '
    'p.title, p.price, p.image, p."sellerId", p.quantity '
    'FROM cart c LEFT JOIN product p ON p.id = c."productId"'
)
# uuid order is byte order of the 16 bytes, which is the order of their lowercase text.
_ORDER = "ORDER BY c.id"
#: The source query of a whole cart sync (the benchmark's bare scan reads it too).
SCAN_SQL = f"{_SELECT} {_ORDER}"
STILL_IN_CART_DB_SQL = "SELECT id::text FROM cart WHERE id = ANY(%s::uuid[])"
CARTS_HOLDING_SQL = 'SELECT id::text FROM cart WHERE "productId" = ANY(%s) LIMIT %s'


def carts_holding(cart_db: PostgresResource, product_ids: list[str], limit: int) -> list[str]:
    """The ids of the carts that hold one of `product_ids`, at most `limit` of them."""
    if not product_ids:
        return []
    with cart_db.connection() as conn:
        ids = [row[0] for row in conn.execute(CARTS_HOLDING_SQL, (product_ids, limit))]
        conn.rollback()
    return ids


def cart_schema_problems(conn: psycopg.Connection) -> list[str]:
    """What is wrong with the Cart DB's `cart` and `product` tables for this sync (empty when fine)."""
    return column_type_problems(conn, CART_TABLE, CART_COLUMN_TYPES) + product_schema_problems(conn)


def order_index_problems(order_db: MongoResource) -> list[str]:
    """What is wrong with the Order DB's `carts` indexes for this sync (empty when fine)."""
    with order_db.translated_errors():
        indexes = {index["name"]: index for index in order_db.collection(ORDER_CARTS).list_indexes()}
    index = indexes.get(CART_ID_INDEX)
    if index is None:
        return [f"collection {ORDER_CARTS} has no index {CART_ID_INDEX} (unique on cartId)"]
    if list(dict(index["key"]).items()) != [("cartId", 1)] or not index.get("unique"):
        return [f"index {ORDER_CARTS}.{CART_ID_INDEX} is not a unique ascending index on cartId"]
    return []


def _now() -> datetime:
    """Now, at MongoDB's precision (milliseconds), so what is written is what is read back."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def _is_canonical_uuid(text: str) -> bool:
    try:
        return str(uuid.UUID(text)) == text
    except ValueError:
        return False


def _still_older(row: CartRow, target: Mapping[str, Any]) -> dict[str, Any]:
    """The guard of an outdated cart's update: the Order document is still older than `row`.

    A numeric version must still be below the source's; an unusable one (missing, null, a
    string) must still be the one read. Both are plain conditions beside the `cartId`
    equality, so every server answers the update through the unique index: an `$or` of
    them would send some servers (the embedded one) through the whole collection per update.
    """
    if version_number(target.get("version")) is not None:
        return {"version": {"$lt": row.version}}
    return {"version": target.get("version")}


class _Write(NamedTuple):
    """One operation of a bulk write, with the cart it writes and whether it inserts or updates."""

    key: str
    is_insert: bool
    op: InsertOne | UpdateOne


class CartSyncEndpoints:
    """Streams joined carts from PostgreSQL and `carts` documents from MongoDB; writes in bulk.

    `scope` narrows both sides: to one user's carts (the user id is a value, never spliced
    into a query) or to a set of cart ids. Orphans are deleted only when `prune_orphans` is true.
    """

    def __init__(
        self,
        cart_db: PostgresResource,
        order_db: MongoResource,
        scope: SyncScope = WHOLE_TABLE,
        prune_orphans: bool = False,
    ) -> None:
        self.cart_db = cart_db
        self.order_db = order_db
        self.scope = scope
        self.prunes_orphans = prune_orphans

    @property
    def _user_filter(self) -> dict[str, Any]:
        return {} if self.scope.user_id is None else {"userId": self.scope.user_id}

    def source_batches(self, batch_size: int, after: str | None = None) -> Iterator[Sequence[JoinedCart]]:
        """Carts joined with their product in `cart.id` order, through a server-side cursor.

        A keyed scope reads `c.id = ANY(chunk)` per chunk of `batch_size` keys (a key that is
        not a uuid cannot be in the Cart DB, so it is not asked for).
        """
        if self.scope.keys is not None:
            for chunk in self.scope.key_chunks(batch_size, after):
                yield from self._joined_carts(
                    ["c.id = ANY(%s::uuid[])"], [[k for k in chunk if _is_canonical_uuid(k)]], batch_size
                )
            return
        key_range = self.scope.key_range
        filters = [
            ('c."userId" = %s', self.scope.user_id),
            ("c.id >= %s::uuid", key_range.low),
            ("c.id < %s::uuid", key_range.high),
            ("c.id > %s::uuid", after),
        ]
        conditions = [condition for condition, value in filters if value is not None]
        yield from self._joined_carts(conditions, [value for _, value in filters if value is not None], batch_size)

    def _joined_carts(self, conditions: list[str], params: list[Any], batch_size: int) -> Iterator[list[JoinedCart]]:
        where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
        scan = self.cart_db.scan_in_batches(
            f"{_SELECT}{where} {_ORDER}", params, batch_size=batch_size, cursor_name="cart_sync_scan"
        )
        for rows in scan:
            yield [JoinedCart._make(row) for row in rows]

    def target_batches(self, batch_size: int, after: str | None = None) -> Iterator[Sequence[dict[str, Any]]]:
        """Order `carts` documents in `cartId` order.

        Only string `cartId`s take part: the Cart DB's keys are uuids as text, and mixing
        BSON types would break the byte order the merge relies on. A whole sync walks the
        `cartId_1` index. One user's carts come through the `userId` index, and a chunk of
        keys through `cartId $in`, and are sorted here (they are few), so a narrowed sync
        costs O(its carts), not a walk of every cart. A key range bounds `cartId` with
        `$gte`/`$lt`, which match strings only, like the whole sync.
        """
        if self.scope.user_id is not None:
            return self._sorted_documents({"userId": self.scope.user_id}, batch_size, after)
        if self.scope.keys is not None:
            return self._documents_of_keys(batch_size, after)
        key_range = self.scope.key_range
        bounds = {"$gte": key_range.low, "$lt": key_range.high, "$gt": after}
        cart_id = {operator: value for operator, value in bounds.items() if value is not None}
        query, hint = ({"cartId": cart_id}, None) if cart_id else ({"cartId": {"$type": "string"}}, CART_ID_INDEX)
        return self.order_db.find_in_batches(
            ORDER_CARTS, query, CART_DOC_PROJECTION, order_by="cartId", hint=hint, batch_size=batch_size
        )

    def _documents_of_keys(self, batch_size: int, after: str | None) -> Iterator[list[dict[str, Any]]]:
        for chunk in self.scope.key_chunks(batch_size, after):
            yield from self._sorted_documents({"cartId": {"$in": chunk}}, batch_size, after)

    def _sorted_documents(
        self, query: dict[str, Any], batch_size: int, after: str | None
    ) -> Iterator[list[dict[str, Any]]]:
        # No sort and no hint: an equality on `userId` or `cartId $in` is answered by its index on every server.
        with self.order_db.translated_errors():
            found = list(self.order_db.collection(ORDER_CARTS).find(query, CART_DOC_PROJECTION))
        documents = sorted(
            (
                doc
                for doc in found
                if doc.get("cartId") in self.scope.key_range and (after is None or doc["cartId"] > after)
            ),
            key=cart_doc_key,
        )
        for start in range(0, len(documents), batch_size):
            yield documents[start : start + batch_size]

    def estimated_source_rows(self) -> int | None:
        if self.scope.keys is not None:
            return len(self.scope.keys)
        whole = self.scope.user_id is None and self.scope.key_range.is_whole
        return self.cart_db.estimated_rows(CART_TABLE) if whole else None

    def split_points(self, parts: int) -> list[str]:
        """`parts - 1` cart ids that cut the carts into equal ranges: cart ids are random uuids,
        so even prefixes split them evenly, with no query."""
        return uuid_points(parts)

    def write(self, plan: BatchPlan[CartRow, Mapping[str, Any]]) -> WriteResult:
        """One unordered bulk write: insert missing, update outdated and changed under a version guard.

        A duplicate `cartId` on insert (another writer was first) and a guarded update that
        matches nothing (the target became equal or newer meanwhile) count as
        `newer_in_target`; any other refusal rejects that cart alone. Orphans are deleted
        only when pruning, and only those still absent from the Cart DB right now.
        """
        result = WriteResult()
        now = _now()
        writes: list[_Write] = []
        for row in plan.missing:
            writes.append(_Write(row.cartId, True, InsertOne({**row.fields(), "createdAt": now, "updatedAt": now})))
        for row, target in plan.outdated:
            writes.append(self._update(row, _still_older(row, target), now))
        for row, _ in plan.changed:
            writes.append(self._update(row, {"version": row.version}, now))
        if writes:
            self._bulk_write(writes, result)
        if self.prunes_orphans and plan.orphaned:
            self._prune([cart_doc_key(doc) for doc in plan.orphaned], result)
        return result

    def _update(self, row: CartRow, guard: dict[str, Any], now: datetime) -> _Write:
        """An update of the cart's document, applied only where `guard` (on its version) holds."""
        fields = row.fields()
        del fields["cartId"]
        update = {"$set": {**fields, "updatedAt": now}}
        return _Write(row.cartId, False, UpdateOne({"cartId": row.cartId, **self._user_filter, **guard}, update))

    def _carts_to_write(self) -> Collection:
        """`carts` with the URL's write concern and `j: true` beside it.

        A write the server acknowledged must survive it crashing right after: a retried
        step resumes after the last key it wrote, so a write lost from an unjournaled
        server's last second (a mongod with `j: false`, the embedded server) would never
        be made again.
        """
        collection = self.order_db.collection(ORDER_CARTS)
        return collection.with_options(write_concern=WriteConcern(**{**collection.write_concern.document, "j": True}))

    def _bulk_write(self, writes: list[_Write], result: WriteResult) -> None:
        """A batch's inserts, then its updates, each an unordered bulk write, each journaled.

        A later command's journal wait does not cover an earlier one on every server: the embedded
        server, SIGKILLed, lost a batch's acknowledged inserts while keeping its journaled updates
        (the fault suite's Order DB crash, on a slow machine). So each command waits for the journal,
        and the batch is durable when the checkpoint moves past it. Should a command fail, the step
        fails before its checkpoint moves past the batch, and the retry plans it again from both sides.
        """
        inserts = [write for write in writes if write.is_insert]
        updates = [write for write in writes if not write.is_insert]
        for group in (inserts, updates):
            if group:
                self._write_group(group, result)

    def _write_group(self, writes: list[_Write], result: WriteResult) -> None:
        with self.order_db.translated_errors():
            try:
                collection = self._carts_to_write()
                details = collection.bulk_write([write.op for write in writes], ordered=False).bulk_api_result
            except BulkWriteError as error:
                details = error.details
        if details.get("writeConcernErrors"):
            raise RuntimeError(
                f"{self.order_db.display_name} reported write concern errors: {details['writeConcernErrors']}"
            )
        result.inserted += details["nInserted"]
        result.updated += details["nMatched"]
        failed_updates = 0
        for error in details.get("writeErrors", []):
            write = writes[error["index"]]
            if not write.is_insert:
                failed_updates += 1
            if error.get("code") in DUPLICATE_KEY_CODES:
                result.newer_in_target += 1
            else:
                message = str(error.get("errmsg", "unknown error"))[:300]
                result.rejected.append(Rejection(write.key, f"MongoDB refused the document: {message}"))
        # A guarded update that neither matched nor failed found the target equal or newer.
        updates = sum(not write.is_insert for write in writes)
        result.newer_in_target += updates - details["nMatched"] - failed_updates

    def _prune(self, keys: list[str], result: WriteResult) -> None:
        gone = self._absent_from_cart_db(keys)
        if not gone:
            return
        with self.order_db.translated_errors():
            deleted = self._carts_to_write().delete_many({"cartId": {"$in": gone}, **self._user_filter})
        result.deleted += deleted.deleted_count

    def _absent_from_cart_db(self, keys: list[str]) -> list[str]:
        """Those of `keys` that are not in the Cart DB now (a cart created since the scan stays)."""
        candidates = [key for key in keys if _is_canonical_uuid(key)]
        present: set[str] = set()
        if candidates:
            with self.cart_db.connection() as conn:
                present = {row[0] for row in conn.execute(STILL_IN_CART_DB_SQL, (candidates,))}
                conn.rollback()
        return [key for key in keys if key not in present]
