"""The PostgreSQL DCB store: tagged events with conditional appends.

Open it with :func:`open_postgres_dcb_store`. Its tables live in one schema (``eskit``
by default, shared with the event store's tables), created on first use and migrated
forward by a version table (see :mod:`engine.dcb.postgres_schema`).

How it keeps the promises of :mod:`engine.dcb.base`:

* **Check and write are one step against every writer.** Appends go through a
  server-side function, ``dcb_append``, that takes one transaction-scoped advisory lock
  per schema, then checks idempotency and each append condition, then inserts. Every
  writer, in every process, takes the same lock, so nothing can be inserted between a
  check and its write.
* **The subscription invariant.** Positions are allocated under that lock, and
  PostgreSQL makes a commit visible before it releases the transaction's locks, so
  position order is commit order: a reader that saw position P never later sees a
  smaller new one, and ``max(position)`` is a safe head.
* **Group commit.** The lock allows one append transaction at a time, so concurrent
  appends of one store are queued and written by one writer task in one call of the
  function, each checked in order and each getting its own result (a conflict in one
  does not fail the others; a later append sees the earlier ones).
* **Tags** are indexed in a B-tree table ``dcb_tags (tag, position)``: a condition
  check is an index range scan over the events after ``after`` carrying its first tag.
* **Wake-ups.** Followers LISTEN (lazily, on a dedicated connection) for the NOTIFY that
  every append transaction sends.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from functools import partial
from typing import Any, TypeVar

import attrs
import psycopg

from engine.codec import Codec
from engine.dcb.base import (
    AppendCondition,
    AppendConditionError,
    DcbEvent,
    DuplicateEventIdError,
    Query,
    ReadResult,
    SequencedEvent,
)
from engine.dcb.encoding import EncodedDcbEvent, decode_event, encode_events
from engine.dcb.follow import Following
from engine.dcb.postgres_schema import (
    PROBE_LIMIT,
    STATUS_CONFLICT,
    STATUS_DUPLICATE,
    STATUS_OK,
    STATUS_REPLAY,
    DcbQueries,
    migrate,
    probe_sql,
    read_sql,
)
from engine.drivers.postgres import (
    DEFAULT_MAX_POOL_SIZE,
    DEFAULT_MIN_POOL_SIZE,
    PgConnection,
    PgPool,
)
from engine.errors import EskitError
from engine.events import utc_now
from engine.groups import unwrap_lone_errors
from engine.stores.base import DEFAULT_MAX_EVENT_BYTES
from engine.stores.pg_support import (
    GroupCommit,
    GroupRequest,
    fetch_one,
    open_group_commit,
    open_migrated_pool,
    take_fifo_group,
    translate,
    write_each_on_failure,
)

__all__ = [
    "DEFAULT_SCHEMA",
    "MAX_GROUP_BYTES",
    "MAX_GROUP_REQUESTS",
    "PostgresDcbStore",
    "PostgresDcbStoreStatistics",
    "open_postgres_dcb_store",
]

E = TypeVar("E")
T = TypeVar("T")

DEFAULT_SCHEMA = "eskit"
#: The most appends one group commit carries.
MAX_GROUP_REQUESTS = 256
#: The most payload bytes one group commit carries (a single larger append goes alone).
MAX_GROUP_BYTES = 8 * 1024 * 1024
#: Appends that may wait for the writer before ``append`` itself waits (backpressure).
REQUEST_BUFFER = 1024

# status, position
_Row = tuple[int, int | None]


@attrs.frozen
class _AppendArgs:
    encoded: list[EncodedDcbEvent]
    condition: AppendCondition | None
    recorded_at: dt.datetime


_AppendRequest = GroupRequest[_AppendArgs, _Row]


@attrs.frozen
class PostgresDcbStoreStatistics:
    """What the store's writer did since it opened.

    Attributes:
        groups: Append-function calls (transactions) made by the writer.
        appends: Appends written (or refused) in those calls.
        largest_group: The most appends one call carried.
        conflicts: Appends refused because their condition failed.
    """

    groups: int
    appends: int
    largest_group: int
    conflicts: int


def _translate(exc: BaseException) -> BaseException:
    """The one place psycopg errors become engine errors."""
    return translate(
        exc,
        closed="the PostgreSQL DCB store is closed",
        retry_hint="retry it with the same event ids",
    )


def _call_append(q: DcbQueries, conn: PgConnection, group: Sequence[_AppendArgs]) -> list[_Row]:
    """Flatten a group into the function's arrays and call it once."""
    req_count, req_has_cond, req_all, req_after = [], [], [], []
    req_item_lo, req_item_n, req_recorded_at = [], [], []
    it_ty_off: list[int] = []
    it_ty_n: list[int] = []
    it_types: list[str] = []
    it_tg_off: list[int] = []
    it_tg_n: list[int] = []
    it_tags: list[str] = []
    ev_type: list[str] = []
    ev_schema: list[int] = []
    ev_data: list[bytes] = []
    ev_meta: list[bytes] = []
    ev_id: list[uuid.UUID] = []
    ev_tag_off: list[int] = []
    ev_tag_n: list[int] = []
    ev_tags: list[str] = []
    for request in group:
        condition = request.condition
        items = () if condition is None else condition.fail_if_events_match.items
        req_count.append(len(request.encoded))
        req_has_cond.append(condition is not None)
        req_all.append(condition is not None and not items)
        req_after.append(0 if condition is None else condition.after or 0)
        req_item_lo.append(len(it_ty_n))
        req_item_n.append(len(items))
        req_recorded_at.append(request.recorded_at)
        for item in items:
            it_ty_off.append(len(it_types))
            it_ty_n.append(len(item.types))
            it_types.extend(item.types)
            it_tg_off.append(len(it_tags))
            it_tg_n.append(len(item.tags))
            it_tags.extend(item.tags)
        for event in request.encoded:
            ev_type.append(event.type)
            ev_schema.append(event.schema_version)
            ev_data.append(event.data)
            ev_meta.append(event.metadata)
            ev_id.append(event.event_id)
            ev_tag_off.append(len(ev_tags))
            ev_tag_n.append(len(event.tags))
            ev_tags.extend(event.tags)
    params = (
        req_count,
        req_has_cond,
        req_all,
        req_after,
        req_item_lo,
        req_item_n,
        req_recorded_at,
        it_ty_off,
        it_ty_n,
        it_types,
        it_tg_off,
        it_tg_n,
        it_tags,
        ev_type,
        ev_schema,
        ev_data,
        ev_meta,
        ev_id,
        ev_tag_off,
        ev_tag_n,
        ev_tags,
    )
    rows: list[_Row] = conn.execute(q.append, params, binary=True).fetchall()
    if len(rows) != len(group):
        raise EskitError(f"dcb_append returned {len(rows)} rows for {len(group)} appends")
    return rows


def _write_group(
    q: DcbQueries, group: Sequence[_AppendArgs], conn: PgConnection
) -> list[_Row | BaseException]:
    """One group commit (runs in a worker thread; see
    :func:`~engine.stores.pg_support.write_each_on_failure`)."""
    return write_each_on_failure(partial(_call_append, q, conn), group)


def _stored_ids(q: DcbQueries, ids: list[uuid.UUID], conn: PgConnection) -> list[uuid.UUID]:
    rows = conn.execute(q.stored_ids, [ids], binary=True).fetchall()
    stored = {row[0] for row in rows}
    return [event_id for event_id in ids if event_id in stored]


@attrs.define(eq=False)
class PostgresDcbStore(Following[E]):
    """A :class:`~engine.dcb.base.DcbStore` on PostgreSQL.

    Open it with :func:`open_postgres_dcb_store`; never construct it directly.
    """

    codec: Codec[E]
    max_event_bytes: int
    now: Callable[[], dt.datetime]
    _pool: PgPool
    _queries: DcbQueries
    _commit: GroupCommit[_AppendArgs, _Row]
    _conflicts: int = 0

    async def read(
        self, query: Query | None = None, *, after: int | None = None, limit: int | None = None
    ) -> ReadResult[E]:
        """The events matching ``query`` after ``after`` (see :meth:`DcbStore.read
        <engine.dcb.base.DcbStore.read>`)."""
        if limit is not None and limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        schema, start = self._queries.schema, max(after or 0, 0)
        probed = (
            [] if query is None else [t for i in query.items if len(i.tags) > 1 for t in i.tags]
        )

        def run(conn: PgConnection) -> list[tuple[Any, ...]]:
            counts: dict[str, int] = {}
            if probed:
                rows = conn.execute(probe_sql(schema), [start, PROBE_LIMIT, probed]).fetchall()
                counts = {tag: int(count) for tag, count in rows}
            statement, params = read_sql(schema, query, start, limit, counts)
            return conn.execute(statement, params).fetchall()

        rows = await self._run(run)
        head = int(rows[0][0]) if rows else 0
        events = [self._decode(row) for row in rows if row[1] is not None]
        if limit is not None and len(events) == limit:
            head = events[-1].position
        self._commit.head.advance(head)
        return ReadResult(events, head)

    async def append(
        self, events: Sequence[DcbEvent[E]], condition: AppendCondition | None = None
    ) -> int:
        """Append ``events`` atomically unless ``condition`` fails (see
        :meth:`DcbStore.append <engine.dcb.base.DcbStore.append>`).

        Raises:
            AppendConditionError: The condition failed; nothing was written.
            DuplicateEventIdError: Some but not all event ids are stored already.
            OutcomeUnknownError: The connection was lost; the append may or may not
                have been stored (retry it with the same event ids).
            trio.ClosedResourceError: The store is closed.
        """
        encoded = encode_events(self.codec, events, max_event_bytes=self.max_event_bytes)
        request = _AppendRequest(
            _AppendArgs(encoded, condition, self.now()),
            sum(len(e.data) + len(e.metadata) for e in encoded),
        )
        await self._commit.requests.send(request)
        result = await request.wait()
        if isinstance(result, BaseException):
            raise _translate(result) from result
        assert result is not None
        status, position = result
        if status in (STATUS_OK, STATUS_REPLAY):
            assert position is not None
            self._commit.head.advance(position)
            return position
        if status == STATUS_CONFLICT:
            self._conflicts += 1
            assert condition is not None
            raise AppendConditionError(condition, position)
        if status == STATUS_DUPLICATE:
            ids = [event.event_id for event in encoded]
            raise DuplicateEventIdError(await self._run(partial(_stored_ids, self._queries, ids)))
        raise EskitError(f"dcb_append returned an unknown status {status}")

    async def head(self) -> int:
        """The log's current head position (0 for an empty log)."""
        row = await self._run(partial(fetch_one, self._queries.head, ()))
        head = int(row[0]) if row else 0
        self._commit.head.advance(head)
        return head

    async def wait_for_append(self, after: int) -> None:
        """Return once an event with a position above ``after`` is committed.

        Wakes on this store's own appends and on the NOTIFY every append transaction
        sends (from any process), over one LISTEN connection opened on first use.
        """
        await self._commit.head.wait_above(after, self.head)

    def statistics(self) -> PostgresDcbStoreStatistics:
        """Counters of the group-commit writer."""
        writer = self._commit.writer
        return PostgresDcbStoreStatistics(
            writer.groups, writer.appends, writer.largest_group, self._conflicts
        )

    # -- plumbing ----------------------------------------------------------------------

    async def _run(self, fn: Callable[[PgConnection], T]) -> T:
        try:
            return await self._pool.run(fn)
        except psycopg.Error as exc:
            raise _translate(exc) from exc

    def _decode(self, row: tuple[Any, ...]) -> SequencedEvent[E]:
        # row: head, position, type, schema_version, data, metadata, tags, event_id, recorded_at
        return decode_event(
            self.codec,
            position=row[1],
            type_name=row[2],
            schema_version=row[3],
            data=row[4],
            metadata=row[5],
            tags=row[6],
            event_id=row[7],
            recorded_at=row[8],
        )


@unwrap_lone_errors
@asynccontextmanager
async def open_postgres_dcb_store(
    dsn: str,
    codec: Codec[E],
    *,
    schema: str = DEFAULT_SCHEMA,
    max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
    min_pool_size: int = DEFAULT_MIN_POOL_SIZE,
    max_pool_size: int = DEFAULT_MAX_POOL_SIZE,
    name: str = "eskit-dcb",
    now: Callable[[], dt.datetime] = utc_now,
) -> AsyncIterator[PostgresDcbStore[E]]:
    """Open the PostgreSQL DCB store in ``schema``, creating or migrating its tables.

    Args:
        dsn: The primary's connection string.
        codec: Encodes events on append and decodes them on read.
        schema: The schema of the DCB tables (any name; quoted; created if missing). The
            event store's tables may live in the same schema.
        max_event_bytes: Size limit per encoded event.
        min_pool_size: Connections kept open.
        max_pool_size: The most connections (and worker threads) used at once.
        name: ``application_name`` of the connections.
        now: Wall clock for ``recorded_at``.

    Raises:
        BackendUnavailableError: The server cannot be reached or refused the login.
        EskitError: The DCB tables were migrated by a newer eskit, or a database error.

    Resource handling:
        Owns a nursery with the group-commit writer and, once
        :meth:`~PostgresDcbStore.wait_for_append` is used, a LISTEN task; both are
        cancelled on exit, then the pool closes (shielded, bounded).
    """
    queries = DcbQueries.for_schema(schema)
    async with AsyncExitStack() as stack:
        pool = await open_migrated_pool(
            stack,
            dsn,
            partial(migrate, queries),
            min_size=min_pool_size,
            max_size=max_pool_size,
            name=name,
            closed="the PostgreSQL DCB store is closed",
        )
        async with open_group_commit(
            pool,
            # The group is taken in order: a later append's condition sees the earlier ones.
            partial(take_fifo_group, max_requests=MAX_GROUP_REQUESTS, max_bytes=MAX_GROUP_BYTES),
            partial(_write_group, queries),
            max_requests=MAX_GROUP_REQUESTS,
            buffer=REQUEST_BUFFER,
            closed_message=(
                "the PostgreSQL DCB store closed before this append finished; "
                "it may or may not have been stored"
            ),
            dsn=dsn,
            channel=queries.channel,
            listen_name="eskit-listen",
            translate=_translate,
        ) as commit:
            yield PostgresDcbStore(
                codec=codec,
                max_event_bytes=max_event_bytes,
                now=now,
                pool=pool,
                queries=queries,
                commit=commit,
            )
