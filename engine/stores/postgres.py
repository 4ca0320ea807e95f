"""The PostgreSQL event, snapshot and checkpoint store.

Open it with :func:`open_postgres_store`. Its tables live in one schema (``eskit`` by
default), created on first use and migrated forward by a version table.

How it keeps the promises of :mod:`engine.stores.base`:

* **One round trip per append batch.** Appends go through a server-side function,
  ``append_events``, that takes whole arrays (binary parameters) and, in one statement:
  takes the append lock, checks idempotency keys and expected versions, inserts with
  ``INSERT ... SELECT ... FROM unnest(...)``, records the keys and sends one NOTIFY.
* **The subscription invariant by serialized appends.** The function takes one
  transaction-scoped advisory lock per schema before it allocates positions, so
  position order is commit order and a reader can never see position P+1 before P.
  (PostgreSQL makes a commit visible before it releases the transaction's locks, and
  a replica replays commits in the same order.) Filtering rows by
  ``pg_snapshot_xmin(pg_current_snapshot())`` was the alternative, and it is not enough
  for position order: a transaction can take the smaller position but the larger
  transaction id, so readers would have to page by (xid, position) instead; it also
  stalls every follower behind any long transaction in the database. Serializing costs
  little once appends are group-committed (see ``benchmarks/postgres_store_quick.py``).
* **Group commit.** The lock makes one transaction at a time the ceiling, so concurrent
  appends of one process are queued and written by one writer task as one call of the
  function; each append gets its own result (a conflict in one does not fail the
  others). The unique ``(stream_id, version)`` index stays as the last fence.
* **Wake-ups.** :meth:`PostgresStore.wait_for_new_events` LISTENs (lazily, on a
  dedicated connection) for the NOTIFY of the append function.

Appends in a transaction you own (to write a read model, or in tests) go through
:func:`append_in_transaction`, the same function with the same lock.
"""

from __future__ import annotations

import datetime as dt
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from functools import partial
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import attrs
import psycopg

from engine.codec import Codec
from engine.drivers.postgres import (
    DEFAULT_MAX_POOL_SIZE,
    DEFAULT_MIN_POOL_SIZE,
    PgConnection,
    PgPool,
)
from engine.errors import (
    CheckpointConflictError,
    ConcurrencyError,
    EskitError,
    IdempotencyConflictError,
)
from engine.events import Event, ExpectedVersion, NewEvent, utc_now, validate_stream_id
from engine.groups import unwrap_lone_errors
from engine.stores.base import DEFAULT_MAX_EVENT_BYTES, DEFAULT_READ_LIMIT, Snapshot
from engine.stores.encoding import decode_event, encode_batch
from engine.stores.pg_support import (
    GroupCommit,
    GroupRequest,
    open_group_commit,
    open_migrated_pool,
    translate,
)
from engine.stores.postgres_sql import (
    STATUS_CONFLICT,
    STATUS_KEY_CONFLICT,
    STATUS_OK,
    STATUS_REPLAY,
    AppendArgs,
    AppendRow,
    Queries,
    call_append,
    execute,
    expected_code,
    fetch_events,
    fetch_idempotent,
    fetch_one,
    migrate,
    save_checkpoint,
    write_group,
)

if TYPE_CHECKING:
    from engine.stores.postgres_transactional import PostgresTransactionalStore

__all__ = [
    "DEFAULT_SCHEMA",
    "MAX_GROUP_BYTES",
    "MAX_GROUP_REQUESTS",
    "PostgresSnapshotStore",
    "PostgresStore",
    "PostgresStoreStatistics",
    "append_in_transaction",
    "open_postgres_store",
]

E = TypeVar("E")
S = TypeVar("S")
T = TypeVar("T")

DEFAULT_SCHEMA = "eskit"
#: The most appends one group commit carries.
MAX_GROUP_REQUESTS = 256
#: The most payload bytes one group commit carries (a single larger append goes alone).
MAX_GROUP_BYTES = 8 * 1024 * 1024
#: Appends that may wait for the writer before ``append`` itself waits (backpressure).
REQUEST_BUFFER = 1024


_AppendRequest = GroupRequest[AppendArgs, AppendRow]


@attrs.frozen
class PostgresStoreStatistics:
    """What the store's writer did since it opened.

    Attributes:
        groups: Append-function calls (transactions) made by the writer.
        appends: Appends written (or refused) in those calls.
        largest_group: The most appends one call carried.
    """

    groups: int
    appends: int
    largest_group: int


def _raise_refusal(
    status: int,
    args: AppendArgs,
    expected_version: int | ExpectedVersion,
    version: int,
    other: str | None,
) -> None:
    """Raise the engine error of an append the server function refused (a version or
    key conflict, or a status it should never return); return for a write or a replay."""
    if status == STATUS_CONFLICT:
        raise ConcurrencyError(args.stream_id, expected_version, version)
    if status == STATUS_KEY_CONFLICT:
        assert args.key is not None
        assert other is not None
        raise IdempotencyConflictError(args.key, args.stream_id, other)
    if status not in (STATUS_OK, STATUS_REPLAY):
        raise EskitError(f"append_events returned an unknown status {status}")


def _translate(exc: BaseException) -> BaseException:
    """The one place psycopg errors become engine errors."""
    return translate(
        exc,
        closed="the PostgreSQL store is closed",
        retry_hint="retry it with an idempotency key",
    )


def _decode_appended(
    codec: Codec[E], args: AppendArgs, version: int, positions: list[int]
) -> list[Event[E]]:
    return [
        decode_event(
            codec,
            stream_id=args.stream_id,
            version=version + offset,
            position=position,
            type_name=event.type,
            schema_version=event.schema_version,
            data=event.data,
            metadata=event.metadata,
            event_id=event.event_id,
            recorded_at=args.recorded_at,
        )
        for offset, (event, position) in enumerate(
            zip(args.encoded, positions, strict=True), start=1
        )
    ]


@attrs.define(eq=False)
class PostgresStore(Generic[E]):
    """An :class:`~engine.stores.base.EventStore` and
    :class:`~engine.stores.base.CheckpointStore` on PostgreSQL.

    Open it with :func:`open_postgres_store`; :meth:`snapshots` gives the matching
    :class:`~engine.stores.base.SnapshotStore`.
    """

    codec: Codec[E]
    max_event_bytes: int
    now: Callable[[], dt.datetime]
    _pool: PgPool
    _read_pool: PgPool
    _queries: Queries
    _commit: GroupCommit[AppendArgs, AppendRow]

    # -- EventStore ------------------------------------------------------------------

    async def append(
        self,
        stream_id: str,
        events: Sequence[NewEvent[E]],
        *,
        expected_version: int | ExpectedVersion = ExpectedVersion.ANY,
        idempotency_key: str | None = None,
    ) -> list[Event[E]]:
        """Append ``events`` atomically (see :meth:`EventStore.append
        <engine.stores.base.EventStore.append>`).

        Raises:
            ConcurrencyError: The expected version does not match.
            IdempotencyConflictError: The key was used for another stream.
            OutcomeUnknownError: The connection was lost; the append may or may not
                have been stored.
            trio.ClosedResourceError: The store is closed.
        """
        encoded = encode_batch(self.codec, stream_id, events, max_event_bytes=self.max_event_bytes)
        code = expected_code(expected_version)
        if idempotency_key is not None and not isinstance(idempotency_key, str):
            raise TypeError(f"idempotency_key must be a str, got {idempotency_key!r}")
        args = AppendArgs(stream_id, code, idempotency_key, encoded, self.now())
        request = _AppendRequest(args, sum(len(e.data) + len(e.metadata) for e in encoded))
        await self._commit.requests.send(request)
        result = await request.wait()
        if isinstance(result, psycopg.Error):
            raise _translate(result) from result
        if isinstance(result, BaseException):
            raise result
        assert result is not None
        status, version, other, positions = result
        _raise_refusal(status, args, expected_version, version, other)
        if status == STATUS_OK:
            stored = _decode_appended(self.codec, request.args, version, positions or [])
            if stored:
                self._commit.head.advance(stored[-1].position)
            return stored
        assert idempotency_key is not None  # a replay
        replayed = await self.find_idempotent(idempotency_key)
        return replayed or []

    async def load(
        self, stream_id: str, *, after_version: int = 0, limit: int | None = None
    ) -> list[Event[E]]:
        """The stream's events with a version above ``after_version``, in order."""
        validate_stream_id(stream_id)
        if limit is not None and limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        fetch = partial(
            fetch_events, self.codec, self._queries.load, [stream_id, after_version, limit]
        )
        return await self._run(fetch, read=True)

    async def stream_version(self, stream_id: str) -> int:
        """The stream's current version (0 when it has no events)."""
        validate_stream_id(stream_id)
        row = await self._run(partial(fetch_one, self._queries.stream_version, [stream_id]))
        return int(row[0]) if row else 0

    async def read_all(
        self, *, after_position: int = 0, limit: int = DEFAULT_READ_LIMIT
    ) -> list[Event[E]]:
        """Up to ``limit`` events of all streams after ``after_position``, in order."""
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        fetch = partial(fetch_events, self.codec, self._queries.read_all, [after_position, limit])
        return await self._run(fetch, read=True)

    async def head_position(self) -> int:
        """The highest position ``read_all`` can currently return (0 when empty)."""
        row = await self._run(partial(fetch_one, self._queries.head, []), read=True)
        return int(row[0]) if row else 0

    async def find_idempotent(self, idempotency_key: str) -> list[Event[E]] | None:
        """The events stored by the append that carried ``idempotency_key``, or ``None``."""
        return await self._run(
            partial(fetch_idempotent, self.codec, self._queries, idempotency_key)
        )

    # -- wake-ups ----------------------------------------------------------------------

    async def wait_for_new_events(self, after_position: int) -> None:
        """Wait until an event with a position above ``after_position`` is committed.

        Wakes on this store's own appends and on the NOTIFY that every append
        transaction sends (from any process), over one LISTEN connection opened on
        first use. Bound the wait with ``trio.move_on_after``; a follower typically
        reads until ``read_all`` comes back empty, then waits here.
        """
        await self._commit.head.wait_above(after_position, self.head_position)

    # -- CheckpointStore ---------------------------------------------------------------

    async def load_checkpoint(self, name: str) -> int | None:
        """The saved position of ``name``, or ``None``."""
        row = await self._run(partial(fetch_one, self._queries.load_checkpoint, [name]))
        return None if row is None else int(row[0])

    async def save_checkpoint(self, name: str, position: int, *, expected: int | None) -> None:
        """Save ``position`` for ``name`` if the stored value is still ``expected``.

        Raises:
            CheckpointConflictError: Another writer saved since ``expected`` was read.
            ValueError: ``position`` is negative.
        """
        ok, actual = await self._run(
            partial(save_checkpoint, self._queries, name, position, expected)
        )
        if not ok:
            raise CheckpointConflictError(name, expected, actual)
        if position < 0:
            raise ValueError(f"a checkpoint position must be >= 0, got {position}")

    # -- snapshots, statistics ---------------------------------------------------------

    def snapshots(self, state_type: type[S]) -> PostgresSnapshotStore[S]:
        """A :class:`~engine.stores.base.SnapshotStore` for states of ``state_type``,
        in this store's schema, encoded with this store's codec."""
        return PostgresSnapshotStore(self, state_type)

    def transactional(self) -> PostgresTransactionalStore:
        """A :class:`~engine.runners.base.TransactionalStore` in this store's database:
        read-model writes and runner checkpoints (in this schema) commit together."""
        from engine.stores.postgres_transactional import PostgresTransactionalStore

        return PostgresTransactionalStore(self._pool, self._queries)

    def statistics(self) -> PostgresStoreStatistics:
        """Counters of the group-commit writer."""
        writer = self._commit.writer
        return PostgresStoreStatistics(writer.groups, writer.appends, writer.largest_group)

    # -- plumbing ----------------------------------------------------------------------

    async def _run(self, fn: Callable[[PgConnection], T], *, read: bool = False) -> T:
        try:
            return await (self._read_pool if read else self._pool).run(fn)
        except psycopg.Error as exc:
            raise _translate(exc) from exc


def _take_group(pending: deque[_AppendRequest]) -> list[_AppendRequest]:
    """Take the next group off ``pending``: at most one append per idempotency key
    (the function checks keys against the table, not within its own arrays), and within
    the size limits. Appends whose caller gave up are dropped."""
    group: list[_AppendRequest] = []
    keys: set[str] = set()
    size = 0
    deferred: deque[_AppendRequest] = deque()
    while pending:
        request = pending.popleft()
        if request.abandoned:
            continue
        too_big = group and (
            len(group) >= MAX_GROUP_REQUESTS or size + request.size > MAX_GROUP_BYTES
        )
        key = request.args.key
        if too_big or (key is not None and key in keys):
            deferred.append(request)
            continue
        group.append(request)
        size += request.size
        if key is not None:
            keys.add(key)
    pending.extend(deferred)
    return group


@attrs.define(eq=False)
class PostgresSnapshotStore(Generic[S]):
    """A :class:`~engine.stores.base.SnapshotStore` in a :class:`PostgresStore`'s schema."""

    _store: PostgresStore[Any]
    state_type: type[S]

    async def save_snapshot(self, snapshot: Snapshot[S]) -> None:
        """Store ``snapshot`` unless a snapshot of a later version is stored already."""
        validate_stream_id(snapshot.stream_id)
        state = self._store.codec.encode_value(snapshot.state)
        params = [snapshot.stream_id, snapshot.version, snapshot.schema, state]
        await self._store._run(partial(execute, self._store._queries.save_snapshot, params))

    async def load_snapshot(self, stream_id: str) -> Snapshot[S] | None:
        """The latest snapshot of ``stream_id``, or ``None``."""
        validate_stream_id(stream_id)
        row = await self._store._run(
            partial(fetch_one, self._store._queries.load_snapshot, [stream_id])
        )
        if row is None:
            return None
        version, schema, state = row
        value = self._store.codec.decode_value(bytes(state), self.state_type)
        return Snapshot(stream_id, int(version), value, int(schema))


def append_in_transaction(
    conn: PgConnection,
    codec: Codec[E],
    stream_id: str,
    events: Sequence[NewEvent[E]],
    *,
    schema: str = DEFAULT_SCHEMA,
    expected_version: int | ExpectedVersion = ExpectedVersion.ANY,
    idempotency_key: str | None = None,
    max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
    now: Callable[[], dt.datetime] = utc_now,
) -> list[Event[E]]:
    """Append on a psycopg connection, inside a transaction the caller owns (blocking).

    The same server-side function and lock as :meth:`PostgresStore.append`: until the
    caller's transaction ends, every other append to the schema waits, and no reader
    sees a later position. Use it to commit read-model writes with the events, or to
    hold a transaction open in tests. The schema must have been migrated (open a store
    once).

    Raises:
        ConcurrencyError: The expected version does not match.
        IdempotencyConflictError: The key was used for another stream.
        psycopg.Error: Database errors, untranslated (the caller owns the connection).
    """
    encoded = encode_batch(codec, stream_id, events, max_event_bytes=max_event_bytes)
    args = AppendArgs(stream_id, expected_code(expected_version), idempotency_key, encoded, now())
    q = Queries.for_schema(schema)
    ((status, version, other, positions),) = call_append(q, conn, [args])
    _raise_refusal(status, args, expected_version, version, other)
    if status == STATUS_OK:
        return _decode_appended(codec, args, version, positions or [])
    assert idempotency_key is not None  # a replay
    return fetch_idempotent(codec, q, idempotency_key, conn) or []


@unwrap_lone_errors
@asynccontextmanager
async def open_postgres_store(
    dsn: str,
    codec: Codec[E],
    *,
    schema: str = DEFAULT_SCHEMA,
    max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
    min_pool_size: int = DEFAULT_MIN_POOL_SIZE,
    max_pool_size: int = DEFAULT_MAX_POOL_SIZE,
    read_dsn: str | None = None,
    read_pool_size: int = DEFAULT_MAX_POOL_SIZE,
    name: str = "eskit",
    now: Callable[[], dt.datetime] = utc_now,
) -> AsyncIterator[PostgresStore[E]]:
    """Open the PostgreSQL store in ``schema``, creating or migrating its tables.

    Args:
        dsn: The primary's connection string.
        codec: Encodes events and snapshot states.
        schema: The schema of the store's tables (any name; quoted). Created if missing.
        max_event_bytes: Size limit per encoded event.
        min_pool_size: Connections kept open.
        max_pool_size: The most connections (and worker threads) used at once.
        read_dsn: A replica for ``load``, ``read_all`` and ``head_position``; those then
            lag the primary by the replication delay.
        read_pool_size: The most connections to the replica.
        name: ``application_name`` of the connections (visible in ``pg_stat_activity``).
        now: Wall clock for ``recorded_at``.

    Raises:
        BackendUnavailableError: The server cannot be reached or refused the login.
        EskitError: The schema was migrated by a newer eskit, or a database error.

    Resource handling:
        Owns a nursery with the group-commit writer and, once
        :meth:`~PostgresStore.wait_for_new_events` is used, a LISTEN task; both are
        cancelled on exit, then the pools close (shielded, bounded).
    """
    queries = Queries.for_schema(schema)
    async with AsyncExitStack() as stack:
        closed = "the PostgreSQL store is closed"
        pool = await open_migrated_pool(
            stack,
            dsn,
            partial(migrate, queries),
            min_size=min_pool_size,
            max_size=max_pool_size,
            name=name,
            closed=closed,
        )
        read_pool = pool
        if read_dsn is not None:
            read_pool = await open_migrated_pool(
                stack, read_dsn, None, min_size=1, max_size=read_pool_size, name=name, closed=closed
            )
        async with open_group_commit(
            pool,
            _take_group,
            partial(write_group, queries),
            max_requests=MAX_GROUP_REQUESTS,
            buffer=REQUEST_BUFFER,
            closed_message=(
                "the PostgreSQL store closed before this append finished; "
                "it may or may not have been stored"
            ),
            dsn=dsn,
            channel=queries.channel,
            listen_name=f"{name}-listen",
            translate=_translate,
        ) as commit:
            yield PostgresStore(
                codec=codec,
                max_event_bytes=max_event_bytes,
                now=now,
                pool=pool,
                read_pool=read_pool,
                queries=queries,
                commit=commit,
            )
