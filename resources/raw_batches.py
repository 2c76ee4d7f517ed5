"""The raw BSON batches of a `find`, run as `find`/`getMore` commands, for a columnar decoder.

pymongo's `find_raw_batches` wraps every document of a reply in a `RawBSONDocument` before
joining them back into one stream (PYTHON-2722): about a third of the client's CPU of a
columnar read. Here the reply stays raw: its `cursor` document is walked element by element
and the documents of the batch are cut out of it as they are, one stream per round trip.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

import bson
from bson.codec_options import CodecOptions
from bson.errors import InvalidBSON
from bson.raw_bson import RawBSONDocument
from pymongo import ReadPreference
from pymongo.database import Database
from pymongo.errors import InvalidOperation, PyMongoError

_RAW_REPLY = CodecOptions(document_class=RawBSONDocument)
_BATCHES = (b"firstBatch", b"nextBatch")
#: Sizes of the BSON values that have one (double, undefined, ObjectId, bool, datetime, null,
#: int32, timestamp, int64, decimal128, max key, min key).
_FIXED_SIZE = {0x01: 8, 0x06: 0, 0x07: 12, 0x08: 1, 0x09: 8, 0x0A: 0, 0x10: 4, 0x11: 8, 0x12: 8, 0x13: 16}
_FIXED_SIZE |= {0x7F: 0, 0xFF: 0}
_DOCUMENT, _ARRAY = 0x03, 0x04
#: Topologies where every command of a session reaches the same server, so a cursor opened
#: by one command is found by the next (a sharded cluster may route them to two mongos).
_ONE_SERVER = ("Single", "ReplicaSetWithPrimary", "ReplicaSetNoPrimary")


def commands_reach_the_cursor(database: Database) -> bool:
    """Whether `find`/`getMore` run as commands reach the server holding the cursor: a direct or
    replica-set connection reading from the primary (pymongo's cursor is used otherwise)."""
    client = database.client
    with contextlib.suppress(InvalidOperation):  # raised for several mongos: not one server, as below
        client.address  # noqa: B018 - connects, so the topology is known
    return (
        database.read_preference == ReadPreference.PRIMARY
        and not client.options.load_balanced
        and client.topology_description.topology_type_name in _ONE_SERVER
    )


def find_command_batches(database: Database, command: Mapping[str, Any], fetch_size: int) -> Iterator[bytes]:
    """Run `command` (a `find`) and its `getMore`s in one session; yield each round trip's documents
    as one BSON stream (empty batches are skipped). The cursor is killed if the reader stops early."""
    collection = command["find"]
    with database.client.start_session(causal_consistency=False) as session:
        reply = database.command(command, codec_options=_RAW_REPLY, session=session)
        cursor_id = 0
        try:
            while True:
                documents, cursor_id = cursor_batch(bytes(reply["cursor"].raw))
                if documents:
                    yield documents
                if not cursor_id:
                    return
                # A cursor the server no longer has raises CursorNotFound (pymongo checks every reply).
                more = {"getMore": bson.Int64(cursor_id), "collection": collection, "batchSize": fetch_size}
                reply = database.command(more, codec_options=_RAW_REPLY, session=session)
        finally:
            if cursor_id:
                # Best effort, as pymongo's own cursor does: the server times an idle cursor out anyway.
                with contextlib.suppress(PyMongoError):
                    database.command({"killCursors": collection, "cursors": [bson.Int64(cursor_id)]}, session=session)


def cursor_batch(cursor: bytes) -> tuple[bytes, int]:
    """A reply's `cursor` document -> (the documents of its batch as one BSON stream, the cursor id)."""
    documents, cursor_id = b"", 0
    for kind, name, start, end in _elements(cursor):
        if kind == _ARRAY and name in _BATCHES:
            documents = _array_documents(cursor, start, end)
        elif name == b"id":
            cursor_id = int(bson.decode(_one_element_document(cursor, kind, name, start, end))["id"])
    return documents, cursor_id


def _elements(document: bytes) -> Iterator[tuple[int, bytes, int, int]]:
    """(type, name, start, end of the value) of each top-level element of a BSON document."""
    position, end = 4, len(document) - 1
    while position < end:
        kind = document[position]
        name_end = document.index(0, position + 1)
        name = document[position + 1 : name_end]
        start = name_end + 1
        position = _value_end(document, kind, start)
        yield kind, name, start, position
    if position != end or document[end] != 0:
        raise InvalidBSON("bad document length in a cursor reply")


def _value_end(document: bytes, kind: int, start: int) -> int:
    if kind in _FIXED_SIZE:
        return start + _FIXED_SIZE[kind]
    size = int.from_bytes(document[start : start + 4], "little")
    if kind in (0x02, 0x0D, 0x0E):  # string, JavaScript code, symbol
        return start + 4 + size
    if kind in (_DOCUMENT, _ARRAY, 0x0F):  # document, array, code with scope
        return start + size
    if kind == 0x05:  # binary: size, subtype, bytes
        return start + 5 + size
    if kind == 0x0B:  # regular expression: two C strings
        return document.index(0, document.index(0, start) + 1) + 1
    if kind == 0x0C:  # DBPointer: a string and an ObjectId
        return start + 4 + size + 12
    raise InvalidBSON(f"unknown BSON type 0x{kind:02x} in a cursor reply")


def _array_documents(document: bytes, start: int, end: int) -> bytes:
    """The documents of the array value at `document[start:end]`, as one stream (their own bytes)."""
    return _documents_of_array(document[start:end])


def walk_array(array: bytes) -> bytes:
    """The documents of a BSON array of documents, as one stream: each element's name dropped."""
    view = memoryview(array)
    pieces = []
    position, end = 4, len(array) - 1
    while position < end:
        if array[position] != _DOCUMENT:
            raise InvalidBSON("a cursor batch holds a value that is not a document")
        position = array.index(0, position + 1) + 1  # past the element's name ("0", "1", ...)
        size = int.from_bytes(view[position : position + 4], "little")
        pieces.append(view[position : position + size])
        position += size
    if position != end:
        raise InvalidBSON("bad array length in a cursor reply")
    return b"".join(pieces)


#: pymongo's own C version of `walk_array` (what its raw-batch cursor joins a batch with), 20x
#: faster than the walk in Python; the walk stands in where a pymongo build lacks it.
_documents_of_array = getattr(bson, "_array_of_documents_to_buffer", walk_array)


def _one_element_document(document: bytes, kind: int, name: bytes, start: int, end: int) -> bytes:
    body = bytes([kind]) + name + b"\x00" + document[start:end]
    return (len(body) + 5).to_bytes(4, "little") + body + b"\x00"
