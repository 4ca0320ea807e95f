"""What the PostgreSQL event store and the PostgreSQL DCB store share.

Both keep their tables in one quoted schema migrated by a version table, serialize
appends with an advisory lock, group-commit the appends of one process through one
writer task, and track the head from the NOTIFY every append transaction sends. The
pieces here are the parts that mean the same in both:

* :func:`connection_lost` and :func:`translate`: the one place psycopg errors become
  engine errors (each store supplies its own wording).
* :func:`compose`, :func:`advisory_key`, :func:`check_schema_name`,
  :func:`channel_name`, :func:`migrate_schema`, :func:`fetch_one`, :func:`execute`:
  blocking units and SQL composition (they run in the driver's worker threads).
* :class:`HeadTracker`: the LISTEN connection and the known head.
* :class:`GroupRequest` and :class:`GroupWriter`: the group-commit queue and its writer
  loop. How a group is picked (:func:`take_fifo_group` or a store's own) and written stays
  with each store, because those differ in meaning.
"""

from __future__ import annotations

import errno
import hashlib
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from functools import partial
from typing import Any, Generic, TypeVar

import attrs
import psycopg
import trio
from psycopg import sql
from psycopg_pool import PoolClosed, PoolTimeout

from engine.drivers.postgres import PgConnection, PgPool, open_pg_pool, run_pg_listener
from engine.errors import (
    BackendRefusedError,
    BackendUnavailableError,
    EskitError,
    OutcomeUnknownError,
    StorageFullError,
)

__all__ = [
    "GroupRequest",
    "GroupWriter",
    "HeadTracker",
    "advisory_key",
    "channel_name",
    "check_schema_name",
    "compose",
    "connection_lost",
    "execute",
    "fetch_one",
    "migrate_schema",
    "plpgsql_function",
    "take_fifo_group",
    "translate",
]

A = TypeVar("A")
R = TypeVar("R")

_MAX_IDENTIFIER_BYTES = 63


# -- errors -----------------------------------------------------------------------------


def connection_lost(exc: BaseException) -> bool:
    """Whether ``exc`` means the connection (not the statement) failed: lost, refused,
    terminated by the server, or no pooled connection in time."""
    if isinstance(exc, PoolTimeout | PoolClosed):
        return True
    if not isinstance(exc, psycopg.OperationalError):
        return False
    state = exc.sqlstate
    return state is None or state.startswith(("08", "57P"))


#: SQLSTATE ``disk_full``.
_DISK_FULL = "53100"


def translate(exc: BaseException, *, closed: str, retry_hint: str) -> BaseException:
    """Turn a psycopg error into an engine error (others are returned unchanged).

    The PostgreSQL choke point of the backend error policy (docs/runtime.md): a closed
    pool is ``trio.ClosedResourceError``; no connection in time
    :class:`~engine.errors.BackendUnavailableError`; a connection lost or refused while
    a call was in flight :class:`~engine.errors.OutcomeUnknownError`; a full disk
    :class:`~engine.errors.StorageFullError`; any other database error
    :class:`~engine.errors.BackendRefusedError`.

    Args:
        exc: The exception caught around a driver call.
        closed: The message of the ``ClosedResourceError`` for a closed pool.
        retry_hint: How to retry an append in flight when the connection was lost.
    """
    if isinstance(exc, PoolClosed):
        return trio.ClosedResourceError(closed)
    if isinstance(exc, psycopg.errors.DiskFull) or (
        isinstance(exc, OSError) and exc.errno == errno.ENOSPC
    ):
        return StorageFullError(
            f"the PostgreSQL database is full ({exc}): nothing was written; "
            "free disk space, then retry"
        )
    if isinstance(exc, PoolTimeout):
        return BackendUnavailableError(
            "postgres", f"no PostgreSQL connection in time ({exc}); nothing was sent"
        )
    if connection_lost(exc):
        return OutcomeUnknownError(
            "postgres",
            f"PostgreSQL connection lost or unavailable ({exc}); an append in flight may "
            f"or may not have been stored: {retry_hint}",
        )
    if isinstance(exc, psycopg.Error) and exc.sqlstate == _DISK_FULL:
        return StorageFullError(f"PostgreSQL has no room left: {exc}")
    if isinstance(exc, psycopg.Error):
        return BackendRefusedError("postgres", f"PostgreSQL error: {exc}")
    return exc


def write_each_on_failure(
    write: Callable[[Sequence[A]], Sequence[R]],
    group: Sequence[A],
    *,
    alone: Callable[[A, psycopg.Error], R | BaseException] | None = None,
) -> list[R | BaseException]:
    """One group commit (runs in a worker thread): ``write(group)``, one row per request.

    A group that fails as a whole for a reason other than a lost connection is written
    again one request at a time, so that each request gets its own result: a row, or the
    error ``alone(request, error)`` makes of its failure (the error itself by default).

    Raises:
        psycopg.Error: The connection was lost (the caller translates it).
    """
    try:
        return list(write(group))
    except psycopg.Error as exc:
        if connection_lost(exc):
            raise
        if len(group) == 1:
            return [exc if alone is None else alone(group[0], exc)]
    results: list[R | BaseException] = []
    for request in group:
        results.extend(write_each_on_failure(write, [request], alone=alone))
    return results


def translate_opening(exc: BaseException, *, closed: str) -> BaseException:
    """:func:`translate` for errors while a store opens: nothing was applied yet, so a
    server that cannot be reached is :class:`~engine.errors.BackendUnavailableError`."""
    if connection_lost(exc) and not isinstance(exc, PoolClosed):
        return BackendUnavailableError("postgres", f"cannot reach PostgreSQL: {exc}")
    return translate(exc, closed=closed, retry_hint="open the store again")


async def open_migrated_pool(
    stack: AsyncExitStack,
    dsn: str,
    migration: Callable[[PgConnection], object] | None,
    *,
    min_size: int,
    max_size: int,
    name: str,
    closed: str,
) -> PgPool:
    """Open a pool on ``dsn`` into ``stack`` and run ``migration`` on it, if any.

    Raises:
        BackendUnavailableError: The server cannot be reached or refused the login.
        BackendRefusedError: The migration failed (rights, a newer schema...).
    """
    try:
        pool = await stack.enter_async_context(
            open_pg_pool(dsn, min_size=min_size, max_size=max_size, name=name)
        )
        if migration is not None:
            await pool.run(migration)
    except psycopg.Error as exc:
        raise translate_opening(exc, closed=closed) from exc
    return pool


# -- SQL composition and blocking units -------------------------------------------------


def compose(template: str, schema: str) -> bytes:
    """``template`` with ``{s}`` replaced by the quoted ``schema``."""
    return sql.SQL(template).format(s=sql.Identifier(schema)).as_bytes(None)


def advisory_key(namespace: str, purpose: str, schema: str) -> int:
    """A stable signed 64-bit advisory-lock key for ``purpose`` in ``schema``."""
    digest = hashlib.blake2b(f"{namespace}:{purpose}:{schema}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def channel_name(prefix: str, schema: str) -> str:
    """The NOTIFY channel of ``schema``: ``prefix`` and a hash (any schema name fits)."""
    return prefix + hashlib.blake2b(schema.encode(), digest_size=8).hexdigest()


def check_schema_name(schema: str) -> None:
    """Refuse a schema name PostgreSQL would reject or silently truncate.

    Raises:
        ValueError: The name is empty, has a NUL, or is longer than 63 UTF-8 bytes.
    """
    if not isinstance(schema, str) or not schema or "\x00" in schema:
        raise ValueError(f"a schema name must be a non-empty str without NUL, got {schema!r}")
    if len(schema.encode("utf-8")) > _MAX_IDENTIFIER_BYTES:
        raise ValueError(f"a schema name must be at most 63 UTF-8 bytes, got {schema!r}")


def migrate_schema(
    conn: PgConnection,
    *,
    schema: str,
    lock: int,
    table: str,
    migrations: Sequence[Callable[[], list[str]]],
    too_new: Callable[[int], str],
) -> int:
    """Create ``schema`` if missing and apply the missing ``migrations`` (blocking; runs
    in a driver thread), recording each in the version table ``table``. Returns the
    version reached (``len(migrations)``).

    Args:
        conn: A connection outside a transaction.
        schema: The schema (quoted).
        lock: The advisory key serializing concurrent migrators.
        table: The unquoted name of the version table in ``schema``.
        migrations: Each returns the statements of one version, in order.
        too_new: The error message when the table records a later version.

    Raises:
        EskitError: The schema was migrated by a newer eskit.
    """
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", [lock])
        exists = conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", [schema])
        if exists.fetchone() is None:
            conn.execute(compose("CREATE SCHEMA {s}", schema))
        # Check before creating: CREATE ... IF NOT EXISTS needs the CREATE privilege
        # even when there is nothing to create.
        qualified = compose("{s}." + table, schema).decode()
        if conn.execute("SELECT to_regclass(%s)", [qualified]).fetchone() == (None,):
            conn.execute(
                compose(
                    "CREATE TABLE {s}." + table + " (version integer PRIMARY KEY, "
                    "applied_at timestamptz NOT NULL DEFAULT now())",
                    schema,
                )
            )
        row = conn.execute(
            compose("SELECT coalesce(max(version), 0) FROM {s}." + table, schema)
        ).fetchone()
        current = int(row[0]) if row else 0
        if current > len(migrations):
            raise EskitError(too_new(current))
        for version in range(current + 1, len(migrations) + 1):
            for statement in migrations[version - 1]():
                conn.execute(statement.encode())
            conn.execute(
                compose("INSERT INTO {s}." + table + " (version) VALUES (%s)", schema),
                [version],
            )
        return len(migrations)


def plpgsql_function(signature: str, body: str, *, schema: str, lock: int, channel: str) -> str:
    """``CREATE OR REPLACE FUNCTION`` of a PL/pgSQL function in ``schema``.

    Args:
        signature: Name, arguments and ``RETURNS`` clause, ending in a space.
        body: The body, with ``{s}`` (the schema), ``{lock}`` (the append lock's key)
            and ``{channel}`` (the NOTIFY channel) filled in as quoted SQL.
        schema: The schema.
        lock: The advisory key of the append lock.
        channel: The NOTIFY channel.
    """
    text = (
        sql.SQL(body)
        .format(s=sql.Identifier(schema), lock=sql.Literal(lock), channel=sql.Literal(channel))
        .as_string(None)
    )
    # The body is dollar-quoted; pick a tag that the (quoted) schema name cannot end.
    tag, n = "$eskit$", 0
    while tag in text:
        n += 1
        tag = f"$eskit{n}$"
    head = (
        sql.SQL("CREATE OR REPLACE FUNCTION {s}." + signature + "LANGUAGE plpgsql AS ")
        .format(s=sql.Identifier(schema))
        .as_string(None)
    )
    return f"{head}{tag}{text}{tag}"


def fetch_one(query: bytes, params: Sequence[Any], conn: PgConnection) -> tuple[Any, ...] | None:
    """The first row of a query, or ``None``."""
    return conn.execute(query, params).fetchone()


def execute(query: bytes, params: Sequence[Any], conn: PgConnection) -> None:
    """Run a statement for its effect."""
    conn.execute(query, params)


# -- the head, from NOTIFY --------------------------------------------------------------


@attrs.define(eq=False)
class HeadTracker:
    """The highest position a store knows is committed, kept current by its own appends
    and reads and by the NOTIFY (payload: the new head) of every append transaction.

    The LISTEN connection is opened on the first :meth:`wait_above`, as a task of the
    store's nursery.
    """

    _nursery: trio.Nursery
    _dsn: str
    _channel: str
    _application_name: str
    _translate: Callable[[BaseException], BaseException]
    known: int = 0
    _changed: trio.Event = attrs.field(factory=trio.Event)
    _generation: int = 0
    _listening: bool = False
    _lock: trio.Lock = attrs.field(factory=trio.Lock)

    def advance(self, position: int) -> None:
        """Record that ``position`` is committed (waking waiters when it is news)."""
        if position > self.known:
            self.known = position
            self._wake()

    async def wait_above(self, after: int, refresh: Callable[[], Awaitable[int]]) -> None:
        """Return once a position above ``after`` is known to be committed.

        ``refresh`` reads the head from the database; it is called after every
        (re)connection of the listener, since notifications may have been missed.
        """
        await self._ensure_listening()
        checked: int | None = None
        while self.known <= after:
            if checked != self._generation:
                checked = self._generation
                self.advance(await refresh())
            else:
                await self._changed.wait()

    async def _ensure_listening(self) -> None:
        await trio.lowlevel.checkpoint()
        if self._listening:
            return
        async with self._lock:
            if not self._listening:
                try:
                    await self._nursery.start(
                        partial(
                            run_pg_listener,
                            self._dsn,
                            self._channel,
                            self._on_notify,
                            application_name=self._application_name,
                        )
                    )
                except psycopg.Error as exc:
                    raise self._translate(exc) from exc
                self._listening = True

    def _on_notify(self, payload: str | None) -> None:
        if payload is None:
            self._generation += 1
            self._wake()
        elif payload.isdigit():
            self.advance(int(payload))

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()


# -- group commit -----------------------------------------------------------------------


@attrs.define(eq=False)
class GroupRequest(Generic[A, R]):
    """One append waiting for the writer: its arguments, its payload size, and, once the
    writer is done with it, its result (a row or the exception it failed with)."""

    args: A
    size: int
    done: trio.Event = attrs.field(factory=trio.Event)
    result: R | BaseException | None = None
    abandoned: bool = False

    async def wait(self) -> R | BaseException | None:
        """Wait for the writer's result; if the wait is cancelled, the writer skips the
        request unless it has already taken it (then the append may still be stored)."""
        try:
            await self.done.wait()
        finally:
            self.abandoned = True
        return self.result


def take_fifo_group(
    pending: deque[GroupRequest[A, R]], *, max_requests: int, max_bytes: int
) -> list[GroupRequest[A, R]]:
    """Take the next group off ``pending`` in order, within the size limits; appends
    whose caller gave up are dropped."""
    group: list[GroupRequest[A, R]] = []
    size = 0
    while pending:
        request = pending[0]
        if request.abandoned:
            pending.popleft()
            continue
        if group and (len(group) >= max_requests or size + request.size > max_bytes):
            break
        group.append(pending.popleft())
        size += request.size
    return group


@attrs.define(eq=False)
class GroupWriter(Generic[A, R]):
    """The writer task of a store: takes the queued appends in groups and writes each
    group in one call (one transaction) on the pool, then hands each append its result.

    Attributes:
        groups: Calls (transactions) made.
        appends: Appends written (or refused) in those calls.
        largest_group: The most appends one call carried.
    """

    _pool: PgPool
    _take: Callable[[deque[GroupRequest[A, R]]], list[GroupRequest[A, R]]]
    _write: Callable[[Sequence[A], PgConnection], Sequence[R | BaseException]]
    _max_requests: int
    #: The error appenders still waiting when the writer stops get, or ``None`` to leave
    #: them waiting.
    _closed_message: str | None = None
    groups: int = 0
    appends: int = 0
    largest_group: int = 0

    async def run(self, receive: trio.MemoryReceiveChannel[GroupRequest[A, R]]) -> None:
        """Write the appends that arrive on ``receive`` until it ends."""
        pending: deque[GroupRequest[A, R]] = deque()
        group: list[GroupRequest[A, R]] = []
        try:
            async with receive:
                while True:
                    if not pending:
                        try:
                            pending.append(await receive.receive())
                        except trio.EndOfChannel:
                            return
                    while len(pending) < self._max_requests:
                        try:
                            pending.append(receive.receive_nowait())
                        except (trio.WouldBlock, trio.EndOfChannel):
                            break
                    group = self._take(pending)
                    if not group:
                        continue
                    results: Sequence[R | BaseException]
                    try:
                        results = await self._pool.run(
                            partial(self._write, [r.args for r in group])
                        )
                    except Exception as exc:
                        # Every append of the group fails alike; each appender raises it.
                        results = [exc] * len(group)
                    self.groups += 1
                    self.appends += len(group)
                    self.largest_group = max(self.largest_group, len(group))
                    for request, result in zip(group, results, strict=True):
                        request.result = result
                        request.done.set()
                    group = []
        finally:
            if self._closed_message is not None:
                self._fail_leftovers([*group, *pending], receive, self._closed_message)

    @staticmethod
    def _fail_leftovers(
        leftovers: list[GroupRequest[A, R]],
        receive: trio.MemoryReceiveChannel[GroupRequest[A, R]],
        message: str,
    ) -> None:
        # Closing: appenders still waiting (in tasks that outlive the store) must not
        # wait forever. A group cut off mid-call may or may not have been stored.
        while True:
            try:
                leftovers.append(receive.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                break
        for request in leftovers:
            if not request.done.is_set():
                request.result = trio.ClosedResourceError(message)
                request.done.set()


@attrs.frozen
class GroupCommit(Generic[A, R]):
    """A running group-commit writer: where appends are queued, and the head they move.

    Attributes:
        writer: The writer task's statistics.
        requests: Queue an append here (the writer answers on the request).
        head: The store's committed head, with its LISTEN connection.
    """

    writer: GroupWriter[A, R]
    requests: trio.MemorySendChannel[GroupRequest[A, R]]
    head: HeadTracker


@asynccontextmanager
async def open_group_commit(
    pool: PgPool,
    take: Callable[[deque[GroupRequest[A, R]]], list[GroupRequest[A, R]]],
    write: Callable[[Sequence[A], PgConnection], Sequence[R | BaseException]],
    *,
    max_requests: int,
    buffer: int,
    closed_message: str,
    dsn: str,
    channel: str,
    listen_name: str,
    translate: Callable[[BaseException], BaseException],
) -> AsyncIterator[GroupCommit[A, R]]:
    """Run a store's group-commit writer (and, once waited on, its LISTEN task).

    Resource handling:
        Owns a nursery with the writer and the head's LISTEN task; on exit the queue
        closes (appenders still waiting get ``trio.ClosedResourceError`` with
        ``closed_message``) and both tasks are cancelled.
    """
    async with trio.open_nursery() as nursery:
        send, receive = trio.open_memory_channel[GroupRequest[A, R]](buffer)
        writer = GroupWriter(pool, take, write, max_requests, closed_message=closed_message)
        head = HeadTracker(nursery, dsn, channel, listen_name, translate)
        nursery.start_soon(writer.run, receive)
        try:
            yield GroupCommit(writer, send, head)
        finally:
            send.close()
            nursery.cancel_scope.cancel()
