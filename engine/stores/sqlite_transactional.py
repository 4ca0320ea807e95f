"""Read models in the SQLite store's file, committed with their checkpoint.

:class:`SqliteTransactionalStore` is the :class:`~engine.stores.base.SqlDatabase` (and
so the :class:`~engine.runners.base.TransactionalStore`) of a
:class:`~engine.stores.sqlite.SqliteStore`: a
:class:`~engine.runners.base.TransactionalProjection` writes its read model through the
:class:`SqliteTransaction` it is handed, and the runner's checkpoint (in the store's
``checkpoints`` table, with the same compare-and-set) commits in the same SQLite
transaction, so each event's effect is committed exactly once.

Collect, then write: SQLite has one writer, and the store serves it with one thread that
group-commits appends (:mod:`engine.drivers.sqlite`). Holding that writer while a read
model's Python code runs between statements would stop every append for the length of a
batch, so a transaction here *collects* its statements and its checkpoint, and the block's
end hands them to the writer as one job: one hop, one savepoint, committed with whatever
appends share the writer's transaction. The price: a statement's error surfaces when the
block ends, and :meth:`SqliteTransaction.fetch` reads committed data, not the batch's own
writes (write read models as upserts: ``SET n = n + excluded.n``).

Guard: while a read model's statements run, an authorizer refuses transaction control
(``BEGIN``/``COMMIT``/``SAVEPOINT``...), ``ATTACH``, pragmas that set a value, triggers,
and any write to eskit's own tables (the event log, checkpoints, snapshots...). A refused
statement fails the job like any other error: nothing of the block is written.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, Final

import attrs
import trio

from engine.drivers.sqlite import SqliteDatabase
from engine.errors import CheckpointConflictError, EskitError

__all__ = ["ReadModelStatementError", "SqliteTransaction", "SqliteTransactionalStore"]

#: Tables a read model may read but never write: the event store's, the DCB store's,
#: the dead letters and the migration records.
PROTECTED_TABLES: Final = frozenset(
    {
        "streams",
        "events",
        "idempotency_keys",
        "snapshots",
        "checkpoints",
        "dead_letters",
        "dcb_events",
        "dcb_tags",
        "_sqlite_migrations",
        "sqlite_sequence",
        "sqlite_stat1",
        "sqlite_stat4",
    }
)

_ALWAYS_DENIED: Final = frozenset(
    {
        sqlite3.SQLITE_TRANSACTION,
        sqlite3.SQLITE_SAVEPOINT,
        sqlite3.SQLITE_ATTACH,
        sqlite3.SQLITE_DETACH,
        sqlite3.SQLITE_CREATE_TRIGGER,
        sqlite3.SQLITE_CREATE_TEMP_TRIGGER,
        sqlite3.SQLITE_DROP_TRIGGER,
        sqlite3.SQLITE_DROP_TEMP_TRIGGER,
        sqlite3.SQLITE_CREATE_VTABLE,
        sqlite3.SQLITE_DROP_VTABLE,
    }
)
# Actions whose first argument is the table written.
_WRITES_ARG1: Final = frozenset(
    {
        sqlite3.SQLITE_INSERT,
        sqlite3.SQLITE_UPDATE,
        sqlite3.SQLITE_DELETE,
        sqlite3.SQLITE_DROP_TABLE,
        sqlite3.SQLITE_CREATE_TABLE,
    }
)
# Actions whose second argument is the table changed.
_WRITES_ARG2: Final = frozenset(
    {
        sqlite3.SQLITE_ALTER_TABLE,
        sqlite3.SQLITE_CREATE_INDEX,
        sqlite3.SQLITE_DROP_INDEX,
    }
)
_STATEMENT_SHOWN: Final = 200


def _protected(table: str | None) -> bool:
    if table is None:
        return False
    # CREATE/DROP TABLE write sqlite_master (SQLite itself refuses direct writes there).
    return table.lower() in PROTECTED_TABLES


def _guard(action: int, arg1: str | None, arg2: str | None, _db: str | None, _t: str | None) -> int:
    """The authorizer of a read model's statements."""
    if action in _ALWAYS_DENIED:
        return sqlite3.SQLITE_DENY
    if action == sqlite3.SQLITE_PRAGMA and arg2 is not None:
        return sqlite3.SQLITE_DENY
    if action in _WRITES_ARG1 and _protected(arg1):
        return sqlite3.SQLITE_DENY
    if action in _WRITES_ARG2 and _protected(arg2):
        return sqlite3.SQLITE_DENY
    return sqlite3.SQLITE_OK


class ReadModelStatementError(EskitError):
    """A read model's SQL statement failed (or was refused by the guard).

    Nothing of the transaction was written.

    Attributes:
        statement: The statement (shortened to 200 characters).
        message: SQLite's message.
    """

    code = "read_model_statement_failed"

    def __init__(self, statement: str, message: str) -> None:
        super().__init__(statement, message)
        if len(statement) > _STATEMENT_SHOWN:
            statement = statement[:_STATEMENT_SHOWN] + "…"
        self.statement = statement
        self.message = message

    def __str__(self) -> str:
        return f"read-model statement failed: {self.message} (in {self.statement!r})"


#: The range of SQLite's INTEGER (and PostgreSQL's bigint).
INT64_MIN: Final = -(2**63)
INT64_MAX: Final = 2**63 - 1


def _check_params(query: str, params: Any) -> Any:
    """``params`` copied, or :class:`ReadModelStatementError` for an integer SQLite cannot
    keep as an integer (the sqlite3 module refuses it with a bare ``OverflowError``;
    PostgreSQL refuses it with "bigint out of range"): a read model's column never
    silently changes its meaning."""
    copied = dict(params) if isinstance(params, Mapping) else tuple(params)
    items = copied.items() if isinstance(copied, dict) else enumerate(copied, 1)
    for key, value in items:
        if type(value) is int and not INT64_MIN <= value <= INT64_MAX:
            raise ReadModelStatementError(
                query,
                f"parameter {key}: the integer {value} is outside the 64-bit range of "
                f"SQL integers ({INT64_MIN} .. {INT64_MAX})",
            )
    return copied


#: One queued statement: (query, rows of parameters, many?).
_Step = tuple[str, Any, bool]


def _apply(
    steps: list[_Step],
    checkpoint: tuple[str, int, int | None] | None,
    conn: sqlite3.Connection,
) -> None:
    """The job: the read model's statements under the guard, then the checkpoint."""
    if steps:
        conn.set_authorizer(_guard)
        try:
            for query, params, many in steps:
                try:
                    if many:
                        conn.executemany(query, params)
                    else:
                        conn.execute(query, params)
                except sqlite3.Error as exc:
                    if not conn.in_transaction:
                        raise  # the whole transaction is lost: the driver reports it
                    raise ReadModelStatementError(query, str(exc)) from exc
        finally:
            conn.set_authorizer(None)
    if checkpoint is not None:
        name, position, expected = checkpoint
        row = conn.execute("SELECT position FROM checkpoints WHERE name = ?", (name,)).fetchone()
        actual = None if row is None else int(row[0])
        if actual != expected:
            raise CheckpointConflictError(name, expected, actual)
        conn.execute(
            "INSERT INTO checkpoints (name, position) VALUES (?, ?)"
            " ON CONFLICT (name) DO UPDATE SET position = excluded.position",
            (name, position),
        )


def _fetch(query: str, params: Sequence[Any], conn: sqlite3.Connection) -> list[tuple[Any, ...]]:
    return [tuple(row) for row in conn.execute(query, params).fetchall()]


def _load_checkpoint(name: str, conn: sqlite3.Connection) -> int | None:
    row = conn.execute("SELECT position FROM checkpoints WHERE name = ?", (name,)).fetchone()
    return None if row is None else int(row[0])


@attrs.define(eq=False)
class SqliteTransaction:
    """One open transaction: statements and a checkpoint, written together at the end.

    A :class:`~engine.stores.base.SqlTransaction` (and
    :class:`~engine.stores.base.CheckpointStore`) valid only inside its
    ``transaction()`` block. Parameters use ``?`` (or ``:name``).
    """

    _db: SqliteDatabase
    _steps: list[_Step] = attrs.field(factory=list)
    _checkpoint: tuple[str, int, int | None] | None = None
    _open: bool = True

    dialect = "sqlite"
    placeholder = "?"

    def _check_open(self) -> None:
        if not self._open:
            raise RuntimeError("the SQLite transaction has ended")

    async def execute(self, query: str, params: Sequence[Any] = ()) -> None:
        """Queue one statement (run, with the others, when the block ends)."""
        self._check_open()
        # Copied now: the caller may reuse its list before the block ends.
        self._steps.append((query, _check_params(query, params), False))
        await trio.lowlevel.checkpoint()

    async def executemany(self, query: str, rows: Iterable[Sequence[Any]]) -> None:
        """Queue one statement for each row of parameters."""
        self._check_open()
        self._steps.append((query, [_check_params(query, row) for row in rows], True))
        await trio.lowlevel.checkpoint()

    async def fetch(self, query: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Rows of one query over *committed* data (not this block's queued writes)."""
        self._check_open()
        return await self._db.read(partial(_fetch, query, _check_params(query, params)))

    async def load_checkpoint(self, name: str) -> int | None:
        """The committed position of ``name`` (a save queued in this block not included)."""
        self._check_open()
        return await self._db.read(partial(_load_checkpoint, name))

    async def save_checkpoint(self, name: str, position: int, *, expected: int | None) -> None:
        """Save ``position`` for ``name`` with the block's statements, if the stored value
        is then still ``expected``; else the block raises
        :class:`~engine.errors.CheckpointConflictError` and writes nothing.

        Raises:
            ValueError: ``position`` is negative.
            RuntimeError: A checkpoint is queued already in this block.
        """
        self._check_open()
        if position < 0:
            raise ValueError(f"a checkpoint position must be >= 0, got {position}")
        if self._checkpoint is not None:
            raise RuntimeError("one checkpoint per transaction")
        self._checkpoint = (name, position, expected)
        await trio.lowlevel.checkpoint()

    def _job(self) -> Callable[[sqlite3.Connection], None] | None:
        if not self._steps and self._checkpoint is None:
            return None
        return partial(_apply, self._steps, self._checkpoint)


@attrs.define(eq=False)
class SqliteTransactionalStore:
    """The :class:`~engine.stores.base.SqlDatabase` of a SQLite store's file (get one from
    :meth:`SqliteStore.transactional <engine.stores.sqlite.SqliteStore.transactional>`).

    Transactions cost nothing until they end: each one is then a single job of the
    store's writer, group-committed with concurrent appends.
    """

    _db: SqliteDatabase

    dialect = "sqlite"
    placeholder = "?"

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[SqliteTransaction]:
        """Collect statements; write them and the checkpoint when the block ends normally.

        An exception or a cancellation inside the block writes nothing. A cancellation
        while the job waits for the writer drops it; once it runs, the block waits for
        its outcome (it may commit).

        Raises:
            ReadModelStatementError: A statement failed or was refused (nothing written).
            CheckpointConflictError: Another writer saved the checkpoint (nothing written).
            BackendRefusedError: SQLite failed (disk full, I/O error...).
        """
        transaction = SqliteTransaction(self._db)
        try:
            yield transaction
        finally:
            transaction._open = False
        job = transaction._job()
        if job is not None:
            await self._db.write(job)
        else:
            await trio.lowlevel.checkpoint()

    async def fetch(self, query: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Rows of one query over committed data, on a reader connection."""
        return await self._db.read(partial(_fetch, query, _check_params(query, params)))

    async def ensure_schema(self, *statements: str) -> None:
        """Run DDL statements in one writer job (the single writer serializes them with
        every other process's), under the same guard as a read model's statements.

        Raises:
            ReadModelStatementError: A statement failed or was refused (none applied).
        """
        await self._db.write(partial(_apply, [(s, (), False) for s in statements], None))
