"""I/O of the product sync: Product MongoDB `products` -> Cart PostgreSQL `product`."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import psycopg
import pyarrow as pa
from bson import ObjectId

from etl_defs.products.columns import csv_payload, decoder_schema, read_csv_rows
from etl_defs.products.table import (
    PRODUCT_COLUMN_LIST,
    PRODUCT_COLUMN_TYPES,
    PRODUCT_COLUMNS,
    PRODUCT_TABLE,
    SELECT_PRODUCTS_SQL,
    product_table_ddl,
)
from etl_defs.products.transform import PRODUCT_DOC_PROJECTION
from etl_defs.sync import WHOLE_TABLE, BatchPlan, Rejection, SyncScope, WriteResult, even_points
from resources import MongoResource, PostgresResource
from resources.postgres import column_type_problems

_ORDER = 'ORDER BY id COLLATE "C"'
#: The rows of a set of keys (one chunk of a keyed sync), through the primary key.
KEYED_SQL = f"{SELECT_PRODUCTS_SQL} WHERE id = ANY(%s) {_ORDER}"
#: Source `_id`s sampled per range of a split, to take its split points from.
SAMPLE_PER_RANGE = 100
#: The CSV block Arrow parses the target rows in: about a batch of rows (products' rows are ~100 bytes).
CSV_BYTES_PER_ROW = 128
MIN_CSV_BLOCK = 1 << 16
STAGE = "product_sync_stage"
STAGE_SQL = product_table_ddl(STAGE, staging=True)
_UPDATABLE = [c for c in PRODUCT_COLUMNS if c != "id"]
UPSERT_SQL = (
    f"INSERT INTO {PRODUCT_TABLE} AS p ({PRODUCT_COLUMN_LIST}) SELECT {PRODUCT_COLUMN_LIST} FROM {STAGE} "
    "ON CONFLICT (id) DO UPDATE SET "
    + ", ".join(f'"{c}" = EXCLUDED."{c}"' for c in _UPDATABLE)
    + " WHERE ("
    + ", ".join(f'p."{c}"' for c in _UPDATABLE)
    + ") IS DISTINCT FROM ("
    + ", ".join(f'EXCLUDED."{c}"' for c in _UPDATABLE)
    + ") RETURNING (xmax = 0) AS inserted"
)


def product_schema_problems(conn: psycopg.Connection) -> list[str]:
    """What is wrong with the Cart DB's `product` table for this sync (empty when fine)."""
    return column_type_problems(conn, PRODUCT_TABLE, PRODUCT_COLUMN_TYPES)


class ProductSyncEndpoints:
    """Streams products from MongoDB and product rows from PostgreSQL; writes in bulk.

    `scope` is the whole table or a set of product ids (ObjectId hex); products have no user.
    """

    prunes_orphans = False  # product orphans may still be in carts: counted, never deleted

    def __init__(self, product_db: MongoResource, cart_db: PostgresResource, scope: SyncScope = WHOLE_TABLE) -> None:
        if scope.user_id is not None:
            raise ValueError("a product sync covers the whole table or a set of keys: products have no user")
        self.product_db = product_db
        self.cart_db = cart_db
        self.scope = scope
        decoder_schema()  # the decoder's imports, with the step's start-up rather than in its first batch

    def source_batches(self, batch_size: int, after: str | None = None) -> Iterator[bytes]:
        """Product documents in `_id` order (the `_id_` index walk), as the server's raw BSON
        batches of `batch_size` (or `fetch_size`) documents: the synced fields only, or whole
        where the resource reads whole documents (`project_fields`), of which the columnar
        decoder takes the same fields.

        A key range bounds the index walk, not the values (`index_from`/`index_to`): BSON
        orders `_id`s by type first, so the first range also reads the `_id`s of types below
        ObjectId and the last those above it, for the sync to reject. After a key, the walk
        goes on from it. A keyed scope reads `{_id: {$in: chunk}}` per chunk of `batch_size` keys.
        """
        if self.scope.keys is not None:
            return self._documents_of_keys(batch_size, after)
        key_range = self.scope.key_range
        start = key_range.low if after is None else after
        return self.product_db.find_raw_batches(
            "products",
            {} if after is None else {"_id": {"$ne": ObjectId(after)}},  # index_from is inclusive
            PRODUCT_DOC_PROJECTION,
            order_by="_id",
            hint="_id_",
            index_from=None if start is None else ObjectId(start),
            index_to=None if key_range.high is None else ObjectId(key_range.high),
            batch_size=batch_size,
        )

    def _documents_of_keys(self, batch_size: int, after: str | None) -> Iterator[bytes]:
        for chunk in self.scope.key_chunks(batch_size, after):
            query = {"_id": {"$in": [ObjectId(key) for key in chunk]}}
            yield from self.product_db.find_raw_batches(
                "products", query, PRODUCT_DOC_PROJECTION, order_by="_id", batch_size=batch_size
            )

    def target_batches(self, batch_size: int, after: str | None = None) -> Iterator[pa.Table]:
        """`product` rows in `id COLLATE "C"` order as Arrow tables, read with `COPY ... (FORMAT csv)`
        (no Python object per value). A keyed scope reads `id = ANY(chunk)` per chunk of `batch_size` keys."""
        if self.scope.keys is not None:
            return self._rows_of_keys(batch_size, after)
        key_range = self.scope.key_range
        bounds = [('id COLLATE "C" >= %s', key_range.low), ('id COLLATE "C" < %s', key_range.high)]
        bounds.append(('id COLLATE "C" > %s', after))
        conditions = [condition for condition, value in bounds if value is not None]
        where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
        params = [value for _, value in bounds if value is not None]
        return self._copy_out(f"{SELECT_PRODUCTS_SQL}{where} {_ORDER}", params, batch_size)

    def _rows_of_keys(self, batch_size: int, after: str | None) -> Iterator[pa.Table]:
        for chunk in self.scope.key_chunks(batch_size, after):
            yield from self._copy_out(KEYED_SQL, (chunk,), batch_size)

    def _copy_out(self, query: str, params: Sequence[Any], batch_size: int) -> Iterator[pa.Table]:
        block_size = max(batch_size * CSV_BYTES_PER_ROW, MIN_CSV_BLOCK)
        with self.cart_db.connection() as conn:
            with conn.cursor().copy(f"COPY ({query}) TO STDOUT (FORMAT csv)", params) as copy:
                yield from read_csv_rows(copy, block_size)
            conn.rollback()

    def estimated_source_rows(self) -> int | None:
        if self.scope.keys is not None:
            return len(self.scope.keys)
        return self.product_db.estimated_count("products") if self.scope.key_range.is_whole else None

    def split_points(self, parts: int) -> list[str]:
        """Up to `parts - 1` product ids that cut the products into ranges of about equal size,
        from a `$sample` of their `_id`s (ObjectIds start with a timestamp, so even hex
        prefixes would be badly skewed). Only ObjectIds are split points."""
        if parts <= 1:
            return []
        pipeline = [{"$sample": {"size": SAMPLE_PER_RANGE * parts}}, {"$project": {"_id": 1}}]
        with self.product_db.translated_errors():
            sample = [doc["_id"] for doc in self.product_db.collection("products").aggregate(pipeline)]
        return even_points(sorted(str(key) for key in sample if isinstance(key, ObjectId)), parts)

    def write(self, plan: BatchPlan) -> WriteResult:
        """Insert the plan's missing rows and update its changed ones, in one transaction."""
        rows = pa.concat_tables([plan.missing, plan.changed])
        result = WriteResult()
        with self.cart_db.connection(autocommit=True) as conn:  # each batch opens its own transaction
            self._write_isolating_bad_rows(conn, rows, result)
        return result

    def _write_isolating_bad_rows(self, conn: psycopg.Connection, rows: pa.Table, result: WriteResult) -> None:
        """Write `rows` in one transaction; if the database refuses one, split to find it.

        The transform already rejects what the contract forbids, so this is the safety net
        for what only the database knows (a constraint added by the Cart service, say).
        """
        if not len(rows):
            return
        try:
            with conn.transaction():
                conn.execute(STAGE_SQL)
                with conn.cursor().copy(f"COPY {STAGE} ({PRODUCT_COLUMN_LIST}) FROM STDIN (FORMAT csv)") as copy:
                    copy.write(csv_payload(rows))
                flags = conn.execute(UPSERT_SQL).fetchall()
        except (psycopg.DataError, psycopg.IntegrityError) as error:
            if len(rows) == 1:
                reason = error.diag.message_primary or type(error).__name__
                result.rejected.append(Rejection(rows["id"][0].as_py(), f"PostgreSQL refused the row: {reason}"))
                return
            middle = len(rows) // 2
            self._write_isolating_bad_rows(conn, rows.slice(0, middle), result)
            self._write_isolating_bad_rows(conn, rows.slice(middle), result)
            return
        inserted = sum(1 for (flag,) in flags if flag)
        result.inserted += inserted
        result.updated += len(flags) - inserted
