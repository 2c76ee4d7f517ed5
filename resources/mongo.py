"""`MongoResource`: one pooled pymongo client per MongoDB (Product or Order service)."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qs, urlsplit

import dagster as dg
from pydantic import Field, PrivateAttr
from pymongo import MongoClient
from pymongo.collection import Collection
from pymongo.cursor import Cursor, RawBatchCursor
from pymongo.database import Database
from pymongo.errors import AutoReconnect, ConnectionFailure, CursorNotFound, PyMongoError, ServerSelectionTimeoutError

from resources.errors import DatabaseUnavailableError, first_line
from resources.raw_batches import commands_reach_the_cursor, find_command_batches

#: The most documents a streamed read may ask the server for per round trip.
MAX_FETCH_SIZE = 100_000
#: pymongo errors that mean "the server is not there", worth a retry.
DEFAULT_SOCKET_TIMEOUT_MS = 120_000
MONGO_CONNECTION_ERRORS = (ConnectionFailure, AutoReconnect, ServerSelectionTimeoutError)


def describe_mongo_url(url: str) -> str:
    """`host:port/db` of a MongoDB URL, without credentials or options."""
    parts = urlsplit(url)
    hosts = parts.netloc.rsplit("@", 1)[-1]
    return f"{hosts}{parts.path}"


class MongoResource(dg.ConfigurableResource):
    """A MongoDB database reached through one pooled client.

    The database is the URL's path. `username`/`password` (the old service's `MONGO_USER`
    and `MONGO_PASSWORD`) apply when set; bind them with `dg.EnvVar` so that only the
    variable names are stored.
    """

    url: str = Field(description="MongoDB URL whose path names the database")
    label: str = Field(default="MongoDB", description="Name used in logs and errors, e.g. 'Product MongoDB'")
    username: str | None = Field(default=None, description="Overrides the URL's user when set")
    password: str | None = Field(default=None, description="Overrides the URL's password when set")
    connect_timeout_ms: int = Field(
        default=20_000,
        ge=1,
        description=(
            "Connecting, and answering pymongo's heartbeat: a server that takes longer to answer one (busy, or in a "
            "long pause) is taken for down, and the operations in flight on it are cancelled"
        ),
    )
    socket_timeout_ms: int = Field(
        default=DEFAULT_SOCKET_TIMEOUT_MS, ge=1, description="How long one read or write may wait for an answer"
    )
    server_selection_timeout_ms: int = Field(default=5_000, ge=1)
    max_pool_size: int = Field(default=10, ge=1)
    fetch_size: int | None = Field(
        default=None,
        ge=1,
        le=MAX_FETCH_SIZE,
        description="Documents per round trip (find, getMore) of a streamed read; unset: the read's batch size",
    )

    project_fields: bool = Field(
        default=True,
        description=(
            "Whether a streamed read asks the server for the fields the sync uses only (a projection), or reads "
            "whole documents: a real MongoDB projects in its own code and sends fewer bytes; the embedded "
            "SecantusDB projects in Python, slower than sending everything (README, Performance)"
        ),
    )

    _client: MongoClient | None = PrivateAttr(default=None)

    @property
    def display_name(self) -> str:
        """What to call this database in messages: label and address, no secrets."""
        return f"{self.label} ({describe_mongo_url(self.url)})"

    def _new_client(self) -> MongoClient:
        options: dict[str, object] = {
            "connectTimeoutMS": self.connect_timeout_ms,
            "socketTimeoutMS": self.socket_timeout_ms,
            "serverSelectionTimeoutMS": self.server_selection_timeout_ms,
            "maxPoolSize": self.max_pool_size,
            "appname": "etl-sync",
            "tz_aware": True,
        }
        if self.username:
            options["username"] = self.username
            options["password"] = self.password or ""
            if "authsource" not in {k.lower() for k in parse_qs(urlsplit(self.url).query)}:
                options["authSource"] = "admin"
        return MongoClient(self.url, **options)

    @property
    def client(self) -> MongoClient:
        """The pooled client, created on first use."""
        if self._client is None:
            self._client = self._new_client()
        return self._client

    def database(self) -> Database:
        """The database named by the URL's path."""
        return self.client.get_default_database()

    def collection(self, name: str) -> Collection:
        """A collection of this database."""
        return self.database()[name]

    def find_in_batches(
        self,
        collection: str,
        query: Mapping[str, Any],
        projection: Mapping[str, Any],
        *,
        order_by: str,
        batch_size: int,
        hint: str | None = None,
        index_from: Any = None,
        index_to: Any = None,
    ) -> Iterator[list[dict[str, Any]]]:
        """Matching documents in ascending `order_by` order, as lists of `batch_size`.

        The server is asked for `fetch_size` documents per round trip (unset: `batch_size`).
        `hint` names the index to walk for an unbounded scan, where a server might otherwise
        plan a collection scan and an in-memory sort. Leave it out when `query` bounds the
        sorted field: every server then walks the index between the bounds, whereas a hint
        makes some (the embedded SecantusDB) walk the whole index.

        `index_from` (inclusive) and `index_to` (exclusive) bound the walk of the `hint`
        index on `order_by` (the cursor's `min` and `max`). Unlike `$gte`/`$lt`, which match
        one BSON type only, they bound the index itself, whose order runs across types, so
        the walk from the start also finds, say, a string `_id` below every ObjectId.
        """
        with (
            self.translated_errors(),
            self._cursor(
                collection, query, projection, order_by, batch_size, hint, index_from, index_to, raw=False
            ) as cursor,
        ):
            batch: list[dict[str, Any]] = []
            for doc in cursor:
                batch.append(doc)
                if len(batch) >= batch_size:
                    yield batch
                    batch = []
            if batch:
                yield batch

    def find_raw_batches(
        self,
        collection: str,
        query: Mapping[str, Any],
        projection: Mapping[str, Any] | None,
        *,
        order_by: str,
        batch_size: int,
        hint: str | None = None,
        index_from: Any = None,
        index_to: Any = None,
    ) -> Iterator[bytes]:
        """`find_in_batches`, as the server's raw BSON batches (for a columnar decoder): each holds
        the documents of one round trip, `fetch_size` (unset: `batch_size`) at most.

        Where the `find` and `getMore` commands of one session reach the cursor's server (see
        `commands_reach_the_cursor`), they are run as commands and each reply's batch is cut out
        raw (`raw_batches`); elsewhere pymongo's `find_raw_batches` cursor reads them.
        """
        fetch_size = self.fetch_size or batch_size
        with self.translated_errors():
            database = self.database()
            if not commands_reach_the_cursor(database):
                with self._cursor(
                    collection, query, projection, order_by, batch_size, hint, index_from, index_to, raw=True
                ) as cursor:
                    yield from cursor
                return
            command: dict[str, Any] = {"find": collection, "filter": query, "sort": {order_by: 1}}
            optional = {
                "projection": self._projection(projection),
                "hint": hint,
                "min": None if index_from is None else {order_by: index_from},
                "max": None if index_to is None else {order_by: index_to},
                "readConcern": database.read_concern.document or None,
            }
            command |= {name: value for name, value in optional.items() if value is not None}
            command["batchSize"] = fetch_size
            yield from find_command_batches(database, command, fetch_size)

    def _cursor(
        self,
        collection: str,
        query: Mapping[str, Any],
        projection: Mapping[str, Any] | None,
        order_by: str,
        batch_size: int,
        hint: str | None,
        index_from: Any,
        index_to: Any,
        *,
        raw: bool,
    ) -> Cursor | RawBatchCursor:
        source = self.collection(collection)
        find = source.find_raw_batches if raw else source.find
        cursor = find(query, self._projection(projection)).sort(order_by, 1).batch_size(self.fetch_size or batch_size)
        if hint is not None:
            cursor = cursor.hint(hint)
        if index_from is not None:
            cursor = cursor.min([(order_by, index_from)])
        if index_to is not None:
            cursor = cursor.max([(order_by, index_to)])
        return cursor

    def _projection(self, projection: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
        """`projection` as a streamed read sends it: dropped when this database reads whole documents."""
        return projection if self.project_fields else None

    def estimated_count(self, collection: str) -> int:
        """The collection's size from its metadata (no scan), for progress lines."""
        with self.translated_errors():
            return self.collection(collection).estimated_document_count()

    def ping(self) -> float:
        """Round trip of a `ping` command in seconds; `DatabaseUnavailableError` when down."""
        started = time.perf_counter()
        with self.translated_errors():
            self.client.admin.command("ping")
        return time.perf_counter() - started

    @contextmanager
    def translated_errors(self) -> Iterator[None]:
        """Re-raise connection failures as `DatabaseUnavailableError` naming this database."""
        try:
            yield
        except MONGO_CONNECTION_ERRORS as error:
            raise DatabaseUnavailableError(
                f"{self.display_name} is unavailable: {type(error).__name__}: {_first_clause(error)}"
            ) from None
        except CursorNotFound as error:
            # The server lost an open cursor: it restarted or failed over mid-read (or timed it out).
            raise DatabaseUnavailableError(
                f"{self.display_name} is unavailable: it lost the open cursor (restarted or failed over): "
                f"{type(error).__name__}: {_first_clause(error)}"
            ) from None
        except PyMongoError as error:
            if getattr(error, "timeout", False):
                raise DatabaseUnavailableError(f"{self.display_name} timed out: {_first_clause(error)}") from None
            raise

    def close(self) -> None:
        """Close the client and its pool."""
        if self._client is not None:
            self._client.close()
            self._client = None

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        self.close()


def _first_clause(error: BaseException) -> str:
    # pymongo appends a topology description or the server's full reply; the first clause says what happened.
    return first_line(error).split(", Timeout:")[0].split(", full error:")[0] if str(error).strip() else ""
