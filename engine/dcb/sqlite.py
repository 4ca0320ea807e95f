"""The SQLite DCB store: tagged events with conditional appends in one SQLite file.

Usage::

    async with open_sqlite_dcb_store("events.db", codec) as store:
        events, head = await store.read(Query.of(tags=["course:c1"]))
        await store.append([DcbEvent(...)], AppendCondition(query, after=head))

The DCB tables (``dcb_events``, ``dcb_tags``) can share a file with the event store's
tables; they have their own migration set (``eskit_dcb``).

How it keeps the promises of :mod:`engine.dcb.base`:

* **Check and write are one step.** An append is one job of the driver's writer
  (:mod:`engine.drivers.sqlite`): it runs inside ``BEGIN IMMEDIATE``, which holds
  SQLite's write lock (across processes too) until commit, so nothing can be written
  between the condition check and the insert. Concurrent appends of one process are
  group-committed: each is checked in its own savepoint and sees the appends queued
  before it in the same transaction.
* **Positions** are the ``INTEGER PRIMARY KEY`` of ``dcb_events``. Writes are
  serialised by the write lock, so a position becomes visible only after every smaller
  one (the subscription invariant).
* **Tags** are indexed in ``dcb_tags (tag, position)`` (a ``WITHOUT ROWID`` B-tree), so
  a condition costs an index range scan over the events with one of its tags *after*
  its ``after`` position, however large the log grows; types in ``(type, position)``.
  An item with several tags is driven by its rarest tag (a bounded count per tag), so
  a tag that every event carries (``tenant:1``) never drives a scan.
* **Following**: appends of this store wake its followers at once; appends of other
  processes are noticed within ``poll_interval``.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from os import PathLike
from typing import Any, TypeAlias, TypeVar

import attrs
import orjson
import trio
from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

from engine.codec import Codec
from engine.dcb.base import (
    AppendCondition,
    AppendConditionError,
    DcbEvent,
    DuplicateEventIdError,
    Query,
    QueryItem,
    ReadResult,
    SequencedEvent,
)
from engine.dcb.encoding import EncodedDcbEvent, decode_event, encode_events
from engine.dcb.follow import Following
from engine.drivers.sqlite import (
    DEFAULT_MAX_BATCH,
    DEFAULT_READERS,
    SqliteDatabase,
    Synchronous,
    open_sqlite,
)
from engine.events import utc_now
from engine.groups import unwrap_lone_errors
from engine.stores.base import DEFAULT_MAX_EVENT_BYTES

__all__ = [
    "DEFAULT_POLL_INTERVAL",
    "MIGRATIONS",
    "SqliteDcbStore",
    "SqliteDcbStoreStatistics",
    "open_sqlite_dcb_store",
]

E = TypeVar("E")

#: How often a follower looks for appends made by other processes (seconds).
DEFAULT_POLL_INTERVAL = 0.1

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MICROSECOND = dt.timedelta(microseconds=1)

# position, type, schema_version, data, metadata, tags, event_id, recorded_at
_Row: TypeAlias = tuple[int, str, int, bytes, bytes | None, str, bytes, int]

#: The DCB tables' numbered migrations (sqlite-utils set ``eskit_dcb``).
MIGRATIONS = Migrations("eskit_dcb")


@MIGRATIONS(name="0001_initial")
def _initial_schema(db: Database) -> None:
    db.execute(
        "CREATE TABLE dcb_events ("
        " position INTEGER PRIMARY KEY,"
        " type TEXT NOT NULL,"
        " schema_version INTEGER NOT NULL,"
        " data BLOB NOT NULL,"
        " metadata BLOB,"  # NULL stands for {}
        " tags TEXT NOT NULL,"  # a JSON array, for reading back; matching uses dcb_tags
        " event_id BLOB NOT NULL,"
        " recorded_at INTEGER NOT NULL)"
    )
    db.execute("CREATE UNIQUE INDEX dcb_events_by_id ON dcb_events (event_id)")
    db.execute("CREATE INDEX dcb_events_by_type ON dcb_events (type, position)")
    db.execute(
        "CREATE TABLE dcb_tags (tag TEXT NOT NULL, position INTEGER NOT NULL,"
        " PRIMARY KEY (tag, position)) WITHOUT ROWID"
    )


_COLUMNS = "position, type, schema_version, data, metadata, tags, event_id, recorded_at"
_INSERT_EVENT = (
    "INSERT INTO dcb_events (position, type, schema_version, data, metadata, tags, event_id,"
    " recorded_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)


def _to_micros(moment: dt.datetime) -> int:
    return (moment - _EPOCH) // _MICROSECOND


#: How many index entries a tag's selectivity probe counts at most.
PROBE_LIMIT = 1000


def _item_sql(item: QueryItem, after: int, driver: str | None = None) -> tuple[str, list[Any]]:
    """The positions above ``after`` of the events matching ``item``.

    ``driver`` is the tag whose index range is scanned (the item's first tag by
    default); each further tag is one primary-key probe per candidate. CROSS JOIN and
    the unary ``+`` pin that plan: without per-value statistics SQLite's planner would
    guess, and it guessed the hot tag (or the common type) as the driver.
    """
    if not item.tags:
        marks = ", ".join("?" * len(item.types))
        return (
            f"SELECT position FROM dcb_events WHERE type IN ({marks}) AND position > ?",
            [*item.types, after],
        )
    first = driver if driver is not None else item.tags[0]
    others = [tag for tag in item.tags if tag != first]
    joins = "".join(f" CROSS JOIN dcb_tags d{n}" for n in range(1, len(others) + 1))
    where = "".join(
        f" AND d{n}.tag = ? AND d{n}.position = d0.position" for n in range(1, len(others) + 1)
    )
    params: list[Any] = [first, after, *others]
    if item.types:
        joins += " CROSS JOIN dcb_events e"
        where += (
            f" AND e.position = d0.position AND +e.type IN ({', '.join('?' * len(item.types))})"
        )
        params.extend(item.types)
    return (
        f"SELECT d0.position FROM dcb_tags d0{joins} WHERE d0.tag = ? AND d0.position > ?{where}",
        params,
    )


def _driver(conn: sqlite3.Connection, item: QueryItem, after: int) -> str | None:
    """The item's rarest tag after ``after`` (counted up to PROBE_LIMIT), if it has several."""
    if len(item.tags) < 2:
        return None
    counts = [
        (
            conn.execute(
                "SELECT count(*) FROM (SELECT 1 FROM dcb_tags WHERE tag = ? AND position > ?"
                " LIMIT ?)",
                (tag, after, PROBE_LIMIT),
            ).fetchone()[0],
            tag,
        )
        for tag in item.tags
    ]
    return min(counts)[1]


def _first_match(conn: sqlite3.Connection, query: Query, after: int) -> int | None:
    if query.matches_all:
        row = conn.execute(
            "SELECT position FROM dcb_events WHERE position > ? LIMIT 1", (after,)
        ).fetchone()
        return None if row is None else int(row[0])
    for item in query.items:
        sql, params = _item_sql(item, after, _driver(conn, item, after))
        row = conn.execute(f"{sql} LIMIT 1", params).fetchone()
        if row is not None:
            return int(row[0])
    return None


@attrs.frozen
class SqliteDcbStoreStatistics:
    """What a SQLite DCB store has done since it opened.

    Attributes:
        appends: Appends that wrote their events.
        events_appended: Events those appends wrote.
        conflicts: Appends refused because their condition failed.
        replays: Appends answered as retries of a stored append.
    """

    appends: int
    events_appended: int
    conflicts: int
    replays: int


@attrs.define(eq=False)
class SqliteDcbStore(Following[E]):
    """A :class:`~engine.dcb.base.DcbStore` in a SQLite file.

    Open it with :func:`open_sqlite_dcb_store`; never construct it directly.
    """

    _db: SqliteDatabase
    codec: Codec[E]
    max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES
    poll_interval: float = DEFAULT_POLL_INTERVAL
    now: Callable[[], dt.datetime] = utc_now
    _known_head: int = 0
    _appended: trio.Event = attrs.field(factory=trio.Event)
    _appends: int = 0
    _events_appended: int = 0
    _conflicts: int = 0
    _replays: int = 0

    async def read(
        self, query: Query | None = None, *, after: int | None = None, limit: int | None = None
    ) -> ReadResult[E]:
        """The events matching ``query`` after ``after`` (see :meth:`DcbStore.read
        <engine.dcb.base.DcbStore.read>`)."""
        if limit is not None and limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        start = max(after or 0, 0)

        def run(conn: sqlite3.Connection) -> tuple[list[_Row], int]:
            head = int(conn.execute("SELECT max(position) FROM dcb_events").fetchone()[0] or 0)
            if query is None or query.matches_all:
                sql, params = "SELECT position FROM dcb_events WHERE position > ?", [start]
            else:
                parts = [_item_sql(item, start, _driver(conn, item, start)) for item in query.items]
                sql = " UNION ".join(part for part, _ in parts)
                params = [param for _, values in parts for param in values]
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM dcb_events WHERE position IN ({sql})"
                " ORDER BY position LIMIT ?",
                [*params, -1 if limit is None else limit],
            ).fetchall()
            return rows, head

        rows, head = await self._db.read(run)
        events = [self._decode(row) for row in rows]
        if limit is not None and len(events) == limit:
            head = events[-1].position
        return ReadResult(events, head)

    async def append(
        self, events: Sequence[DcbEvent[E]], condition: AppendCondition | None = None
    ) -> int:
        """Append ``events`` atomically unless ``condition`` fails (see
        :meth:`DcbStore.append <engine.dcb.base.DcbStore.append>`)."""
        encoded = encode_events(self.codec, events, max_event_bytes=self.max_event_bytes)
        micros = _to_micros(self.now())
        ids = [event.event_id.bytes for event in encoded]

        def job(conn: sqlite3.Connection) -> tuple[str, int]:
            marks = ", ".join("?" * len(ids))
            known = conn.execute(
                f"SELECT event_id, position FROM dcb_events WHERE event_id IN ({marks})", ids
            ).fetchall()
            if known:
                if len(known) != len(ids):
                    stored = {bytes(row[0]) for row in known}
                    raise DuplicateEventIdError(
                        [uuid.UUID(bytes=key) for key in ids if key in stored]
                    )
                return "replay", max(int(row[1]) for row in known)
            if condition is not None:
                conflict = _first_match(conn, condition.fail_if_events_match, condition.after or 0)
                if conflict is not None:
                    return "conflict", conflict
            # Positions are assigned here, under the write lock, so that one executemany
            # writes the events and another their tags.
            first = int(conn.execute("SELECT max(position) FROM dcb_events").fetchone()[0] or 0) + 1
            conn.executemany(
                _INSERT_EVENT,
                [
                    (
                        first + offset,
                        event.type,
                        event.schema_version,
                        event.data,
                        None if event.metadata == b"{}" else event.metadata,
                        _tags_json(event),
                        event.event_id.bytes,
                        micros,
                    )
                    for offset, event in enumerate(encoded)
                ],
            )
            conn.executemany(
                "INSERT INTO dcb_tags (tag, position) VALUES (?, ?)",
                [
                    (tag, first + offset)
                    for offset, event in enumerate(encoded)
                    for tag in event.tags
                ],
            )
            position = first + len(encoded) - 1
            return "ok", position

        status, position = await self._db.write(job)
        if status == "conflict":
            self._conflicts += 1
            assert condition is not None
            raise AppendConditionError(condition, position)
        if status == "replay":
            self._replays += 1
            return position
        self._appends += 1
        self._events_appended += len(encoded)
        self._advance(position)
        return position

    async def head(self) -> int:
        """The log's current head position (0 for an empty log)."""

        def run(conn: sqlite3.Connection) -> int:
            return int(conn.execute("SELECT max(position) FROM dcb_events").fetchone()[0] or 0)

        head = await self._db.read(run)
        self._advance(head)
        return head

    async def wait_for_append(self, after: int) -> None:
        """Return once the head may be beyond ``after``: at once for appends of this
        store, within ``poll_interval`` for appends of other processes."""
        if self._known_head > after:
            await trio.lowlevel.checkpoint()
            return
        with trio.move_on_after(self.poll_interval):
            await self._appended.wait()

    def statistics(self) -> SqliteDcbStoreStatistics:
        """Counters of this store."""
        return SqliteDcbStoreStatistics(
            self._appends, self._events_appended, self._conflicts, self._replays
        )

    def _advance(self, position: int) -> None:
        if position > self._known_head:
            self._known_head = position
            self._appended.set()
            self._appended = trio.Event()

    def _decode(self, row: _Row) -> SequencedEvent[E]:
        return decode_event(
            self.codec,
            position=row[0],
            type_name=row[1],
            schema_version=row[2],
            data=row[3],
            metadata=row[4],
            tags=orjson.loads(row[5]),
            event_id=uuid.UUID(bytes=row[6]),
            recorded_at=_EPOCH + row[7] * _MICROSECOND,
        )


def _tags_json(event: EncodedDcbEvent) -> bytes:
    return orjson.dumps(event.tags)


def _migrate(conn: sqlite3.Connection) -> int:
    db = Database(conn, execute_plugins=False)
    MIGRATIONS.apply(db)
    return len(MIGRATIONS.applied(db))


@unwrap_lone_errors
@asynccontextmanager
async def open_sqlite_dcb_store(
    target: str | PathLike[str] | SqliteDatabase,
    codec: Codec[E],
    *,
    synchronous: Synchronous = "FULL",
    max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
    readers: int = DEFAULT_READERS,
    max_batch: int = DEFAULT_MAX_BATCH,
    poll_interval: float = DEFAULT_POLL_INTERVAL,
    now: Callable[[], dt.datetime] = utc_now,
) -> AsyncIterator[SqliteDcbStore[E]]:
    """Open (creating and migrating if needed) the DCB store in a SQLite file.

    Args:
        target: The database file (several stores and processes may open it), or a
            :class:`~engine.drivers.sqlite.SqliteDatabase` that is already open (for
            example the one an event store uses), which is then shared and not closed.
        codec: Encodes events on append and decodes them on read.
        synchronous: ``"FULL"`` (default): a returned append survives power loss.
            ``"NORMAL"``: faster; the last appends may be lost on power loss.
        max_event_bytes: The largest encoded event (data plus metadata) accepted.
        readers: Reader connections (reads that run at once), for a file opened here.
        max_batch: The most appends one transaction takes, for a file opened here.
        poll_interval: How often followers look for appends of other processes.
        now: Wall clock for ``recorded_at``.

    Resource handling:
        A file opened here is closed on exit, after queued appends are written (see
        :func:`engine.drivers.sqlite.open_sqlite`).

    Error handling:
        :class:`~engine.errors.BackendRefusedError` if SQLite fails (not a database, disk full).
    """
    if poll_interval <= 0:
        raise ValueError(f"poll_interval must be > 0, got {poll_interval}")
    async with _database(target, synchronous, readers, max_batch) as db:
        await db.write(_migrate)
        store = SqliteDcbStore(
            db, codec, max_event_bytes=max_event_bytes, poll_interval=poll_interval, now=now
        )
        await store.head()
        yield store


def _database(
    target: str | PathLike[str] | SqliteDatabase,
    synchronous: Synchronous,
    readers: int,
    max_batch: int,
) -> AbstractAsyncContextManager[SqliteDatabase]:
    if isinstance(target, SqliteDatabase):
        return _borrowed(target)
    return open_sqlite(target, synchronous=synchronous, readers=readers, max_batch=max_batch)


@asynccontextmanager
async def _borrowed(db: SqliteDatabase) -> AsyncIterator[SqliteDatabase]:
    yield db
