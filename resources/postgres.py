"""`PostgresResource`: a pooled psycopg 3 connection source for the Cart database."""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any

import dagster as dg
import psycopg
import sqlalchemy as sa
from pydantic import Field, PrivateAttr
from sqlalchemy.engine import Engine, make_url

from resources.errors import (
    DatabaseUnavailableError,
    ReplicationSlotLostError,
    SyncAlreadyRunningError,
    first_line,
)

#: The most rows a server-side cursor may fetch per round trip.
MAX_FETCH_SIZE = 100_000
#: First half of every advisory lock key this service takes (ASCII "ETLS").
ADVISORY_LOCK_NAMESPACE = 0x45544C53


def sqlalchemy_url(url: str) -> sa.URL:
    """The URL with the psycopg 3 driver, whatever PostgreSQL scheme it was given in."""
    parsed = make_url(url.replace("postgres://", "postgresql://", 1) if url.startswith("postgres://") else url)
    return parsed.set(drivername="postgresql+psycopg")


def describe_postgres_url(url: str) -> str:
    """`host:port/db` of a PostgreSQL URL, without credentials."""
    parsed = sqlalchemy_url(url)
    return f"{parsed.host or 'localhost'}:{parsed.port or 5432}/{parsed.database or ''}"


def column_type_problems(conn: psycopg.Connection, table: str, expected: dict[str, str]) -> list[str]:
    """How `table`'s columns differ from `expected` (name -> information_schema data_type); empty when they fit."""
    rows = conn.execute(
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_schema = current_schema() AND table_name = %s",
        (table,),
    ).fetchall()
    conn.rollback()
    if not rows:
        return [f"table '{table}' does not exist"]
    found = dict(rows)
    problems = []
    for column, data_type in expected.items():
        if column not in found:
            problems.append(f"column {table}.{column} is missing")
        elif found[column] != data_type:
            problems.append(f"column {table}.{column} is {found[column]}, expected {data_type}")
    return problems


def copy_rows(conn: psycopg.Connection, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """COPY `rows` (tuples in `columns` order) into `table`, in the connection's transaction."""
    quoted = ", ".join(f'"{column}"' for column in columns)
    with conn.cursor().copy(f"COPY {table} ({quoted}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)


#: The output plugin of the change slot: shipped with PostgreSQL, one line of text per change.
DECODING_PLUGIN = "test_decoding"
#: Slot names PostgreSQL accepts: lower-case letters, digits and underscores.
SLOT_NAME_PATTERN = r"^[a-z0-9_]{1,63}$"
DEFAULT_REPLICATION_SLOT = "etl_sync_carts"


@dataclass(frozen=True)
class SlotState:
    """What logical decoding on this database needs, as the server has it now."""

    wal_level: str
    role: str
    can_replicate: bool  # superuser, or the REPLICATION attribute
    current_database: str
    current_schema: str
    database: str | None  # the slot's database (None: no such slot)
    plugin: str | None
    wal_status: str | None  # reserved, extended, unreserved or lost
    confirmed_lsn: str | None


#: How long a sync waits for the lock's gate (held for one check by any other sync starting).
LOCK_GATE_TIMEOUT_MS = 10_000
#: Sessions of this database holding the named sync lock for a holder other than the given one.
_OTHER_HOLDERS_SQL = (
    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1 "
    "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
    "AND classid::bigint = %s AND objid::bigint <> %s"
)


#: TCP keepalives, in seconds and probes: the client's side on every connection (libpq's `keepalives_*`), and
#: the server's side of a session holding a sync lock (the `tcp_keepalives_*` settings): a peer gone silent is
#: found in about 25 s instead of the kernel's two hours.
KEEPALIVES = {"idle": 10, "interval": 5, "count": 3}
_SERVER_KEEPALIVES_SQL = "SELECT " + ", ".join(
    f"set_config('tcp_keepalives_{name}', '{value}', false)" for name, value in KEEPALIVES.items()
)


def _lock_key(name: str) -> int:
    """The second half of a two-part advisory lock key (a signed int4)."""
    value = zlib.crc32(name.encode())
    return value - (1 << 32) if value >= (1 << 31) else value


def _lock_half(text: str) -> int:
    """One half (an unsigned int4, as pg_locks shows it) of a one-part (int8) advisory lock key."""
    return zlib.crc32(f"etl-sync/{text}".encode())


class PostgresResource(dg.ConfigurableResource):
    """The Cart service's PostgreSQL, through a small SQLAlchemy connection pool.

    Callers get raw psycopg connections (`connection()`), so COPY and server-side
    cursors are available.
    """

    url: str = Field(description="PostgreSQL URL (postgresql://user:password@host:port/db)")
    label: str = Field(default="Cart PostgreSQL", description="Name used in logs and errors")
    connect_timeout_s: int = Field(default=10, ge=1)
    pool_size: int = Field(default=4, ge=1)
    fetch_size: int | None = Field(
        default=None,
        ge=1,
        le=MAX_FETCH_SIZE,
        description="Rows per FETCH of a server-side cursor; unset: the scan's batch size",
    )
    application_name: str = "etl-sync"
    replication_slot: str = Field(
        default=DEFAULT_REPLICATION_SLOT,
        pattern=SLOT_NAME_PATTERN,
        description="The logical replication slot change capture reads (created on first use)",
    )

    _engine: Engine | None = PrivateAttr(default=None)

    @property
    def display_name(self) -> str:
        """What to call this database in messages: label and address, no secrets."""
        return f"{self.label} ({describe_postgres_url(self.url)})"

    @property
    def engine(self) -> Engine:
        """The pooled SQLAlchemy engine, created on first use."""
        if self._engine is None:
            self._engine = sa.create_engine(
                sqlalchemy_url(self.url),
                pool_size=self.pool_size,
                max_overflow=2,
                pool_pre_ping=True,
                hide_parameters=True,
                connect_args={
                    "connect_timeout": self.connect_timeout_s,
                    "application_name": self.application_name,
                    # Fail the run instead of hanging when the server vanishes mid-query.
                    "keepalives": 1,
                    **{f"keepalives_{name}": value for name, value in KEEPALIVES.items()},
                },
            )
        return self._engine

    @contextmanager
    def translated_errors(self) -> Iterator[None]:
        """Re-raise connection failures as `DatabaseUnavailableError` naming this database."""
        try:
            yield
        except (psycopg.OperationalError, sa.exc.OperationalError, sa.exc.InterfaceError) as error:
            original = getattr(error, "orig", None) or error
            raise DatabaseUnavailableError(f"{self.display_name} is unavailable: {first_line(original)}") from None

    @contextmanager
    def connection(self, autocommit: bool = False) -> Iterator[psycopg.Connection]:
        """A pooled psycopg connection; rolled back and returned to the pool afterwards.

        With `autocommit`, each statement commits on its own (a function that refuses to run
        in a transaction block, or transactions the caller opens itself); the connection goes
        back to the pool in its usual mode. After any error or interrupt the connection is
        discarded, and a statement still running on the server is cancelled first, so its
        transaction ends now (rolled back) instead of holding its locks until it finishes.
        """
        with self.translated_errors():
            pooled = self.engine.raw_connection()
        raw: psycopg.Connection = pooled.driver_connection  # type: ignore[assignment]
        try:
            with self.translated_errors():
                if autocommit:
                    raw.autocommit = True
                yield raw
                if autocommit:
                    # Not in a `finally`: after a failure the connection may be mid-statement or
                    # broken, where this would raise over the real error; it is discarded then anyway.
                    raw.autocommit = False
        except BaseException:
            if raw.info.transaction_status == psycopg.pq.TransactionStatus.ACTIVE:
                with suppress(Exception):
                    raw.cancel_safe(timeout=self.connect_timeout_s)
            pooled.invalidate()
            raise
        finally:
            pooled.close()

    def scan_in_batches(
        self, query: str, params: Sequence[Any] = (), *, batch_size: int, cursor_name: str = "etl_sync_scan"
    ) -> Iterator[list[tuple[Any, ...]]]:
        """The query's rows through a server-side cursor, as lists of `batch_size`: memory
        holds one batch, whatever the table size. Each round trip fetches `fetch_size` rows
        (unset: `batch_size`)."""
        fetch_size = self.fetch_size or batch_size
        with self.connection() as conn:
            conn.autocommit = False
            with conn.cursor(name=cursor_name) as cursor:
                cursor.itersize = fetch_size
                cursor.execute(query, params)
                batch: list[tuple[Any, ...]] = []
                while rows := cursor.fetchmany(fetch_size):
                    if not batch and len(rows) == batch_size:
                        yield rows  # the usual case: one fetch is one batch
                        continue
                    batch.extend(rows)
                    while len(batch) >= batch_size:
                        yield batch[:batch_size]
                        batch = batch[batch_size:]
                if batch:
                    yield batch
            conn.rollback()

    def estimated_rows(self, table: str) -> int | None:
        """The table's row count from the planner's statistics (no scan); None before its first ANALYZE."""
        with self.connection() as conn:
            query = "SELECT reltuples::bigint FROM pg_class WHERE oid = to_regclass(%s)"
            row = conn.execute(query, (table,)).fetchone()
            conn.rollback()
        return int(row[0]) if row and row[0] is not None and row[0] >= 0 else None

    def ping(self) -> float:
        """Round trip of `SELECT 1` in seconds; `DatabaseUnavailableError` when down."""
        started = time.perf_counter()
        with self.connection() as conn:
            conn.execute("SELECT 1")
            conn.rollback()
        return time.perf_counter() - started

    @contextmanager
    def advisory_lock(self, name: str, holder: str) -> Iterator[Callable[[], None]]:
        """Hold the sync lock named `name` for `holder` (a run id), or fail fast if another holder has it.

        Sessions of one holder share the lock: the range steps of one split run write side
        by side, and any other run, split or not, is kept out. Each session holds a shared
        advisory lock keyed by the name and its holder, taken under a short exclusive gate
        that first makes sure no other holder is in.

        Yields `still_held()`, which raises `DatabaseUnavailableError` once the session
        holding the lock has ended (killed, cut, server restarted): the lock went with it,
        so the caller must stop writing. Ending the session is also why a failed unlock is
        ignored: there is nothing left to unlock.
        """
        gate, (name_half, holder_half) = _lock_key(name), (_lock_half(name), _lock_half(holder))
        member = name_half << 32 | holder_half
        member -= (1 << 64) if member >= (1 << 63) else 0
        with self.connection(autocommit=True) as conn:
            # The server ends this session, and so frees the lock, within about 25 s of the holder's machine
            # going silent (a host that restarted sends no FIN), not after the kernel's 2-hour keepalive.
            conn.execute(_SERVER_KEEPALIVES_SQL)
            try:
                with conn.transaction():
                    conn.execute(f"SET LOCAL lock_timeout = '{LOCK_GATE_TIMEOUT_MS}ms'")
                    conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (ADVISORY_LOCK_NAMESPACE, gate))
                    [others] = conn.execute(_OTHER_HOLDERS_SQL, (name_half, holder_half)).fetchone() or (0,)
                    if not others:
                        conn.execute("SELECT pg_advisory_lock_shared(%s)", (member,))
            except psycopg.errors.LockNotAvailable:
                others = 1  # the gate is held for longer than a check takes: another run (an older version) holds it
            if others:
                raise SyncAlreadyRunningError(
                    f"another run holds the '{name}' sync lock on {self.display_name}; "
                    "wait for it to finish (this run made no changes)"
                )

            def still_held() -> None:
                try:
                    conn.execute("SELECT 1")
                except psycopg.OperationalError as error:
                    raise DatabaseUnavailableError(
                        f"{self.display_name} is unavailable: the session holding the '{name}' sync lock ended "
                        f"({first_line(error, 200)}), so the lock is gone"
                    ) from None

            try:
                yield still_held
            finally:
                with suppress(psycopg.OperationalError):
                    conn.execute("SELECT pg_advisory_unlock_shared(%s)", (member,))

    # ----- logical decoding: the replication slot, through the SQL interface -----

    def slot_state(self) -> SlotState:
        """The server's `wal_level`, whether this role may use slots, and the slot's own state."""
        with self.connection() as conn:
            wal_level = conn.execute("SHOW wal_level").fetchone()[0]  # type: ignore[index]
            role, can, database, schema = conn.execute(
                "SELECT current_user, rolsuper OR rolreplication, current_database(), current_schema() "
                "FROM pg_roles WHERE rolname = current_user"
            ).fetchone()  # type: ignore[misc]
            row = conn.execute(
                "SELECT database, plugin, wal_status, confirmed_flush_lsn::text FROM pg_replication_slots "
                "WHERE slot_name = %s",
                (self.replication_slot,),
            ).fetchone()
            conn.rollback()
        return SlotState(wal_level, role, bool(can), database, schema, *(row or (None, None, None, None)))

    def create_slot(self) -> str:
        """Create the slot (decoding with `DECODING_PLUGIN`); its LSN, from which it gives changes."""
        with self.connection(autocommit=True) as conn:
            (lsn,) = conn.execute(
                "SELECT lsn::text FROM pg_create_logical_replication_slot(%s, %s)",
                (self.replication_slot, DECODING_PLUGIN),
            ).fetchone()  # type: ignore[misc]
        return lsn

    def drop_slot(self) -> None:
        with self.connection(autocommit=True) as conn:
            conn.execute("SELECT pg_drop_replication_slot(%s)", (self.replication_slot,))

    def peek_changes(self, max_changes: int) -> list[tuple[str, str]]:
        """(lsn, text) of the slot's pending changes, whole transactions, stopping once `max_changes`
        are read; nothing is consumed (`advance_slot` does that). Each transaction ends with
        `COMMIT <xid> (at <time>)`."""
        try:
            with self.connection() as conn:
                rows = conn.execute(
                    "SELECT lsn::text, data FROM pg_logical_slot_peek_changes(%s, NULL, %s, "
                    "'include-timestamp', '1', 'skip-empty-xacts', '1')",
                    (self.replication_slot, max_changes),
                ).fetchall()
                conn.rollback()
        except psycopg.errors.ObjectNotInPrerequisiteState as error:
            if "can no longer get changes" in str(error):
                raise ReplicationSlotLostError(
                    f"replication slot {self.replication_slot} on {self.display_name} is lost: {first_line(error)}"
                ) from None
            raise
        return [(lsn, data) for lsn, data in rows]

    def advance_slot(self, lsn: str) -> bool:
        """Mark the slot's changes up to `lsn` consumed; False when it already was there or past it."""
        with self.connection(autocommit=True) as conn:
            row = conn.execute(
                "SELECT confirmed_flush_lsn < %s::pg_lsn FROM pg_replication_slots WHERE slot_name = %s",
                (lsn, self.replication_slot),
            ).fetchone()
            if row is None:
                raise ReplicationSlotLostError(f"replication slot {self.replication_slot} no longer exists")
            if row[0]:
                conn.execute("SELECT pg_replication_slot_advance(%s, %s::pg_lsn)", (self.replication_slot, lsn))
        return bool(row[0])

    def dispose(self) -> None:
        """Close every pooled connection."""
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        self.dispose()
