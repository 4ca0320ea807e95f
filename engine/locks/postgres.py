"""A lock registry on PostgreSQL advisory locks (tiers 2/3 with a PostgreSQL store).

Each registry holds one dedicated connection (a :class:`~engine.drivers.postgres.PgSession`,
outside any pool) and takes session-level advisory locks on it. A lock lives exactly as
long as that connection: PostgreSQL releases it when the session ends, however it ends
(a crash, ``pg_terminate_backend``, a dropped network), so a dead node never blocks the
others for longer than the server takes to notice.

* **Keys** become one ``bigint``: the first 8 bytes of BLAKE2b over the schema and the
  key's UTF-8 bytes. Two different keys collide with a probability of about n²/2⁶⁵ for
  n keys in use; a collision only makes two keys wait for each other (never lets two
  holders in). The schema is part of the hash, so registries of different schemas never
  contend.
* **Fencing tokens** come from the table ``eskit_locks`` in the schema: the holder bumps
  its key's row right after taking the advisory lock (only the holder can), so tokens
  grow strictly per key across holders and restarts. The row also names the owner and
  the backend pid, which is how :meth:`PgLockRegistry.owner` tells a held lock (its pid
  holds the advisory lock in ``pg_locks``) from a stale row.
* **Waiting** acquirers retry ``pg_try_advisory_lock`` with a doubling delay (up to
  ``retry_interval``); a release sends ``NOTIFY`` so that they retry at once.
* **Loss**: a watcher wakes when the server sends something unasked on the idle
  connection (a terminated backend says goodbye, so that is noticed at once) and, at
  the latest, every ``check_interval``, and runs ``SELECT 1`` (bounded by
  ``statement_timeout``). If the session is gone, every lease held on it is lost: each
  holder's block is cancelled and raises :class:`~engine.errors.LockNotHeldError`, and
  the registry connects again for later acquirers. Between the server ending the session
  and the watcher noticing, another node may take the lock: stale writes are fenced by
  the token, a compare-and-set checkpoint or an expected version.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import os
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from functools import partial
from typing import Any, NoReturn

import attrs
import psycopg
import trio
from psycopg import sql

from engine.drivers.postgres import (
    DEFAULT_SESSION_TIMEOUT,
    PgConnection,
    PgSession,
    open_pg_session,
    run_pg_listener,
)
from engine.errors import BackendRefusedError, BackendUnavailableError, LockNotHeldError
from engine.groups import unwrap_lone_errors
from engine.locks.base import Lease

__all__ = [
    "DEFAULT_CHECK_INTERVAL",
    "DEFAULT_LOCK_SCHEMA",
    "DEFAULT_RETRY_INTERVAL",
    "NOTIFY_CHANNEL",
    "PgLockRegistry",
    "PgLockStatistics",
    "lock_id",
    "open_pg_lock_registry",
]

logger = logging.getLogger("eskit.locks")

DEFAULT_LOCK_SCHEMA = "eskit"
#: Seconds between liveness checks of the registry's connection.
DEFAULT_CHECK_INTERVAL = 1.0
#: The longest wait (seconds) between two attempts of a waiting acquirer.
DEFAULT_RETRY_INTERVAL = 0.5
#: The first wait between attempts; it doubles up to ``retry_interval``.
_FIRST_RETRY = 0.01
#: Delays between reconnection attempts: first, and the cap of the doubling.
_FIRST_RECONNECT = 0.1
_MAX_RECONNECT = 5.0
#: Seconds a release may take before it is left to the server (the session ends anyway).
_RELEASE_GRACE = 5.0
#: The channel releases are announced on (payload: the lock id).
NOTIFY_CHANNEL = "eskit_locks"
#: Server-side TCP keepalive of the lock session (idle, interval, count): a node that
#: vanishes without closing its connection loses its locks after about 10 + 2 * 3 s.
_SERVER_KEEPALIVE = (10, 2, 3)


def lock_id(schema: str, key: str) -> int:
    """The advisory lock id (a signed 64-bit integer) of ``key`` in ``schema``.

    (Schema names are never empty, so ``lock_id("", ...)`` is free for the registry's
    own migration lock.)
    """
    digest = hashlib.blake2b(
        f"{schema}\0{key}".encode("utf-8", "surrogatepass"), digest_size=8
    ).digest()
    return int.from_bytes(digest, "big", signed=True)


def _text(value: str) -> str:
    """``value`` as PostgreSQL ``text`` can hold it (for display only: no NUL, valid UTF-8)."""
    return value.encode("utf-8", "surrogatepass").decode("utf-8", "replace").replace("\0", "\ufffd")


def _translate(exc: BaseException) -> BackendRefusedError:
    """The one place database errors of a working lock session become engine errors."""
    return BackendRefusedError("postgres", f"PostgreSQL lock registry: {exc}")


def _default_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@attrs.frozen
class _Queries:
    create: sql.Composed
    upsert: sql.Composed
    clear: sql.Composed
    owner: sql.Composed

    @classmethod
    def for_schema(cls, schema: str) -> _Queries:
        table = sql.Identifier(schema, "eskit_locks")
        return cls(
            create=sql.SQL(
                "CREATE SCHEMA IF NOT EXISTS {schema}; "
                "CREATE TABLE IF NOT EXISTS {table} ("
                " lock_id bigint PRIMARY KEY,"
                " key text NOT NULL,"
                " owner text NOT NULL,"
                " pid integer,"
                " token bigint NOT NULL,"
                " acquired_at timestamptz NOT NULL)"
            ).format(schema=sql.Identifier(schema), table=table),
            upsert=sql.SQL(
                "INSERT INTO {table} AS l (lock_id, key, owner, pid, token, acquired_at)"
                " VALUES (%(id)s, %(key)s, %(owner)s, pg_backend_pid(), 1, now())"
                " ON CONFLICT (lock_id) DO UPDATE SET key = EXCLUDED.key,"
                " owner = EXCLUDED.owner, pid = EXCLUDED.pid, token = l.token + 1,"
                " acquired_at = EXCLUDED.acquired_at"
                " RETURNING token"
            ).format(table=table),
            clear=sql.SQL(
                "UPDATE {table} SET pid = NULL WHERE lock_id = %(id)s AND token = %(token)s"
            ).format(table=table),
            owner=sql.SQL(
                "SELECT l.owner FROM {table} l WHERE l.lock_id = %(id)s AND EXISTS ("
                " SELECT 1 FROM pg_locks p"
                " WHERE p.locktype = 'advisory' AND p.granted AND p.pid = l.pid"
                " AND p.database = (SELECT oid FROM pg_database"
                "  WHERE datname = current_database())"
                " AND p.classid::int8 = %(high)s AND p.objid::int8 = %(low)s"
                " AND p.objsubid = 1)"
            ).format(table=table),
        )


# -- blocking units of work (run in the session's worker thread) -----------------------


def _migrate(queries: _Queries, schema: str, conn: PgConnection) -> None:
    with conn.transaction():
        # Concurrent openers would race on CREATE ... IF NOT EXISTS: serialize them.
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (lock_id("", f"migrate\0{schema}"),))
        conn.execute(queries.create)


def _keepalive(conn: PgConnection) -> None:
    idle, interval, count = _SERVER_KEEPALIVE
    conn.execute(
        sql.SQL(
            "SET tcp_keepalives_idle = {}; SET tcp_keepalives_interval = {};"
            " SET tcp_keepalives_count = {}"
        ).format(sql.Literal(idle), sql.Literal(interval), sql.Literal(count))
    )


def _try_lock(
    queries: _Queries, ident: int, key: str, owner: str, conn: PgConnection
) -> int | None:
    row = conn.execute("SELECT pg_try_advisory_lock(%s)", (ident,)).fetchone()
    if row is None or not row[0]:
        return None
    try:
        bumped = conn.execute(queries.upsert, {"id": ident, "key": key, "owner": owner}).fetchone()
        assert bumped is not None
        return int(bumped[0])
    except BaseException:
        # Never keep a lock nobody knows about.
        if not conn.broken:
            conn.execute("SELECT pg_advisory_unlock(%s)", (ident,))
        raise


def _unlock(queries: _Queries, ident: int, token: int, conn: PgConnection) -> None:
    conn.execute(queries.clear, {"id": ident, "token": token})
    conn.execute(
        "SELECT pg_advisory_unlock(%s), pg_notify(%s, %s)", (ident, NOTIFY_CHANNEL, str(ident))
    )


def _owner(queries: _Queries, ident: int, conn: PgConnection) -> str | None:
    high, low = (ident >> 32) & 0xFFFFFFFF, ident & 0xFFFFFFFF
    row = conn.execute(queries.owner, {"id": ident, "high": high, "low": low}).fetchone()
    return None if row is None else str(row[0])


# -- the registry ------------------------------------------------------------------------


@attrs.frozen
class PgLockStatistics:
    """Counters of a :class:`PgLockRegistry`.

    Attributes:
        connected: Whether the registry has a working session now.
        backend_pid: The session's server process id (for ``pg_terminate_backend``).
        held: Leases held now.
        acquired: Leases acquired since the registry opened.
        lost: Leases lost while held (the session ended).
        reconnects: Sessions opened after the first.
        checks: Liveness checks run.
    """

    connected: bool
    backend_pid: int | None
    held: int
    acquired: int
    lost: int
    reconnects: int
    checks: int


@attrs.define
class _Slot:
    lock: trio.Lock = attrs.field(factory=trio.Lock)
    users: int = 0


@attrs.define(eq=False)
class _Held:
    lease: Lease
    ident: int
    session: PgSession
    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    lost: bool = False


@attrs.define(eq=False)
class PgLockRegistry:
    """A :class:`~engine.locks.base.LockRegistry` on PostgreSQL advisory locks.

    Get one from :func:`open_pg_lock_registry`; see the module documentation for how
    keys, tokens, waiting and loss work. Within one registry, holders of the same key
    queue on a Trio lock first (advisory locks are re-entrant per session, so the
    server alone would let two tasks of one node in).
    """

    owner_id: str
    schema: str
    check_interval: float
    retry_interval: float
    _queries: _Queries
    _session: PgSession | None = attrs.field(default=None, init=False)
    _session_changed: trio.Event = attrs.field(factory=trio.Event, init=False)
    _slots: dict[str, _Slot] = attrs.field(factory=dict, init=False)
    _holders: dict[str, _Held] = attrs.field(factory=dict, init=False)
    _waiters: dict[int, trio.Event] = attrs.field(factory=dict, init=False)
    _counts: collections.Counter[str] = attrs.field(factory=collections.Counter, init=False)
    _closed: bool = attrs.field(default=False, init=False)

    @asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[Lease]:
        """See :meth:`LockRegistry.hold <engine.locks.base.LockRegistry.hold>`.

        Waits through lost connections. Raises :class:`~engine.errors.BackendRefusedError` if a
        working session refuses the statements (permissions, a dropped table...).
        """
        slot = self._slots.setdefault(key, _Slot())
        slot.users += 1
        try:
            async with slot.lock:
                held = await self._acquire(key)
                self._holders[key] = held
                self._counts["acquired"] += 1
                try:
                    with held.scope:
                        yield held.lease
                finally:
                    del self._holders[key]
                    with trio.move_on_after(_RELEASE_GRACE, shield=True):
                        await self._release(held)
                if held.lost:
                    raise LockNotHeldError(
                        f"the lease on {key!r} was lost: the PostgreSQL session ended"
                    )
        finally:
            slot.users -= 1
            if slot.users == 0:
                del self._slots[key]

    async def _acquire(self, key: str) -> _Held:
        ident = lock_id(self.schema, key)
        attempt = partial(_try_lock, self._queries, ident, _text(key), _text(self.owner_id))
        delay = _FIRST_RETRY
        while True:
            session = await self._wait_session()
            released = self._waiters.setdefault(ident, trio.Event())
            try:
                token = await session.run(attempt)
            except (psycopg.Error, TimeoutError) as exc:
                if not session.broken:
                    raise _translate(exc) from exc
                # The session broke; the maintainer opens another one.
                await self._wait_session_other_than(session)
                continue
            if token is not None:
                if session is not self._session:
                    continue  # declared lost meanwhile: the server drops the lock with it
                return _Held(Lease(key, self.owner_id, token), ident, session)
            with trio.move_on_after(delay):
                await released.wait()
            delay = min(delay * 2, self.retry_interval)

    async def _release(self, held: _Held) -> None:
        session = held.session
        if held.lost or session is not self._session or session.broken:
            await trio.lowlevel.checkpoint()
            return  # the server released it with the session
        try:
            await session.run(partial(_unlock, self._queries, held.ident, held.lease.token))
        except (psycopg.Error, TimeoutError) as exc:
            logger.warning("releasing %r failed (the session ends it): %s", held.lease.key, exc)
        self._wake(held.ident)

    async def owner(self, key: str) -> str | None:
        """See :meth:`LockRegistry.owner <engine.locks.base.LockRegistry.owner>`."""
        while True:
            session = await self._wait_session()
            try:
                return await session.run(partial(_owner, self._queries, lock_id(self.schema, key)))
            except (psycopg.Error, TimeoutError) as exc:
                if not session.broken:
                    raise _translate(exc) from exc
                await self._wait_session_other_than(session)

    def statistics(self) -> PgLockStatistics:
        """A snapshot of the registry's state and counters."""
        session = self._session
        return PgLockStatistics(
            connected=session is not None and not session.broken,
            backend_pid=None if session is None else session.backend_pid,
            held=len(self._holders),
            acquired=self._counts["acquired"],
            lost=self._counts["lost"],
            reconnects=self._counts["reconnects"],
            checks=self._counts["checks"],
        )

    # -- the session -----------------------------------------------------------------

    async def _wait_session(self) -> PgSession:
        while self._session is None:
            if self._closed:
                raise trio.ClosedResourceError("the PostgreSQL lock registry is closed")
            await self._session_changed.wait()
        await trio.lowlevel.checkpoint()
        return self._session

    async def _wait_session_other_than(self, session: PgSession) -> None:
        while self._session is session and not self._closed:
            await self._session_changed.wait()

    def _close(self) -> None:
        self._closed = True
        self._set_session(None)

    def _set_session(self, session: PgSession | None) -> None:
        self._session = session
        self._session_changed.set()
        self._session_changed = trio.Event()

    def _wake(self, ident: int | None) -> None:
        """Let waiting acquirers try again now (``None``: all of them)."""
        if ident is None:
            events = list(self._waiters.values())
            self._waiters.clear()
        else:
            event = self._waiters.pop(ident, None)
            events = [] if event is None else [event]
        for event in events:
            event.set()

    def _on_notify(self, payload: str | None) -> None:
        try:
            self._wake(None if payload is None else int(payload))
        except ValueError:
            return  # not ours: someone else NOTIFYs on the channel

    def _lose(self, session: PgSession) -> None:
        for held in self._holders.values():
            if held.session is session and not held.lost:
                held.lost = True
                held.scope.cancel()
                self._counts["lost"] += 1
                logger.warning("lost the lease on %r: the PostgreSQL session ended", held.lease.key)

    async def _watch(self, session: PgSession) -> None:
        """Return once the session no longer works."""
        while True:
            with trio.move_on_after(self.check_interval):
                await session.wait_readable()
            self._counts["checks"] += 1
            if not await session.check():
                return

    async def _maintain(
        self,
        open_session: Callable[[], Any],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> NoReturn:
        """Keep a working session: open it, watch it, and open another when it ends."""
        started = False
        delay = _FIRST_RECONNECT
        while True:
            try:
                async with open_session() as session:
                    await session.run(_keepalive)
                    self._set_session(session)
                    if started:
                        self._counts["reconnects"] += 1
                    else:
                        task_status.started()
                        started = True
                    delay = _FIRST_RECONNECT
                    try:
                        await self._watch(session)
                    finally:
                        self._set_session(None)
                        self._lose(session)
                    logger.warning("the PostgreSQL lock session ended; reconnecting")
            except (psycopg.OperationalError, TimeoutError) as exc:
                if not started:
                    raise
                logger.warning("cannot open the PostgreSQL lock session: %s", exc)
            await trio.sleep(delay)
            delay = min(delay * 2, _MAX_RECONNECT)


@unwrap_lone_errors
@asynccontextmanager
async def open_pg_lock_registry(
    dsn: str,
    *,
    schema: str = DEFAULT_LOCK_SCHEMA,
    owner_id: str | None = None,
    check_interval: float = DEFAULT_CHECK_INTERVAL,
    retry_interval: float = DEFAULT_RETRY_INTERVAL,
    statement_timeout: float = DEFAULT_SESSION_TIMEOUT,
    application_name: str = "eskit-locks",
) -> AsyncIterator[PgLockRegistry]:
    """Open a lock registry on PostgreSQL advisory locks.

    Args:
        dsn: The database (the same one as the store's, so that locks and data fail
            together).
        schema: Where the ``eskit_locks`` table goes (created if missing); also the
            scope of the keys: registries of different schemas never contend.
        owner_id: This node's name, reported by :meth:`PgLockRegistry.owner` (by
            default ``host:pid``).
        check_interval: Seconds between liveness checks of the lock session.
        retry_interval: The longest wait between two attempts of a waiting acquirer.
        statement_timeout: Seconds a statement on the lock session may take before the
            session is considered dead (and its leases lost); also the connect timeout.
        application_name: The sessions' name in ``pg_stat_activity``.

    Raises:
        BackendUnavailableError: The server cannot be reached or refused the login.
        BackendRefusedError: The table could not be created (permissions, for example).

    Resource handling:
        Owns a nursery with the session keeper (one dedicated connection) and a
        ``LISTEN`` connection for release announcements; both close on exit (shielded,
        bounded). Leases still held then are lost (their holders are cancelled).
    """
    if check_interval <= 0 or retry_interval <= 0 or statement_timeout <= 0:
        raise ValueError("check_interval, retry_interval and statement_timeout must be > 0")
    registry = PgLockRegistry(
        owner_id=owner_id or _default_owner(),
        schema=schema,
        check_interval=check_interval,
        retry_interval=retry_interval,
        queries=_Queries.for_schema(schema),
    )
    open_session = partial(
        open_pg_session,
        dsn,
        application_name=application_name,
        statement_timeout=statement_timeout,
        connect_timeout=statement_timeout,
        keepalives=1,
        keepalives_idle=max(1, int(check_interval)),
        keepalives_interval=1,
        keepalives_count=3,
    )
    # Connect and create the table once before any task starts, so that a wrong DSN
    # or missing rights come out of here as one plain error.
    try:
        async with open_session() as session:
            await session.run(partial(_migrate, registry._queries, schema))
    except (psycopg.OperationalError, TimeoutError) as exc:
        raise BackendUnavailableError(
            "postgres", f"cannot open the PostgreSQL lock session: {exc}"
        ) from exc
    except psycopg.Error as exc:
        raise _translate(exc) from exc
    async with AsyncExitStack() as stack:
        nursery = await stack.enter_async_context(trio.open_nursery())
        stack.callback(nursery.cancel_scope.cancel)
        stack.callback(registry._close)
        await nursery.start(registry._maintain, open_session)
        await nursery.start(
            partial(
                run_pg_listener,
                dsn,
                NOTIFY_CHANNEL,
                registry._on_notify,
                application_name=f"{application_name}-listen",
            )
        )
        yield registry
