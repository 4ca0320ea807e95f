"""Dead letters in a SQLite store's file: they survive restarts with the events.

Usage::

    async with open_sqlite_store("events.db", codec) as store:
        dead_letters = sqlite_dead_letters(store)
        runner = ProjectionRunner(..., dead_letters=dead_letters)

The table ``dead_letters`` (one row per ``(runner, position)``) is created with ``CREATE
TABLE IF NOT EXISTS`` on first use, inside the write lock, so several processes sharing
the file create it once; it is not one of the store's numbered migrations, so a file
that never parked anything does not have it. Writes go through the store's writer thread
(:meth:`SqliteDatabase.write <engine.drivers.sqlite.SqliteDatabase.write>`), reads
through its reader pool; the driver translates :mod:`sqlite3` errors. What is kept of a
letter (the reason's bound, names refused, times in UTC) is shared by every durable
backend: see :mod:`engine.stores.dead_letter_encoding`.
"""

from __future__ import annotations

import sqlite3
import uuid
from typing import Any, Final

import attrs
import trio

from engine.drivers.sqlite import SqliteDatabase
from engine.stores.base import DeadLetter
from engine.stores.dead_letter_encoding import (
    check_runner,
    iso_utc,
    parse_iso_utc,
    storable_letter,
)
from engine.stores.sqlite import SqliteStore

__all__ = ["SqliteDeadLetterStore", "sqlite_dead_letters"]

_CREATE: Final = (
    "CREATE TABLE IF NOT EXISTS dead_letters ("
    " runner TEXT NOT NULL,"
    " position INTEGER NOT NULL,"
    " event_id TEXT NOT NULL,"
    " stream_id TEXT NOT NULL,"
    " version INTEGER NOT NULL,"
    " type TEXT NOT NULL,"
    " reason TEXT NOT NULL,"
    " attempts INTEGER NOT NULL,"
    " parked_at TEXT NOT NULL,"  # ISO-8601 UTC, fixed width
    " PRIMARY KEY (runner, position)"
    ") WITHOUT ROWID"
)
_COLUMNS: Final = (
    "runner, position, event_id, stream_id, version, type, reason, attempts, parked_at"
)
# Text compares as BINARY (UTF-8 bytes): code point order, as Python sorts strings.
_SELECT_ALL: Final = f"SELECT {_COLUMNS} FROM dead_letters ORDER BY runner, position"
_SELECT_RUNNER: Final = (
    f"SELECT {_COLUMNS} FROM dead_letters WHERE runner = ? ORDER BY runner, position"
)
_UPSERT: Final = (
    f"INSERT OR REPLACE INTO dead_letters ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_DELETE: Final = "DELETE FROM dead_letters WHERE runner = ? AND position = ?"


def _create(conn: sqlite3.Connection) -> None:
    conn.execute(_CREATE)


def _letter(row: tuple[Any, ...]) -> DeadLetter:
    runner, position, event_id, stream_id, version, type_, reason, attempts, parked_at = row
    return DeadLetter(
        runner=runner,
        position=int(position),
        event_id=uuid.UUID(event_id),
        stream_id=stream_id,
        version=int(version),
        type=type_,
        reason=reason,
        attempts=int(attempts),
        parked_at=parse_iso_utc(parked_at),
    )


@attrs.define(eq=False)
class SqliteDeadLetterStore:
    """A :class:`~engine.stores.base.DeadLetterStore` in a SQLite file.

    Get one from :func:`sqlite_dead_letters`; it shares the store's connections, so it
    lives as long as the store is open.
    """

    _db: SqliteDatabase
    _ready: bool = attrs.field(default=False, init=False)
    _creating: trio.Lock = attrs.field(factory=trio.Lock, init=False)

    async def park(self, letter: DeadLetter) -> None:
        """Record ``letter``, replacing the one of the same ``(runner, position)``.

        Raises:
            ValueError: A name holds NUL or an unpaired surrogate, or ``parked_at`` is
                naive (see :mod:`engine.stores.dead_letter_encoding`).
            BackendRefusedError: SQLite failed.
        """
        kept = storable_letter(letter)
        row = (
            kept.runner,
            kept.position,
            str(kept.event_id),
            kept.stream_id,
            kept.version,
            kept.type,
            kept.reason,
            kept.attempts,
            iso_utc(kept.parked_at),
        )
        await self._ensure_table()
        await self._db.write(lambda conn: conn.execute(_UPSERT, row).rowcount)

    async def dead_letters(self, runner: str | None = None) -> list[DeadLetter]:
        """The parked events (of ``runner``, or of all runners), by runner and position."""
        if runner is not None:
            check_runner(runner)
        await self._ensure_table()

        def query(conn: sqlite3.Connection) -> list[DeadLetter]:
            if runner is None:
                rows = conn.execute(_SELECT_ALL).fetchall()
            else:
                rows = conn.execute(_SELECT_RUNNER, (runner,)).fetchall()
            return [_letter(row) for row in rows]

        return await self._db.read(query)

    async def discard(self, runner: str, position: int) -> bool:
        """Forget one parked event; ``False`` if there was none at that key."""
        check_runner(runner)
        await self._ensure_table()
        deleted: int = await self._db.write(
            lambda conn: conn.execute(_DELETE, (runner, position)).rowcount
        )
        return deleted > 0

    async def _ensure_table(self) -> None:
        # Readers are query-only connections, so even a read needs the table first.
        if self._ready:
            await trio.lowlevel.checkpoint()
            return
        async with self._creating:
            if not self._ready:
                await self._db.write(_create)
                self._ready = True


def sqlite_dead_letters(store: SqliteStore[Any]) -> SqliteDeadLetterStore:
    """The dead-letter store in ``store``'s file (its table is created on first use)."""
    return SqliteDeadLetterStore(store.database)
