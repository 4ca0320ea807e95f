"""The SQLite event, snapshot and checkpoint store: one file, WAL, group commit.

Usage::

    async with open_sqlite_store("events.db", codec) as store:
        await store.append("order-1", [NewEvent(OrderPlaced(...))], expected_version=0)
        snapshots = store.snapshots(OrderState)   # a SnapshotStore on the same file
        await store.save_checkpoint("projection", 42, expected=None)

The store implements :class:`~engine.stores.base.EventStore` and
:class:`~engine.stores.base.CheckpointStore`; :meth:`SqliteStore.snapshots` returns a
:class:`~engine.stores.base.SnapshotStore` sharing its connections.

How it works:

* Writes go through the driver's writer thread (:mod:`engine.drivers.sqlite`): appends
  queued while the writer is busy are written in one ``BEGIN IMMEDIATE`` transaction,
  each checked against its own expected version and idempotency key in its own
  savepoint, so one caller's conflict never fails another's append.
* Positions are the ``INTEGER PRIMARY KEY`` (rowid) of ``events``. Write transactions
  are serialised by SQLite's write lock, across processes too, so a position becomes
  visible only after every smaller one: the subscription invariant holds.
* Streams get an integer key (table ``streams``), so the ``(stream_key, version)`` index
  stays small whatever the stream ids look like: with 1000 hot streams of 44-character
  ids, 1000-event transactions over 500k events measured 27k ev/s with text ids in the
  index and 41k ev/s with integer keys, and the file was 28% smaller.
* The schema is created and migrated with sqlite-utils' numbered migrations (table
  ``_sqlite_migrations``, set ``eskit``), inside the write lock so that several
  processes opening a new file at once migrate it once.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from os import PathLike
from typing import Any, Generic, TypeAlias, TypeVar

import attrs
from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

from engine.codec import Codec
from engine.drivers.sqlite import (
    DEFAULT_MAX_BATCH,
    DEFAULT_READERS,
    SqliteDatabase,
    SqliteStatistics,
    Synchronous,
    open_sqlite,
)
from engine.errors import CheckpointConflictError, EskitError, IdempotencyConflictError
from engine.events import (
    Event,
    ExpectedVersion,
    NewEvent,
    check_expected_version,
    utc_now,
    validate_stream_id,
)
from engine.groups import unwrap_lone_errors
from engine.stores.base import DEFAULT_MAX_EVENT_BYTES, DEFAULT_READ_LIMIT, Snapshot
from engine.stores.encoding import EncodedNewEvent, decode_event, decode_row, encode_batch
from engine.stores.sqlite_transactional import SqliteTransactionalStore

__all__ = [
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "SchemaTooNewError",
    "SqliteSnapshotStore",
    "SqliteStore",
    "SqliteStoreStatistics",
    "open_sqlite_store",
]

E = TypeVar("E")
S = TypeVar("S")

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MICROSECOND = dt.timedelta(microseconds=1)

# position, stream_id, version, type, schema_version, data, metadata, event_id, recorded_at
_Row: TypeAlias = tuple[int, str, int, str, int, bytes, bytes | None, bytes, int]

#: The eskit schema's numbered migrations (sqlite-utils), applied in order on open.
MIGRATIONS = Migrations("eskit")


@MIGRATIONS(name="0001_initial")
def _initial_schema(db: Database) -> None:
    db.table("streams").create(
        {"stream_key": int, "stream_id": str}, pk="stream_key", not_null=["stream_id"]
    )
    db.table("streams").create_index(["stream_id"], unique=True, index_name="streams_by_id")
    db.table("events").create(
        {
            "position": int,
            "stream_key": int,
            "version": int,
            "type": str,
            "schema_version": int,
            "data": bytes,
            "metadata": bytes,
            "event_id": bytes,
            "recorded_at": int,
        },
        pk="position",
        not_null=[
            "stream_key",
            "version",
            "type",
            "schema_version",
            "data",
            "event_id",
            "recorded_at",
        ],
    )
    db.table("events").create_index(
        ["stream_key", "version"], unique=True, index_name="events_by_stream"
    )
    db.table("idempotency_keys").create(
        {"key": str, "stream_id": str, "first_position": int, "count": int},
        pk="key",
        not_null=["stream_id", "first_position", "count"],
    )
    db.table("snapshots").create(
        {"stream_id": str, "version": int, "state_schema": int, "state": bytes},
        pk="stream_id",
        not_null=["version", "state_schema", "state"],
    )
    db.table("checkpoints").create({"name": str, "position": int}, pk="name", not_null=["position"])


#: How many migrations this version of eskit knows.
SCHEMA_VERSION = len(MIGRATIONS._migrations)


class SchemaTooNewError(EskitError, RuntimeError):
    """The file was migrated by a newer eskit; this version cannot safely use it.

    Attributes:
        path: The database file.
        unknown: The applied migrations this version does not know.
    """

    code = "schema_too_new"

    def __init__(self, path: str, unknown: Sequence[str]) -> None:
        super().__init__(path, list(unknown))
        self.path = path
        self.unknown = list(unknown)

    def __str__(self) -> str:
        return (
            f"{self.path} was migrated by a newer eskit (unknown migrations: "
            f"{', '.join(self.unknown)}); upgrade eskit to open it"
        )


def _migrate(path: str) -> Callable[[sqlite3.Connection], list[str]]:
    def job(conn: sqlite3.Connection) -> list[str]:
        db = Database(conn, execute_plugins=False)
        known = {migration.name for migration in MIGRATIONS._migrations}
        unknown = [m.name for m in MIGRATIONS.applied(db) if m.name not in known]
        if unknown:
            raise SchemaTooNewError(path, unknown)
        MIGRATIONS.apply(db)
        return [m.name for m in MIGRATIONS.applied(db)]

    return job


def _to_micros(moment: dt.datetime) -> int:
    return (moment - _EPOCH) // _MICROSECOND


@attrs.frozen
class SqliteStoreStatistics:
    """What a SQLite store has done (see :meth:`SqliteStore.statistics`).

    Attributes:
        database: The driver's counters and durability settings (``synchronous``,
            ``journal_mode``, ``transactions``...).
        appends: Appends that wrote their events (idempotent replays and failures
            excluded).
        events_appended: Events those appends wrote.
        schema_version: How many of the eskit migrations the file has.
    """

    database: SqliteStatistics
    appends: int
    events_appended: int
    schema_version: int


@attrs.frozen
class _Written:
    first_position: int
    version_before: int


_SELECT_EVENT = (
    "SELECT e.position, s.stream_id, e.version, e.type, e.schema_version, e.data,"
    " e.metadata, e.event_id, e.recorded_at"
    # CROSS JOIN keeps events as the outer loop: scan by position, look up the stream id.
    " FROM events e CROSS JOIN streams s ON s.stream_key = e.stream_key"
)
_INSERT_EVENT = (
    "INSERT INTO events (position, stream_key, version, type, schema_version, data,"
    " metadata, event_id, recorded_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


_INSERT_NEXT_EVENT = (
    "INSERT INTO events (stream_key, version, type, schema_version, data, metadata, event_id,"
    " recorded_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)


def _columns(
    stream_key: int | None, version: int, event: EncodedNewEvent, micros: int
) -> tuple[Any, ...]:
    """An event row's columns after its position (``_INSERT_NEXT_EVENT``'s order)."""
    metadata = None if event.metadata == b"{}" else event.metadata
    return (
        stream_key,
        version,
        event.type,
        event.schema_version,
        event.data,
        metadata,
        event.event_id.bytes,
        micros,
    )


def _select_range(conn: sqlite3.Connection, first: int, count: int) -> list[_Row]:
    return conn.execute(
        f"{_SELECT_EVENT} WHERE e.position >= ? AND e.position < ? ORDER BY e.position",
        (first, first + count),
    ).fetchall()


@attrs.define(eq=False)
class SqliteStore(Generic[E]):
    """An event store (and checkpoint store) in a SQLite file.

    Open it with :func:`open_sqlite_store`; never construct it directly.
    """

    _db: SqliteDatabase
    codec: Codec[E]
    max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES
    now: Callable[[], dt.datetime] = utc_now
    _schema_version: int = 0
    _appends: int = 0
    _events_appended: int = 0

    # -- EventStore ------------------------------------------------------------------

    async def append(
        self,
        stream_id: str,
        events: Sequence[NewEvent[E]],
        *,
        expected_version: int | ExpectedVersion = ExpectedVersion.ANY,
        idempotency_key: str | None = None,
    ) -> list[Event[E]]:
        """Append ``events`` to ``stream_id`` atomically (see :class:`~engine.stores.base.EventStore`).

        Concurrent appends are group-committed: each is checked on its own, and each
        caller gets its own result or its own error.
        """
        encoded = encode_batch(self.codec, stream_id, events, max_event_bytes=self.max_event_bytes)
        micros = _to_micros(self.now())
        # What a later read returns: the stored value has microsecond precision.
        recorded_at = _EPOCH + micros * _MICROSECOND

        def job(conn: sqlite3.Connection) -> _Written | list[_Row]:
            if idempotency_key is not None:
                known = conn.execute(
                    "SELECT stream_id, first_position, count FROM idempotency_keys WHERE key = ?",
                    (idempotency_key,),
                ).fetchone()
                if known is not None:
                    if known[0] != stream_id:
                        raise IdempotencyConflictError(idempotency_key, stream_id, known[0])
                    return _select_range(conn, known[1], known[2])
            row = conn.execute(
                "SELECT s.stream_key, (SELECT max(e.version) FROM events e"
                " WHERE e.stream_key = s.stream_key) FROM streams s WHERE s.stream_id = ?",
                (stream_id,),
            ).fetchone()
            stream_key, version = (row[0], row[1] or 0) if row is not None else (None, 0)
            check_expected_version(stream_id, expected_version, version)
            if encoded and stream_key is None:
                stream_key = conn.execute(
                    "INSERT INTO streams (stream_id) VALUES (?)", (stream_id,)
                ).lastrowid
            if len(encoded) == 1:
                # The hot path: SQLite numbers the row itself (max(position) + 1, the
                # rowid rule; positions are never deleted), one statement fewer.
                cursor = conn.execute(
                    _INSERT_NEXT_EVENT, _columns(stream_key, version + 1, encoded[0], micros)
                )
                assert cursor.lastrowid is not None  # set by every successful INSERT
                first = cursor.lastrowid
            else:
                first = (conn.execute("SELECT max(position) FROM events").fetchone()[0] or 0) + 1
                conn.executemany(
                    _INSERT_EVENT,
                    [
                        (first + offset, *_columns(stream_key, version + offset + 1, event, micros))
                        for offset, event in enumerate(encoded)
                    ],
                )
            if idempotency_key is not None:
                conn.execute(
                    "INSERT INTO idempotency_keys (key, stream_id, first_position, count)"
                    " VALUES (?, ?, ?, ?)",
                    (idempotency_key, stream_id, first, len(encoded)),
                )
            return _Written(first, version)

        outcome = await self._db.write(job, checks_first=True)
        if isinstance(outcome, list):
            return self._decode_rows(outcome)
        self._appends += 1
        self._events_appended += len(encoded)
        return [
            self._decode_new(stream_id, outcome, offset, event, recorded_at)
            for offset, event in enumerate(encoded)
        ]

    async def load(
        self, stream_id: str, *, after_version: int = 0, limit: int | None = None
    ) -> list[Event[E]]:
        """The stream's events with a version above ``after_version``, in order."""
        validate_stream_id(stream_id)

        def query(conn: sqlite3.Connection) -> list[Event[E]]:
            rows = conn.execute(
                f"{_SELECT_EVENT} WHERE e.stream_key ="
                " (SELECT stream_key FROM streams WHERE stream_id = ?)"
                " AND e.version > ? ORDER BY e.version LIMIT ?",
                (stream_id, max(after_version, 0), -1 if limit is None else limit),
            ).fetchall()
            return self._decode_rows(rows)

        return await self._db.read(query)

    async def stream_version(self, stream_id: str) -> int:
        """The stream's current version (0 when it has no events)."""
        validate_stream_id(stream_id)

        def query(conn: sqlite3.Connection) -> int:
            row = conn.execute(
                "SELECT max(version) FROM events WHERE stream_key ="
                " (SELECT stream_key FROM streams WHERE stream_id = ?)",
                (stream_id,),
            ).fetchone()
            return int(row[0] or 0)

        return await self._db.read(query)

    async def read_all(
        self, *, after_position: int = 0, limit: int = DEFAULT_READ_LIMIT
    ) -> list[Event[E]]:
        """Up to ``limit`` events of all streams after ``after_position``, in global order."""
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")

        def query(conn: sqlite3.Connection) -> list[Event[E]]:
            rows = conn.execute(
                f"{_SELECT_EVENT} WHERE e.position > ? ORDER BY e.position LIMIT ?",
                (max(after_position, 0), limit),
            ).fetchall()
            return self._decode_rows(rows)

        return await self._db.read(query)

    async def head_position(self) -> int:
        """The highest position ``read_all`` can return (0 for an empty store)."""

        def query(conn: sqlite3.Connection) -> int:
            return int(conn.execute("SELECT max(position) FROM events").fetchone()[0] or 0)

        return await self._db.read(query)

    async def find_idempotent(self, idempotency_key: str) -> list[Event[E]] | None:
        """The events stored by the append that carried ``idempotency_key``, or ``None``."""

        def query(conn: sqlite3.Connection) -> list[Event[E]] | None:
            known = conn.execute(
                "SELECT first_position, count FROM idempotency_keys WHERE key = ?",
                (idempotency_key,),
            ).fetchone()
            if known is None:
                return None
            return self._decode_rows(_select_range(conn, known[0], known[1]))

        return await self._db.read(query)

    # -- CheckpointStore -------------------------------------------------------------

    async def load_checkpoint(self, name: str) -> int | None:
        """The saved position of ``name``, or ``None`` if it was never saved."""

        def query(conn: sqlite3.Connection) -> int | None:
            row = conn.execute(
                "SELECT position FROM checkpoints WHERE name = ?", (name,)
            ).fetchone()
            return None if row is None else int(row[0])

        return await self._db.read(query)

    async def save_checkpoint(self, name: str, position: int, *, expected: int | None) -> None:
        """Save ``position`` for ``name`` if the stored value is still ``expected``.

        The comparison and the write are one step inside the write lock, so of several
        writers (in any process) saving over the same value exactly one wins.

        Raises:
            CheckpointConflictError: Another writer saved since ``expected`` was read.
            ValueError: ``position`` is negative.
        """

        def job(conn: sqlite3.Connection) -> None:
            row = conn.execute(
                "SELECT position FROM checkpoints WHERE name = ?", (name,)
            ).fetchone()
            actual = None if row is None else int(row[0])
            if actual != expected:
                raise CheckpointConflictError(name, expected, actual)
            if position < 0:
                raise ValueError(f"a checkpoint position must be >= 0, got {position}")
            conn.execute(
                "INSERT INTO checkpoints (name, position) VALUES (?, ?)"
                " ON CONFLICT (name) DO UPDATE SET position = excluded.position",
                (name, position),
            )

        await self._db.write(job, checks_first=True)

    # -- snapshots and introspection -------------------------------------------------

    @property
    def database(self) -> SqliteDatabase:
        """The open database this store writes to, for work that must share its
        transactions (a read model and its checkpoint committed together, a DCB store
        in the same file)."""
        return self._db

    def transactional(self) -> SqliteTransactionalStore:
        """The :class:`~engine.stores.base.SqlDatabase` of this file: read-model writes and
        runner checkpoints commit together (see :mod:`engine.stores.sqlite_transactional`)."""
        return SqliteTransactionalStore(self._db)

    def snapshots(self, state_type: type[S]) -> SqliteSnapshotStore[S]:
        """A :class:`~engine.stores.base.SnapshotStore` for states of ``state_type``,
        kept in this store's file and using its codec and connections."""
        return SqliteSnapshotStore(self._db, self.codec, state_type)

    def statistics(self) -> SqliteStoreStatistics:
        """Counters of this store and its database connection."""
        return SqliteStoreStatistics(
            database=self._db.statistics(),
            appends=self._appends,
            events_appended=self._events_appended,
            schema_version=self._schema_version,
        )

    # -- decoding --------------------------------------------------------------------

    def _decode_rows(self, rows: list[_Row]) -> list[Event[E]]:
        # The events of one append share a timestamp: build each datetime once.
        moments: dict[int, dt.datetime] = {}
        codec = self.codec
        events = []
        for position, stream_id, version, type_name, schema, data, metadata, eid, at in rows:
            recorded_at = moments.get(at)
            if recorded_at is None:
                recorded_at = moments[at] = _EPOCH + at * _MICROSECOND
            events.append(
                decode_row(
                    codec,
                    stream_id,
                    version,
                    position,
                    type_name,
                    schema,
                    data,
                    metadata,
                    eid,
                    recorded_at,
                )
            )
        return events

    def _decode_new(
        self,
        stream_id: str,
        written: _Written,
        offset: int,
        event: EncodedNewEvent,
        recorded_at: dt.datetime,
    ) -> Event[E]:
        return decode_event(
            self.codec,
            stream_id=stream_id,
            version=written.version_before + offset + 1,
            position=written.first_position + offset,
            type_name=event.type,
            schema_version=event.schema_version,
            data=event.data,
            metadata=event.metadata,
            event_id=event.event_id,
            recorded_at=recorded_at,
        )


@attrs.define(eq=False)
class SqliteSnapshotStore(Generic[S]):
    """Snapshots of one state type in a SQLite store's file (see :meth:`SqliteStore.snapshots`)."""

    _db: SqliteDatabase
    codec: Codec[Any]
    state_type: type[S]

    async def save_snapshot(self, snapshot: Snapshot[S]) -> None:
        """Store ``snapshot`` unless a snapshot of a later version is stored already."""
        validate_stream_id(snapshot.stream_id)
        state = self.codec.encode_value(snapshot.state)

        def job(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO snapshots (stream_id, version, state_schema, state)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (stream_id) DO UPDATE SET"
                " version = excluded.version, state_schema = excluded.state_schema,"
                " state = excluded.state WHERE excluded.version >= snapshots.version",
                (snapshot.stream_id, snapshot.version, snapshot.schema, state),
            )

        await self._db.write(job, checks_first=True)

    async def load_snapshot(self, stream_id: str) -> Snapshot[S] | None:
        """The latest snapshot of ``stream_id``, or ``None``."""

        def query(conn: sqlite3.Connection) -> Snapshot[S] | None:
            row = conn.execute(
                "SELECT version, state_schema, state FROM snapshots WHERE stream_id = ?",
                (stream_id,),
            ).fetchone()
            if row is None:
                return None
            state = self.codec.decode_value(row[2], self.state_type)
            return Snapshot(stream_id, int(row[0]), state, int(row[1]))

        return await self._db.read(query)


@unwrap_lone_errors
@asynccontextmanager
async def open_sqlite_store(
    path: str | PathLike[str],
    codec: Codec[E],
    *,
    synchronous: Synchronous = "FULL",
    max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
    readers: int = DEFAULT_READERS,
    max_batch: int = DEFAULT_MAX_BATCH,
    now: Callable[[], dt.datetime] = utc_now,
) -> AsyncIterator[SqliteStore[E]]:
    """Open (creating and migrating if needed) a SQLite event store.

    Args:
        path: The database file; several stores and processes may open the same file.
        codec: Encodes events on append and decodes them on read.
        synchronous: ``"FULL"`` (default): a returned append survives power loss.
            ``"NORMAL"``: faster; the last appends may be lost on power loss (never on a
            process crash).
        max_event_bytes: The largest encoded event (data plus metadata) accepted.
        readers: Reader connections (reads that run at once).
        max_batch: The most appends (or other writes) one transaction takes.
        now: Wall clock for ``recorded_at``.

    Yields:
        The open :class:`SqliteStore`.

    Resource handling:
        Appends queued when the block exits are written before the file is closed;
        closing is shielded and bounded (see :func:`engine.drivers.sqlite.open_sqlite`).

    Error handling:
        :class:`SchemaTooNewError` if a newer eskit migrated the file;
        :class:`~engine.errors.BackendRefusedError` if SQLite fails (not a database, disk full).
    """
    async with open_sqlite(
        path, synchronous=synchronous, readers=readers, max_batch=max_batch
    ) as db:
        applied = await db.write(_migrate(str(path)))
        yield SqliteStore(
            db, codec, max_event_bytes=max_event_bytes, now=now, schema_version=len(applied)
        )
