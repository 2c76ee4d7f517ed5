"""The product sync's records as Arrow columns, end to end.

Product documents arrive as the server's raw BSON batches and are decoded by pymongoarrow
into columns with an explicit schema; `product` rows arrive as PostgreSQL `COPY ... (FORMAT
csv)` parsed by Arrow; both are compared column by column, and the rows to write go back
with `COPY`. No Python object is built per value of a product that is already right.

The columns only take what is plainly valid. Anything else (a wrong type, a value out of
range, a non-ObjectId `_id`) goes through the per-document `transform_product`, which
accepts it as the contract says (an integral double, a Decimal128, a seller id as hex text)
or rejects it with its exact reason. pymongoarrow's traps, and how they are avoided:
an int64 column truncates doubles (199.99 -> 199) and takes booleans as 0/1, so prices and
quantities are decoded as float64 (exact for every PostgreSQL integer) and checked to be
whole; a boolean `quantity` is found in the raw bytes (its element, type 0x08 and the name, in
a document sends that document to the per-document path; a boolean price is 0 or 1, below the
contract's minimum, so it already goes there).
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator
from functools import cache
from typing import Any, get_type_hints

import bson
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyarrow import csv

from etl_defs.products.table import PRODUCT_COLUMNS, ProductRow
from etl_defs.products.transform import MIN_PRICE, PG_INT_MAX, PRODUCT_DOC_PROJECTION, transform_product
from etl_defs.sync.plan import BatchPlan, Change, Keyed, Rejection, SourceBatch

#: A `product` row's columns in Arrow (the Cart DB's integers fit int64).
ROW_SCHEMA = pa.schema(
    [(name, {str: pa.string(), int: pa.int64()}[kind]) for name, kind in get_type_hints(ProductRow).items()]
)
_COMPARED = [name for name in PRODUCT_COLUMNS if name != "id"]
_HEX_DIGITS = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
_OBJECT_ID_BYTES = 12
#: A boolean element named `quantity`, as BSON spells it: type 0x08, the name, NUL.
_BOOLEAN_QUANTITY = b"\x08quantity\x00"


@cache
def decoder_schema() -> Any:
    """What a Product document's columns are decoded as (see the module's docstring for why floats).

    pymongoarrow is imported here, when a product sync's endpoints are made (`ProductSyncEndpoints`):
    it imports pandas, which every other Dagster process (code servers, sensors, the cart sync)
    would pay for at start-up.
    """
    from pymongoarrow.api import Schema
    from pymongoarrow.types import ObjectIdType

    types = {
        "title": pa.string(),
        "price": pa.float64(),
        "image": pa.string(),
        "sellerId": ObjectIdType(),
        "quantity": pa.float64(),
    }
    return Schema({"_id": ObjectIdType(), **{field: types[field] for field in PRODUCT_DOC_PROJECTION}})


def _boolean_quantities(raw: bytes, count: int) -> pa.Array | None:
    """Which of the `count` documents in `raw` may hold a boolean `quantity` (None: none can).

    One search of the whole batch in the usual case; a document that merely contains those
    bytes elsewhere (in a nested field, say) is flagged too, and the per-document path decides.
    """
    if _BOOLEAN_QUANTITY not in raw:
        return None
    flags = np.zeros(count, dtype=bool)
    offset = 0
    for index in range(count):
        size = int.from_bytes(raw[offset : offset + 4], "little")
        flags[index] = raw.find(_BOOLEAN_QUANTITY, offset, offset + size) >= 0
        offset += size
    return pa.array(flags)


#: Every character `str.isspace` accepts (tests/unit/test_product_transform.py checks the list against it).
PYTHON_WHITESPACE = (
    "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007"
    "\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)
#: A regex (RE2) matching a string that is empty or all whitespace, as Python's `str.isspace` sees it.
_BLANK = "^[" + "".join(f"\\x{{{ord(space):x}}}" for space in PYTHON_WHITESPACE) + "]*$"


def _decode(raw: bytes, schema: Any) -> pa.Table:
    from pymongoarrow.context import PyMongoArrowContext

    context = PyMongoArrowContext(schema, codec_options=bson.DEFAULT_CODEC_OPTIONS, allow_invalid=True)
    context.process_bson_stream(raw)
    return context.finish()


def object_id_hex(column: pa.ChunkedArray | pa.Array) -> pa.Array:
    """ObjectIds (pymongoarrow's extension type) as 24-character lowercase hex strings, nulls kept."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    storage = array.storage if isinstance(array, pa.ExtensionArray) else array
    count = len(storage)
    start = storage.offset * _OBJECT_ID_BYTES
    raw = np.frombuffer(storage.buffers()[1], dtype=np.uint8)[start : start + count * _OBJECT_ID_BYTES]
    raw = raw.reshape(count, _OBJECT_ID_BYTES)
    digits = np.empty((count, 2 * _OBJECT_ID_BYTES), dtype=np.uint8)
    digits[:, 0::2] = _HEX_DIGITS[raw >> 4]
    digits[:, 1::2] = _HEX_DIGITS[raw & 0x0F]
    offsets = np.arange(0, (count + 1) * 2 * _OBJECT_ID_BYTES, 2 * _OBJECT_ID_BYTES, dtype=np.int32)
    text = pa.Array.from_buffers(pa.string(), count, [None, pa.py_buffer(offsets), pa.py_buffer(digits)])
    if storage.null_count:
        return pc.if_else(pc.is_valid(storage), text, pa.scalar(None, pa.string()))
    return text


def _whole(values: pa.ChunkedArray, low: int) -> pa.ChunkedArray:
    """Whether each float is a whole number in [low, PG_INT_MAX] (null: no)."""
    return pc.and_(
        pc.and_(pc.greater_equal(values, low), pc.less_equal(values, PG_INT_MAX)),
        pc.equal(values, pc.floor(values)),
    )


def _plainly_valid(table: pa.Table, ids: pa.Array, sellers: pa.Array, boolean_quantity: pa.Array | None) -> pa.Array:
    """The documents the columns take as they are: exact types, values in range (null counts as no)."""
    title, image = table["title"], table["image"]
    checks = [
        pc.is_valid(ids),
        pc.is_valid(sellers),
        _whole(table["price"], MIN_PRICE),
        _whole(table["quantity"], 0),
        pc.invert(pc.match_substring_regex(title, _BLANK)),
        pc.invert(pc.match_substring(title, "\x00")),
        pc.invert(pc.match_substring(image, "\x00")),
    ]
    if boolean_quantity is not None:
        checks.append(pc.invert(boolean_quantity))
    valid = checks[0]
    for check in checks[1:]:
        valid = pc.and_(valid, check)
    valid = pc.fill_null(valid, False)
    return valid.combine_chunks() if isinstance(valid, pa.ChunkedArray) else valid


def _rows(table: pa.Table, ids: pa.Array, sellers: pa.Array) -> pa.Table:
    return pa.Table.from_arrays(
        [
            ids,
            table["title"],
            pc.cast(table["price"], pa.int64()),
            table["image"],
            sellers,
            pc.cast(table["quantity"], pa.int64()),
        ],
        schema=ROW_SCHEMA,
    )


def rows_table(rows: Iterable[ProductRow]) -> pa.Table:
    """Python rows as a table of `product` rows."""
    return pa.Table.from_pylist([row._asdict() for row in rows], schema=ROW_SCHEMA)


def decode_products(raw: bytes) -> SourceBatch[pa.Table]:
    """One raw BSON batch of Product documents (in `_id` order) -> its `product` rows and rejections."""
    table = _decode(raw, decoder_schema())
    if not len(table):
        return SourceBatch(Keyed([], _rows(table, pa.array([], pa.string()), pa.array([], pa.string()))), [], [])
    ids, sellers = object_id_hex(table["_id"]), object_id_hex(table["sellerId"])
    valid = _plainly_valid(table, ids, sellers, _boolean_quantities(raw, len(table)))
    keys = texts(pc.drop_null(ids))  # every orderable key, as it arrived
    if pc.all(valid, min_count=0).as_py():
        return SourceBatch(Keyed(keys, _rows(table, ids, sellers)), [], keys)
    rows = _rows(table.filter(valid), ids.filter(valid), sellers.filter(valid))
    docs = bson.decode_all(raw)
    accepted: list[ProductRow] = []
    rejected: list[Rejection] = []
    for index in pc.indices_nonzero(pc.invert(valid)).to_pylist():
        result = transform_product(docs[index])
        (rejected if isinstance(result, Rejection) else accepted).append(result)  # type: ignore[arg-type]
    if accepted:
        rows = pa.concat_tables([rows, rows_table(accepted)])
        rows = rows.take(pc.sort_indices(rows["id"]))  # back in key order (a batch arrives in it)
    return SourceBatch(Keyed(texts(rows["id"]), rows), rejected, keys)


def texts(array: pa.Array | pa.ChunkedArray) -> list[str]:
    """A string column as Python strings: through NumPy, about 20x cheaper than `to_pylist()`."""
    return array.to_numpy(zero_copy_only=False).tolist()


def product_records(table: pa.Table) -> Keyed[pa.Table]:
    """A table of `product` rows (in key order) as the merge takes it."""
    return Keyed(texts(table["id"]), table)


def classify_products(rows: Keyed[pa.Table], found: Keyed[Any], consumed: set[str]) -> BatchPlan:
    """Pair the source rows with the target rows of the same key interval, column by column.

    `missing`, `changed` and `orphaned` are tables (`changed` of the source rows: the write
    needs nothing of the target's); `unchanged` an array of the keys.
    """
    source = rows.records
    if not len(found):
        return BatchPlan(missing=source, changed=source.slice(0, 0), orphaned=[])
    target: pa.Table = found.records
    position = pc.index_in(source["id"], value_set=target["id"])
    matched = pc.is_valid(position)
    paired = target.take(pc.fill_null(position, 0))
    same = matched
    for name in _COMPARED:
        same = pc.and_(same, pc.fill_null(pc.equal(source[name], paired[name]), False))
    seen = (
        source["id"] if not consumed else pa.concat_arrays([source["id"].combine_chunks(), pa.array(sorted(consumed))])
    )
    return BatchPlan(
        missing=source.filter(pc.invert(matched)),
        changed=source.filter(pc.and_(matched, pc.invert(same))),
        unchanged=source["id"].filter(same),
        orphaned=target.filter(pc.invert(pc.is_in(target["id"], value_set=seen))),
    )


def record_keys(change: Change, records: pa.Table | pa.ChunkedArray) -> list[str]:
    """The keys of one class's rows in a plan (`unchanged` holds the keys themselves)."""
    return texts(records if change is Change.UNCHANGED else records["id"])


def read_csv_rows(chunks: Iterable[bytes], block_size: int) -> Iterator[pa.Table]:
    """`product` rows from `COPY (...) TO STDOUT (FORMAT csv)` output, about `block_size` bytes at a time.

    The chunks are gathered on the caller's thread (the connection's) and cut after a whole
    record; Arrow parses each piece. NULL is an unquoted empty field there and the empty
    string a quoted one: Arrow reads them so.
    """
    for piece in _whole_records(chunks, block_size):
        yield csv.read_csv(pa.py_buffer(piece), read_options=_READ, parse_options=_PARSE, convert_options=_CONVERT)


_READ = csv.ReadOptions(column_names=list(PRODUCT_COLUMNS), use_threads=False)
_PARSE = csv.ParseOptions(newlines_in_values=True)
_CONVERT = csv.ConvertOptions(
    column_types=ROW_SCHEMA, strings_can_be_null=True, quoted_strings_can_be_null=False, null_values=[""]
)


def _whole_records(chunks: Iterable[bytes], block_size: int) -> Iterator[bytes]:
    """The CSV stream in pieces of whole records, each about `block_size` bytes or more."""
    pending = bytearray()
    for chunk in chunks:
        pending += chunk
        if len(pending) >= block_size and (cut := _last_record_end(pending)):
            yield bytes(pending[:cut])
            del pending[:cut]
    if pending:
        yield bytes(pending)


def _last_record_end(data: bytearray) -> int:
    """Where the last whole record of `data` (which starts at a record) ends: after a newline
    with an even number of quotes before it (a quoted value may hold newlines). 0: none yet."""
    end = data.rfind(b"\n")
    while end >= 0:
        if data.count(b'"', 0, end) % 2 == 0:
            return end + 1
        end = data.rfind(b"\n", 0, end)
    return 0


def csv_payload(rows: pa.Table) -> bytes:
    """`rows` as `COPY ... FROM STDIN (FORMAT csv)` takes them: every value quoted, so an empty
    string stays an empty string (an unquoted empty field is NULL)."""
    sink = io.BytesIO()
    csv.write_csv(rows, sink, csv.WriteOptions(include_header=False, quoting_style="all_valid"))
    return sink.getvalue()
