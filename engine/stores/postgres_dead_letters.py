"""Dead letters in a PostgreSQL store's schema: they survive restarts with the events.

Usage::

    async with open_postgres_store(dsn, codec, schema="eskit") as store:
        dead_letters = postgres_dead_letters(store)
        runner = ProjectionRunner(..., dead_letters=dead_letters)

The table ``dead_letters`` lives in the store's schema (quoted, so any schema name
works) and is created on first use with ``CREATE TABLE IF NOT EXISTS`` under a
transaction-scoped advisory lock, so concurrent first users (in any process) do not race;
it is not one of the store's numbered migrations. Each operation is one transaction on
the store's pool, reached through :meth:`PostgresStore.transactional
<engine.stores.postgres.PostgresStore.transactional>` (the same pool, schema and error
translation as the store's read-model transactions: psycopg errors become
:class:`~engine.errors.EskitError`, a lost connection :class:`~engine.errors.OutcomeUnknownError`).
Parking is rare, so the extra thread hop of a transaction costs nothing that matters.

Runners are listed in code point order (``COLLATE "C"``, UTF-8 byte order), whatever the
database's collation, as every other backend lists them. What is kept of a letter is
shared by every durable backend: see :mod:`engine.stores.dead_letter_encoding`.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any, Final, TypeVar

import attrs
from psycopg import sql

from engine.drivers.postgres import PgConnection
from engine.stores.base import DeadLetter
from engine.stores.dead_letter_encoding import check_runner, storable_letter
from engine.stores.pg_support import advisory_key
from engine.stores.postgres import PostgresStore
from engine.stores.postgres_transactional import PostgresTransactionalStore

__all__ = ["TABLE", "PostgresDeadLetterStore", "postgres_dead_letters"]

T = TypeVar("T")

#: The table's name in the store's schema.
TABLE: Final = "dead_letters"
_COLUMNS: Final = (
    "runner, position, event_id, stream_id, version, type, reason, attempts, parked_at"
)


@attrs.frozen
class _Queries:
    schema: str
    create_lock: int
    create: sql.Composed
    upsert: sql.Composed
    select_all: sql.Composed
    select_runner: sql.Composed
    delete: sql.Composed

    @classmethod
    def for_schema(cls, schema: str) -> _Queries:
        table = sql.Identifier(schema, TABLE)
        columns = sql.SQL(_COLUMNS)
        select = sql.SQL("SELECT {columns} FROM {table}").format(columns=columns, table=table)
        order = sql.SQL(' ORDER BY runner COLLATE "C", position')
        return cls(
            schema=schema,
            create_lock=advisory_key("eskit", "dead_letters", schema),
            create=sql.SQL(
                "CREATE TABLE IF NOT EXISTS {table} ("
                " runner text NOT NULL,"
                " position bigint NOT NULL,"
                " event_id uuid NOT NULL,"
                " stream_id text NOT NULL,"
                " version bigint NOT NULL,"
                " type text NOT NULL,"
                " reason text NOT NULL,"
                " attempts integer NOT NULL,"
                " parked_at timestamptz NOT NULL,"
                " PRIMARY KEY (runner, position))"
            ).format(table=table),
            upsert=sql.SQL(
                "INSERT INTO {table} ({columns}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
                " ON CONFLICT (runner, position) DO UPDATE SET event_id = EXCLUDED.event_id,"
                " stream_id = EXCLUDED.stream_id, version = EXCLUDED.version,"
                " type = EXCLUDED.type, reason = EXCLUDED.reason,"
                " attempts = EXCLUDED.attempts, parked_at = EXCLUDED.parked_at"
            ).format(table=table, columns=columns),
            select_all=select + order,
            select_runner=select + sql.SQL(" WHERE runner = %s") + order,
            delete=sql.SQL("DELETE FROM {table} WHERE runner = %s AND position = %s").format(
                table=table
            ),
        )


# -- blocking units of work (each runs inside one transaction) --------------------------


def _ensure_table(q: _Queries, conn: PgConnection) -> None:
    # Look first: CREATE ... IF NOT EXISTS needs the CREATE privilege even when the
    # table is there already.
    found = conn.execute("SELECT to_regclass(%s)", [_qualified(q.schema)]).fetchone()
    if found is None or found[0] is None:
        conn.execute("SELECT pg_advisory_xact_lock(%s)", [q.create_lock])
        conn.execute(q.create)


def _qualified(schema: str) -> str:
    return sql.SQL("{}").format(sql.Identifier(schema, TABLE)).as_string(None)


def _park(q: _Queries, ensure: bool, row: tuple[Any, ...], conn: PgConnection) -> None:
    if ensure:
        _ensure_table(q, conn)
    conn.execute(q.upsert, row)


def _select(q: _Queries, ensure: bool, runner: str | None, conn: PgConnection) -> list[DeadLetter]:
    if ensure:
        _ensure_table(q, conn)
    if runner is None:
        rows = conn.execute(q.select_all).fetchall()
    else:
        rows = conn.execute(q.select_runner, [runner]).fetchall()
    return [
        DeadLetter(
            runner=runner_,
            position=int(position),
            event_id=event_id,
            stream_id=stream_id,
            version=int(version),
            type=type_,
            reason=reason,
            attempts=int(attempts),
            parked_at=parked_at,
        )
        for runner_, position, event_id, stream_id, version, type_, reason, attempts, parked_at in (
            rows
        )
    ]


def _delete(q: _Queries, ensure: bool, runner: str, position: int, conn: PgConnection) -> int:
    if ensure:
        _ensure_table(q, conn)
    return conn.execute(q.delete, [runner, position]).rowcount


@attrs.define(eq=False)
class PostgresDeadLetterStore:
    """A :class:`~engine.stores.base.DeadLetterStore` in a PostgreSQL store's schema.

    Get one from :func:`postgres_dead_letters`; it uses the store's pool, so it lives as
    long as the store is open.
    """

    _database: PostgresTransactionalStore
    _queries: _Queries
    _ready: bool = attrs.field(default=False, init=False)

    @property
    def schema(self) -> str:
        """The schema of the ``dead_letters`` table."""
        return self._queries.schema

    async def park(self, letter: DeadLetter) -> None:
        """Record ``letter``, replacing the one of the same ``(runner, position)``.

        Raises:
            ValueError: A name holds NUL or an unpaired surrogate, or ``parked_at`` is
                naive (see :mod:`engine.stores.dead_letter_encoding`).
            BackendRefusedError: A database error.
            OutcomeUnknownError: The connection was lost (the letter may or may not
                be stored; parking it again is harmless).
        """
        kept = storable_letter(letter)
        row = (
            kept.runner,
            kept.position,
            kept.event_id,
            kept.stream_id,
            kept.version,
            kept.type,
            kept.reason,
            kept.attempts,
            kept.parked_at,
        )
        await self._run(partial(_park, self._queries, not self._ready, row))

    async def dead_letters(self, runner: str | None = None) -> list[DeadLetter]:
        """The parked events (of ``runner``, or of all runners), by runner and position."""
        if runner is not None:
            check_runner(runner)
        return await self._run(partial(_select, self._queries, not self._ready, runner))

    async def discard(self, runner: str, position: int) -> bool:
        """Forget one parked event; ``False`` if there was none at that key."""
        check_runner(runner)
        deleted = await self._run(
            partial(_delete, self._queries, not self._ready, runner, position)
        )
        return deleted > 0

    async def _run(self, fn: Callable[[PgConnection], T]) -> T:
        async with self._database.transaction() as transaction:
            result = await transaction.run(fn)
        self._ready = True
        return result


def postgres_dead_letters(store: PostgresStore[Any]) -> PostgresDeadLetterStore:
    """The dead-letter store in ``store``'s schema (its table is created on first use)."""
    database = store.transactional()
    return PostgresDeadLetterStore(database, _Queries.for_schema(database.schema))
