"""Read models in the PostgreSQL store's database, committed with their checkpoint.

:class:`PostgresTransactionalStore` is the :class:`~engine.runners.base.TransactionalStore`
of a :class:`~engine.stores.postgres.PostgresStore`: a
:class:`~engine.runners.base.TransactionalProjection` writes its read model through the
:class:`PostgresTransaction` it is handed, and the runner saves its checkpoint (in the
store's ``checkpoints`` table, with the same compare-and-set) through the same
transaction, so each event's effect is committed exactly once.

How a transaction holds its connection: the driver lends a pooled connection only for
one blocking unit of work (:meth:`PgPool.run <engine.drivers.postgres.PgPool.run>`), so
the unit here *is* the transaction. It opens ``BEGIN``, then takes statements from a
Trio memory channel (``trio.from_thread``) until it is told to commit or roll back. Each
:meth:`PostgresTransaction.execute` is one hop to that worker thread and back; the
thread is joined before ``transaction()`` exits.

Ending: leaving the block normally commits (a failed ``COMMIT`` raises from the block);
an exception or a cancellation rolls back, shielded and bounded by ``cancel_grace``. A
statement still running then is cancelled on the server at once.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, TypeVar

import attrs
import outcome
import psycopg
import trio
from psycopg import sql

from engine.drivers.postgres import DEFAULT_CANCEL_GRACE, PgConnection, PgPool
from engine.errors import CheckpointConflictError, OutcomeUnknownError
from engine.stores.pg_support import translate
from engine.stores.postgres_sql import Queries, save_checkpoint

__all__ = ["Params", "PostgresTransaction", "PostgresTransactionalStore", "Query"]

T = TypeVar("T")

#: A statement: text, or composed with :mod:`psycopg.sql` (for identifiers).
Query = str | bytes | sql.SQL | sql.Composed
#: Statement parameters as psycopg takes them.
Params = Sequence[Any] | Mapping[str, Any] | None


def _translate(exc: BaseException) -> BaseException:
    """The one place this adapter turns psycopg errors into engine errors."""
    return translate(
        exc,
        closed="the PostgreSQL store is closed",
        retry_hint="the transaction was rolled back, unless the connection was lost "
        "during its commit",
    )


@attrs.define(eq=False)
class _Job:
    """One blocking unit for the transaction's thread, and its result."""

    fn: Callable[[PgConnection], Any]
    done: trio.Event = attrs.field(factory=trio.Event)
    result: outcome.Outcome[Any] | None = None

    def finish(self, result: outcome.Outcome[Any]) -> None:
        """Runs in the Trio thread (called from the worker thread)."""
        self.result = result
        self.done.set()


class _End:
    """How the transaction's thread is told to stop."""

    def __init__(self, commit: bool) -> None:
        self.commit = commit


_COMMIT = _End(commit=True)
_ROLLBACK = _End(commit=False)


def _search_path(schema: str, conn: PgConnection) -> None:
    """Put the store's schema first for this transaction only (``SET LOCAL``)."""
    path = sql.SQL("{}, public").format(sql.Identifier(schema)).as_string(conn)
    conn.execute("SELECT set_config('search_path', %s, true)", [path])


def _serve(
    schema: str, receive: trio.MemoryReceiveChannel[_Job | _End], conn: PgConnection
) -> None:
    """The transaction, in a worker thread: run jobs until told to commit or roll back.

    Any exception (a lost Trio run included) leaves ``conn.transaction()`` and so rolls
    back; ``psycopg.Rollback`` rolls back quietly.
    """
    with conn.transaction():
        _search_path(schema, conn)
        while True:
            job = trio.from_thread.run(receive.receive)
            if isinstance(job, _End):
                if job.commit:
                    return
                raise psycopg.Rollback()
            result = outcome.capture(job.fn, conn)
            trio.from_thread.run_sync(job.finish, result)


def _execute(query: Query, params: Params, conn: PgConnection) -> None:
    conn.execute(query, params)


def _executemany(query: Query, rows: list[Any], conn: PgConnection) -> None:
    with conn.cursor() as cursor:
        cursor.executemany(query, rows)


def _fetch(query: Query, params: Params, conn: PgConnection) -> list[tuple[Any, ...]]:
    return conn.execute(query, params).fetchall()


def _ensure_schema(schema: str, statements: Sequence[str], conn: PgConnection) -> None:
    with conn.transaction():
        # Concurrent CREATE ... IF NOT EXISTS can still collide in the catalog.
        conn.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", [f"eskit.ddl:{schema}"]
        )
        _search_path(schema, conn)
        for statement in statements:
            conn.execute(statement)


def _fetch_committed(
    schema: str, query: Query, params: Params, conn: PgConnection
) -> list[tuple[Any, ...]]:
    with conn.transaction():
        _search_path(schema, conn)
        return conn.execute(query, params).fetchall()


def _load_checkpoint(q: Queries, name: str, conn: PgConnection) -> int | None:
    row = conn.execute(q.load_checkpoint, [name]).fetchone()
    return None if row is None else int(row[0])


@attrs.define(eq=False)
class PostgresTransaction:
    """One open transaction: the read model's statements and the runner's checkpoint.

    A :class:`~engine.stores.base.SqlTransaction` (and so a
    :class:`~engine.stores.base.CheckpointStore`) bound to the transaction, whose
    ``search_path`` starts with the store's schema: unqualified table names are the
    store's. Use it from one task at a time, and only inside its ``transaction()`` block.
    """

    _queries: Queries
    _send: trio.MemorySendChannel[_Job | _End]
    _serving: _Serving

    dialect = "postgresql"
    placeholder = "%s"

    async def run(self, fn: Callable[[PgConnection], T]) -> T:
        """Run ``fn(connection)`` in the transaction's worker thread (for bulk work,
        such as ``cursor.executemany``); ``fn`` must not commit or roll back.

        Raises:
            BackendRefusedError: A database error (the transaction must then be left: it rolls
                back).
            OutcomeUnknownError: The connection was lost.
        """
        if self._serving.done.is_set():
            await trio.lowlevel.checkpoint()
            raise OutcomeUnknownError("postgres", "the PostgreSQL transaction has ended")
        job = _Job(fn)
        self._serving.pending.add(job)
        self._send.send_nowait(job)
        await job.done.wait()
        # A cancelled wait leaves the job pending: the rollback then stops it at once.
        self._serving.pending.discard(job)
        assert job.result is not None
        try:
            value: T = job.result.unwrap()
        except psycopg.Error as exc:
            raise _translate(exc) from exc
        return value

    async def execute(self, query: Query, params: Params = None) -> None:
        """Run one statement (identifiers composed with :mod:`psycopg.sql`)."""
        await self.run(partial(_execute, query, params))

    async def executemany(self, query: Query, rows: Iterable[Params]) -> None:
        """Run one statement once per row of parameters (pipelined by psycopg)."""
        await self.run(partial(_executemany, query, list(rows)))

    async def fetch(self, query: Query, params: Params = None) -> list[tuple[Any, ...]]:
        """Run one query and return all its rows (this transaction's writes included)."""
        return await self.run(partial(_fetch, query, params))

    async def load_checkpoint(self, name: str) -> int | None:
        """The position of ``name`` as this transaction sees it, or ``None``."""
        return await self.run(partial(_load_checkpoint, self._queries, name))

    async def save_checkpoint(self, name: str, position: int, *, expected: int | None) -> None:
        """Save ``position`` for ``name`` in this transaction if the stored value is
        still ``expected`` (a concurrent transaction's save is waited for, then seen).

        Raises:
            CheckpointConflictError: Another writer saved since ``expected`` was read.
            ValueError: ``position`` is negative.
        """
        ok, actual = await self.run(
            partial(save_checkpoint, self._queries, name, position, expected)
        )
        if not ok:
            raise CheckpointConflictError(name, expected, actual)
        if position < 0:
            raise ValueError(f"a checkpoint position must be >= 0, got {position}")


@attrs.define(eq=False)
class _Serving:
    scope: trio.CancelScope = attrs.field(factory=lambda: trio.CancelScope(shield=True))
    done: trio.Event = attrs.field(factory=trio.Event)
    error: BaseException | None = None
    cancelled: bool = False
    # Jobs handed over and not answered: failed at once if the thread ends without them.
    pending: set[_Job] = attrs.field(factory=set)

    def fail_pending(self) -> None:
        error = self.error or OutcomeUnknownError(
            "postgres", "the PostgreSQL transaction has ended"
        )
        for job in list(self.pending):
            if not job.done.is_set():
                job.finish(outcome.Error(error))


@attrs.define(eq=False)
class PostgresTransactionalStore:
    """A :class:`~engine.runners.base.TransactionalStore` in a PostgreSQL store's
    database and schema (get one from :meth:`PostgresStore.transactional
    <engine.stores.postgres.PostgresStore.transactional>`).

    Each transaction holds one pooled connection (and its worker thread) until it ends.
    """

    _pool: PgPool
    _queries: Queries
    cancel_grace: float = DEFAULT_CANCEL_GRACE

    dialect = "postgresql"
    placeholder = "%s"

    @property
    def schema(self) -> str:
        """The store's schema (its ``checkpoints`` table is here)."""
        return self._queries.schema

    async def fetch(self, query: Query, params: Params = None) -> list[tuple[Any, ...]]:
        """Rows of one query over committed data, with the store's schema first on the
        ``search_path`` (for a read model's queries)."""
        try:
            return await self._pool.run(partial(_fetch_committed, self.schema, query, params))
        except psycopg.Error as exc:
            raise _translate(exc) from exc

    async def ensure_schema(self, *statements: str) -> None:
        """Run DDL statements in one transaction, in the store's schema, under an advisory
        lock so that engines starting together do not race on the catalog."""
        try:
            await self._pool.run(partial(_ensure_schema, self.schema, statements))
        except psycopg.Error as exc:
            raise _translate(exc) from exc

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[PostgresTransaction]:
        """Open a transaction; commit on normal exit, roll back otherwise.

        Raises:
            BackendRefusedError: The commit failed (nothing was committed).
            OutcomeUnknownError: The connection was lost; if during the commit,
                the transaction may or may not have committed.
        """
        send, receive = trio.open_memory_channel[_Job | _End](math.inf)
        serving = _Serving()
        transaction = PostgresTransaction(self._queries, send, serving)
        # The block's own exception is raised after the nursery, unwrapped: callers
        # (the runner's error policy) see exactly what their handler raised.
        failure: BaseException | None = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._serve, receive, serving)
            try:
                yield transaction
            except BaseException as exc:
                failure = exc
                send.send_nowait(_ROLLBACK)
                if serving.pending:
                    serving.scope.cancel()  # the driver cancels the statement on the server
                with trio.move_on_after(self.cancel_grace, shield=True):
                    await serving.done.wait()
                serving.scope.cancel()
            else:
                send.send_nowait(_COMMIT)
                try:
                    await serving.done.wait()
                except trio.Cancelled as exc:
                    # The COMMIT is on its way: learn how it ended before leaving.
                    failure = exc
                    with trio.move_on_after(self.cancel_grace, shield=True):
                        await serving.done.wait()
                    serving.scope.cancel()
        if failure is not None:
            raise failure
        if serving.error is not None:
            raise _translate(serving.error) from serving.error
        if serving.cancelled:
            raise OutcomeUnknownError(
                "postgres",
                "the PostgreSQL commit did not finish in time; it may or may not have committed",
            )

    async def _serve(
        self, receive: trio.MemoryReceiveChannel[_Job | _End], serving: _Serving
    ) -> None:
        try:
            with serving.scope:
                await self._pool.run(partial(_serve, self.schema, receive))
            serving.cancelled = serving.scope.cancelled_caught
        except Exception as exc:  # handed to the transaction's owner
            serving.error = exc
        finally:
            serving.done.set()
            serving.fail_pending()
