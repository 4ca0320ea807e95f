"""The PostgreSQL driver: the one place psycopg connections are opened, bridged to Trio
and closed.

Three resources:

* :func:`open_pg_pool` wraps a synchronous :class:`psycopg_pool.ConnectionPool`. Every
  :meth:`PgPool.run` call hands one whole unit of work (a function of a connection: a
  query, a transaction, a batch) to a worker thread, so the bridge is crossed once per
  unit, never once per row or statement. A :class:`trio.CapacityLimiter` as large as
  the pool bounds the threads.
* :func:`run_pg_listener` is a service that LISTENs on one channel and reports
  notifications; it waits for the socket with :func:`trio.lowlevel.wait_readable`, so it
  holds no thread while idle, and reconnects on its own.
* :func:`open_pg_session` holds one dedicated connection outside any pool, for state
  that lives in a session (advisory locks): its statements run one at a time, each in a
  worker thread, and are never abandoned half-way (a statement that outlives its
  timeout breaks the session, which then shuts its socket down).

Why threads and not async psycopg under trio-asyncio: measured on the project's 2-core
VM, ``SELECT 1`` through ``trio.to_thread.run_sync`` ran at 4.2k/s and through
trio-asyncio at 4.4k/s: no real difference, and the thread bridge needs neither a
process-wide asyncio policy nor import-order care. Both cost far more than the query, so
callers batch (the PostgreSQL store group-commits concurrent appends into one call).

Cancellation: a cancelled :meth:`PgPool.run` asks the server to cancel the running query
and waits (shielded, bounded by ``cancel_grace``) for the worker thread to finish, so
no unit of work outlives its caller unnoticed. A call that had not started yet never
starts.

Errors: psycopg exceptions pass through unchanged; each adapter translates them in one
place.
"""

from __future__ import annotations

import contextlib
import enum
import os
import select
import socket
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, NoReturn, TypeVar

import attrs
import psycopg
import trio
from psycopg import sql
from psycopg_pool import ConnectionPool

from engine.groups import unwrap_lone_errors

__all__ = [
    "DEFAULT_CANCEL_GRACE",
    "DEFAULT_CLOSE_GRACE",
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_MAX_POOL_SIZE",
    "DEFAULT_MIN_POOL_SIZE",
    "PgConnection",
    "PgPool",
    "PgPoolStatistics",
    "PgSession",
    "open_pg_pool",
    "open_pg_session",
    "run_pg_listener",
]

T = TypeVar("T")

#: A psycopg connection as the driver hands it to a unit of work (autocommit, UTC).
PgConnection = psycopg.Connection[Any]

DEFAULT_MIN_POOL_SIZE = 1
DEFAULT_MAX_POOL_SIZE = 8
#: Seconds to wait for the first connection and, later, for a free pooled connection.
DEFAULT_CONNECT_TIMEOUT = 30.0
#: Seconds a cancelled call waits for the server to abandon its query.
DEFAULT_CANCEL_GRACE = 5.0
#: Seconds the pool may take to close its connections and join its threads.
DEFAULT_CLOSE_GRACE = 5.0
#: Reconnection delays of the listener: first, and the cap of the doubling.
LISTENER_RETRY_DELAY = 0.1
LISTENER_MAX_RETRY_DELAY = 5.0


@attrs.frozen
class PgPoolStatistics:
    """A snapshot of a pool's state.

    Attributes:
        size: Connections open (idle or in use).
        idle: Connections ready in the pool.
        threads_busy: Worker threads running a unit of work or waiting for a connection.
        connections_lost: Connections found broken and replaced since the pool opened.
    """

    size: int
    idle: int
    threads_busy: int
    connections_lost: int


class _State(enum.Enum):
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"


@attrs.define(eq=False)
class _Call:
    """One unit of work travelling to a worker thread and, maybe, being cancelled."""

    fn: Callable[[PgConnection], Any]
    pool: ConnectionPool[PgConnection]
    max_attempts: int
    token: trio.lowlevel.TrioToken
    lock: threading.Lock = attrs.field(factory=threading.Lock)
    state: _State = _State.PENDING
    abandoned: bool = False
    conn: PgConnection | None = None
    finished: trio.Event = attrs.field(factory=trio.Event)

    def run(self) -> Any:
        """Runs in the worker thread."""
        with self.lock:
            if self.abandoned:
                return None  # cancelled before it started: do nothing at all
            self.state = _State.RUNNING
        try:
            conn = self._live_connection()
            try:
                with self.lock:
                    self.conn = conn
                # ``with conn`` commits or rolls back whatever transaction the unit left.
                with conn:
                    return self.fn(conn)
            finally:
                with self.lock:
                    self.conn = None
                self.pool.putconn(conn)
        finally:
            if self._finish():
                self.token.run_sync_soon(self.finished.set)

    def _finish(self) -> bool:
        with self.lock:
            self.state = _State.DONE
            return self.abandoned

    def _live_connection(self) -> PgConnection:
        # A server that terminated an idle backend has already sent its goodbye, so the
        # socket is readable: check that without a round trip and swap such connections
        # (the pool replaces them) instead of failing the caller's first statement.
        for _ in range(self.max_attempts):
            conn = self.pool.getconn()
            if _looks_alive(conn):
                return conn
            self.pool.putconn(conn)
        return self.pool.getconn()

    def abandon(self) -> bool:
        """Mark the call abandoned; True if a worker thread is running it right now."""
        with self.lock:
            self.abandoned = True
            return self.state is _State.RUNNING

    def cancel_query(self, grace: float) -> None:
        """Runs in a helper thread: ask the server to cancel the unit's current query."""
        with self.lock:
            conn = self.conn
        if conn is None:
            return
        # Best effort: the caller still waits up to the grace for the unit to end.
        with contextlib.suppress(psycopg.Error):
            conn.cancel_safe(timeout=grace)


def _readable_now(fd: int) -> bool:
    if hasattr(select, "poll"):  # select() cannot take descriptors above 1023
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(0))
    readable, _, _ = select.select([fd], [], [], 0)
    return bool(readable)


def _looks_alive(conn: PgConnection) -> bool:
    if conn.closed or conn.broken:
        return False
    if not _readable_now(conn.fileno()):
        return True  # an idle healthy connection has nothing to say
    try:
        conn.execute("")  # unsolicited data: a notice, or the server hanging up
    except psycopg.Error:
        return False
    return not conn.broken


@attrs.define(eq=False)
class PgPool:
    """A PostgreSQL connection pool whose units of work run in worker threads.

    Open it with :func:`open_pg_pool`. Connections are in autocommit mode with the
    session time zone set to UTC; a unit of work that needs a transaction opens one
    with ``conn.transaction()``.
    """

    _pool: ConnectionPool[PgConnection]
    _limiter: trio.CapacityLimiter
    cancel_grace: float = DEFAULT_CANCEL_GRACE

    async def run(self, fn: Callable[[PgConnection], T]) -> T:
        """Run ``fn(connection)`` in a worker thread with a pooled connection.

        Args:
            fn: The unit of work. It runs in a thread: it must not touch Trio objects.

        Returns:
            What ``fn`` returns.

        Raises:
            psycopg.Error: From ``fn`` or from the pool (``PoolTimeout`` when no
                connection could be had in time, ``PoolClosed`` after close).
        """
        call = _Call(fn, self._pool, self._pool.max_size + 1, trio.lowlevel.current_trio_token())
        try:
            result: T = await trio.to_thread.run_sync(
                call.run, limiter=self._limiter, abandon_on_cancel=True
            )
            return result
        finally:
            if call.abandon():
                with trio.move_on_after(self.cancel_grace, shield=True):
                    await trio.to_thread.run_sync(call.cancel_query, self.cancel_grace)
                    await call.finished.wait()

    def statistics(self) -> PgPoolStatistics:
        """The pool's current size, idle connections, busy threads and lost connections."""
        stats = self._pool.get_stats()
        return PgPoolStatistics(
            size=stats.get("pool_size", 0),
            idle=stats.get("pool_available", 0),
            threads_busy=self._limiter.borrowed_tokens,
            connections_lost=stats.get("connections_lost", 0),
        )


def _configure(conn: PgConnection) -> None:
    conn.execute("SET TIME ZONE 'UTC'")


@unwrap_lone_errors
@asynccontextmanager
async def open_pg_pool(
    dsn: str,
    *,
    min_size: int = DEFAULT_MIN_POOL_SIZE,
    max_size: int = DEFAULT_MAX_POOL_SIZE,
    name: str = "eskit",
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    cancel_grace: float = DEFAULT_CANCEL_GRACE,
    close_grace: float = DEFAULT_CLOSE_GRACE,
) -> AsyncIterator[PgPool]:
    """Open a pool of ``min_size`` to ``max_size`` connections to ``dsn``.

    Args:
        dsn: A libpq connection string or URL.
        min_size: Connections kept open even when idle.
        max_size: The most connections (and worker threads) the pool uses at once.
        name: The pool's name in logs and ``application_name``.
        connect_timeout: Seconds to wait for a connection (at open and per call).
        cancel_grace: Seconds a cancelled call waits for its query to stop.
        close_grace: Seconds closing may take.

    Raises:
        psycopg.OperationalError: The server cannot be reached or refuses the login
            (raised at once, with the server's own message).

    Resource handling:
        The pool's maintenance threads are joined and its connections closed on exit,
        shielded from cancellation and bounded by ``close_grace``.
    """
    if not 0 < min_size <= max_size:
        raise ValueError(f"need 0 < min_size <= max_size, got {min_size} and {max_size}")
    kwargs: dict[str, Any] = {"autocommit": True, "application_name": name}
    # One direct attempt first, so that a wrong address or password fails now with the
    # server's message rather than as a pool timeout much later.
    probe = await trio.to_thread.run_sync(
        partial(psycopg.connect, dsn, connect_timeout=max(int(connect_timeout), 1), **kwargs)
    )
    await trio.to_thread.run_sync(probe.close)
    pool: ConnectionPool[PgConnection] = ConnectionPool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        kwargs=kwargs,
        configure=_configure,
        name=name,
        timeout=connect_timeout,
        open=False,
    )
    try:
        await trio.to_thread.run_sync(partial(pool.open, wait=True, timeout=connect_timeout))
        yield PgPool(pool, trio.CapacityLimiter(max_size), cancel_grace)
    finally:
        with trio.move_on_after(close_grace + 1.0, shield=True):
            await trio.to_thread.run_sync(partial(pool.close, timeout=close_grace))


async def run_pg_listener(
    dsn: str,
    channel: str,
    on_notify: Callable[[str | None], None],
    *,
    application_name: str = "eskit-listen",
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """LISTEN on ``channel`` forever, calling ``on_notify`` for every notification.

    ``on_notify(None)`` is called after each (re)connection: notifications sent while
    the listener was not connected are lost, so the callee should re-read whatever
    state the notifications announce.

    Args:
        dsn: Where to connect (a dedicated connection, not a pooled one).
        channel: The channel name (quoted as an identifier).
        on_notify: Called in the listener's task with each payload, or ``None``.
        application_name: The connection's name in ``pg_stat_activity``.
        task_status: Started once the first LISTEN is active.

    Raises:
        psycopg.OperationalError: The first connection failed (from ``nursery.start``).
            Later failures are retried with a doubling delay.

    Resource handling:
        Holds one connection and no thread while waiting; the connection is closed
        (shielded, bounded) when the task is cancelled.
    """
    listen = sql.SQL("LISTEN {}").format(sql.Identifier(channel))
    delay = LISTENER_RETRY_DELAY
    started = False
    while True:
        conn: PgConnection | None = None
        try:
            conn = await trio.to_thread.run_sync(
                partial(psycopg.connect, dsn, autocommit=True, application_name=application_name)
            )
            await trio.to_thread.run_sync(conn.execute, listen)
            if not started:
                task_status.started()
                started = True
            delay = LISTENER_RETRY_DELAY
            on_notify(None)
            while True:
                await trio.lowlevel.wait_readable(conn.fileno())
                # The socket is readable, so this consumes what arrived without blocking.
                for note in conn.notifies(timeout=0):
                    on_notify(note.payload)
        except psycopg.OperationalError:
            if not started:
                raise
        finally:
            if conn is not None:
                with trio.move_on_after(DEFAULT_CLOSE_GRACE, shield=True):
                    await trio.to_thread.run_sync(conn.close)
        await trio.sleep(delay)
        delay = min(delay * 2, LISTENER_MAX_RETRY_DELAY)


#: Seconds a :class:`PgSession` statement may run before the session is declared broken.
DEFAULT_SESSION_TIMEOUT = 5.0


@attrs.define(eq=False)
class _SessionCall:
    """One statement of a session, travelling to a worker thread."""

    fn: Callable[[PgConnection], Any]
    conn: PgConnection
    token: trio.lowlevel.TrioToken
    lock: threading.Lock = attrs.field(factory=threading.Lock)
    abandoned: bool = False
    done: bool = False
    finished: trio.Event = attrs.field(factory=trio.Event)

    def run(self) -> Any:
        """Runs in the worker thread."""
        try:
            return self.fn(self.conn)
        finally:
            with self.lock:
                self.done = True
                abandoned = self.abandoned
            if abandoned:
                self.token.run_sync_soon(self.finished.set)

    def abandon(self) -> bool:
        """Mark the call abandoned; True if the worker thread has not finished it yet."""
        with self.lock:
            self.abandoned = True
            return not self.done


@attrs.define(eq=False)
class PgSession:
    """One dedicated PostgreSQL connection (autocommit, UTC), outside any pool.

    Get one from :func:`open_pg_session`. Session state (advisory locks, ``LISTEN``)
    lives as long as the connection, so a session that breaks loses it: callers watch
    :meth:`check` and start over with a new session.
    """

    _conn: PgConnection
    _token: trio.lowlevel.TrioToken
    backend_pid: int
    statement_timeout: float = DEFAULT_SESSION_TIMEOUT
    _lock: trio.Lock = attrs.field(factory=trio.Lock)
    _broken: str | None = None
    _stuck: _SessionCall | None = None

    @property
    def broken(self) -> bool:
        """Whether the session is unusable (a statement failed to end, or it was closed)."""
        return self._broken is not None or self._conn.broken or self._conn.closed

    async def run(self, fn: Callable[[PgConnection], T]) -> T:
        """Run ``fn(connection)`` in a worker thread, after the session's other calls.

        The call is shielded from the caller's cancellation, so that a statement that
        changes session state (taking an advisory lock) never completes unseen; a
        cancelled caller sees its cancellation at its next checkpoint. A call that runs
        past :attr:`statement_timeout` breaks the session at once (the statement is
        stopped when the session closes: its socket is shut down).

        Raises:
            TimeoutError: The call did not finish in time (the session is broken now).
            psycopg.OperationalError: The session is broken (the server terminated it,
                the connection dropped, or an earlier call timed out).
            psycopg.Error: From ``fn``.
        """
        with trio.CancelScope(shield=True):
            result = await self._run_locked(fn)
        return result

    async def _run_locked(self, fn: Callable[[PgConnection], T]) -> T:
        async with self._lock:
            if self.broken:
                raise psycopg.OperationalError(f"the session is broken: {self._broken}")
            call = _SessionCall(fn, self._conn, self._token)
            with trio.move_on_after(self.statement_timeout):
                result: T = await trio.to_thread.run_sync(call.run, abandon_on_cancel=True)
                return result
            self._broken = f"a statement ran longer than {self.statement_timeout} s"
            if call.abandon():
                self._stuck = call
            raise TimeoutError(self._broken)

    async def check(self) -> bool:
        """Whether the session still works: ``SELECT 1`` answered in time."""
        try:
            await self.run(_select_one)
        except (psycopg.Error, TimeoutError):
            return False
        return True

    async def wait_readable(self) -> None:
        """Wait until the server sends something unasked (it usually means it hung up).

        An idle session has nothing to read; a server that terminates the backend sends
        an error and closes the socket, which wakes this at once. Data that a running
        statement reads wakes it too: follow it with :meth:`check`. Only one task may
        wait at a time.
        """
        if self.broken:
            await trio.lowlevel.checkpoint()
            return
        await trio.lowlevel.wait_readable(self._conn.fileno())

    async def _close(self, grace: float) -> None:
        self._broken = self._broken or "closed"
        stuck = self._stuck
        if stuck is not None:
            # Shutting the socket down makes libpq's blocked read fail at once, so the
            # worker thread ends (a dead peer would otherwise hold it for minutes).
            with (
                contextlib.suppress(OSError, psycopg.Error),
                socket.socket(fileno=os.dup(self._conn.fileno())) as sock,
            ):
                sock.shutdown(socket.SHUT_RDWR)
            with trio.move_on_after(grace):
                await stuck.finished.wait()
            if not stuck.finished.is_set():
                return  # closing under a running statement could crash libpq: leave it
        with contextlib.suppress(OSError, psycopg.Error):
            trio.lowlevel.notify_closing(self._conn.fileno())
        await trio.to_thread.run_sync(self._conn.close)


def _select_one(conn: PgConnection) -> None:
    conn.execute("SELECT 1")


@unwrap_lone_errors
@asynccontextmanager
async def open_pg_session(
    dsn: str,
    *,
    application_name: str = "eskit-session",
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    statement_timeout: float = DEFAULT_SESSION_TIMEOUT,
    close_grace: float = DEFAULT_CLOSE_GRACE,
    **options: Any,
) -> AsyncIterator[PgSession]:
    """Open one dedicated connection to ``dsn`` and yield it as a :class:`PgSession`.

    Args:
        dsn: Where to connect.
        application_name: The connection's name in ``pg_stat_activity``.
        connect_timeout: Seconds to wait for the connection (at least 2, libpq's
            minimum).
        statement_timeout: Seconds a statement may run before the session is broken.
        close_grace: Seconds closing may take.
        **options: Passed to :func:`psycopg.connect` (for example ``keepalives_idle``).

    Raises:
        psycopg.OperationalError: The server cannot be reached or refuses the login.

    Resource handling:
        The connection is closed on exit (shielded, bounded by ``close_grace``); a
        statement still running then is stopped by shutting the socket down first.
    """
    conn: PgConnection = await trio.to_thread.run_sync(
        partial(
            psycopg.connect,
            dsn,
            autocommit=True,
            application_name=application_name,
            connect_timeout=max(int(connect_timeout), 2),
            **options,
        )
    )
    session: PgSession | None = None
    try:
        await trio.to_thread.run_sync(_configure, conn)
        session = PgSession(
            conn,
            trio.lowlevel.current_trio_token(),
            conn.info.backend_pid,
            statement_timeout=statement_timeout,
        )
        yield session
    finally:
        with trio.move_on_after(close_grace, shield=True):
            if session is None:
                await trio.to_thread.run_sync(conn.close)
            else:
                await session._close(close_grace / 2)
