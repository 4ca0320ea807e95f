"""``dcb.append_conditional``: conditional appends through a DCB store.

Every append writes one ~200-byte event with one tag, under the condition "no event with
this tag after the position I last saw" (what a decision appends with):

* ``dcb.append_conditional``: one client, one append after another, round-robin over
  :data:`ACCOUNTS` tags, each condition's ``after`` the position of its previous append
  (the log's head: nobody else writes); appends per second and per-append latency;
* ``dcb.append_conditional.c16``: :data:`CLIENTS` concurrent clients, each on its own tag,
  each condition's ``after`` that client's previous append.

The sides:

* eskit: the backend's DCB store (``MemoryDcbStore``, ``open_sqlite_dcb_store``,
  ``open_postgres_dcb_store``), events encoded through its codec on each append;
* the floor (SQLite, PostgreSQL): the raw driver, one transaction per append that checks
  for a row of the tag after ``after`` in a ``(tag, position)`` index and, if there is
  none, inserts the event row (same columns, unique event id and type index as eskit's
  table) and its tag row. SQLite serializes the check and the insert with
  ``BEGIN IMMEDIATE`` on one connection (one writer: concurrent clients gain nothing);
  PostgreSQL with a transaction-scoped advisory lock per tag, each client on its own
  connection, so clients on different tags commit in parallel (correct for conditions
  that name tags, as here; a condition on types alone would need a wider lock);
* the peer: eventsourcing's DCB recorder (``PostgresDCBRecorderTT``: a server-side
  function that takes an exclusive table lock, checks, inserts; ``InMemoryDCBRecorder``
  for memory), one thread per client, handed the encoded payload (its recorder API takes
  bytes), with no event id or metadata. eventsourcing has no SQLite DCB recorder.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import trio

from benchmarks.domain import Deposited, payload_bytes
from benchmarks.harness import Stopwatch
from engine.dcb.base import AppendCondition, DcbEvent, DcbStore, Query

#: Tags the single client cycles through.
ACCOUNTS = 100
#: Concurrent clients of the ``.c16`` result.
CLIENTS = 16
TYPE = "bench.Deposited"
#: The floors' fixed ``recorded_at`` (microseconds since the epoch), as floors.py does.
RECORDED_AT = 1_795_737_600_000_000


def _tag(i: int) -> str:
    return f"account:{i % ACCOUNTS}"


def _client_tag(client: int) -> str:
    return f"client:{client}"


# -- eskit ----------------------------------------------------------------------------


async def single(store: DcbStore[Any], appends: int) -> Stopwatch:
    """One conditional append after another; the watch holds each append's latency."""
    last = await store.head()
    watch = Stopwatch()
    with watch:
        for i in range(appends):
            started = time.perf_counter()
            tag = _tag(i)
            last = await store.append(
                [DcbEvent(Deposited(1), [tag])], AppendCondition(Query.of(tags=[tag]), after=last)
            )
            watch.latencies.append(time.perf_counter() - started)
    return watch


async def concurrent(store: DcbStore[Any], clients: int, per_client: int) -> float:
    """``clients`` tasks appending conditionally on their own tags; appends per second."""

    async def client(index: int) -> None:
        tag = _client_tag(index)
        last: int | None = None
        for _ in range(per_client):
            last = await store.append(
                [DcbEvent(Deposited(1), [tag])], AppendCondition(Query.of(tags=[tag]), after=last)
            )

    watch = Stopwatch()
    with watch:
        async with trio.open_nursery() as nursery:
            for index in range(clients):
                nursery.start_soon(client, index)
    return watch.rate(clients * per_client)


# -- floors ---------------------------------------------------------------------------

SQLITE_SCHEMA = (
    "CREATE TABLE floor_dcb_events (position INTEGER PRIMARY KEY, type TEXT NOT NULL,"
    " data BLOB NOT NULL, metadata BLOB, tags TEXT NOT NULL, event_id BLOB NOT NULL,"
    " recorded_at INTEGER NOT NULL)",
    "CREATE UNIQUE INDEX floor_dcb_events_by_id ON floor_dcb_events (event_id)",
    "CREATE INDEX floor_dcb_events_by_type ON floor_dcb_events (type, position)",
    "CREATE TABLE floor_dcb_tags (tag TEXT NOT NULL, position INTEGER NOT NULL,"
    " PRIMARY KEY (tag, position)) WITHOUT ROWID",
)


class ConditionFailed(Exception):
    """A floor's append found a conflicting event (the benchmark never expects one)."""


def _sqlite_append(conn: sqlite3.Connection, tag: str, after: int) -> int:
    conn.execute("BEGIN IMMEDIATE")
    try:
        if conn.execute(
            "SELECT 1 FROM floor_dcb_tags WHERE tag = ? AND position > ? LIMIT 1", (tag, after)
        ).fetchone():
            raise ConditionFailed(tag)
        cursor = conn.execute(
            "INSERT INTO floor_dcb_events (type, data, metadata, tags, event_id, recorded_at)"
            " VALUES (?, ?, NULL, ?, ?, ?)",
            (TYPE, payload_bytes(), json.dumps([tag]), uuid.uuid4().bytes, RECORDED_AT),
        )
        position = cursor.lastrowid
        assert position is not None
        conn.execute("INSERT INTO floor_dcb_tags VALUES (?, ?)", (tag, position))
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return position


def _sqlite_open(path: Path) -> sqlite3.Connection:
    from benchmarks.floors import sqlite_connect

    conn = sqlite_connect(path)
    for statement in SQLITE_SCHEMA:
        conn.execute(statement)
    return conn


def sqlite_single(path: Path, appends: int) -> tuple[float, Stopwatch]:
    """The raw ``sqlite3`` conditional appends, one after another."""
    conn = _sqlite_open(path)
    last = 0
    watch = Stopwatch()
    with watch:
        for i in range(appends):
            started = time.perf_counter()
            last = _sqlite_append(conn, _tag(i), last)
            watch.latencies.append(time.perf_counter() - started)
    conn.close()
    return watch.rate(appends), watch


def sqlite_clients(path: Path, clients: int, per_client: int) -> float:
    """The same appends as ``clients`` clients would make, on SQLite's one writer."""
    conn = _sqlite_open(path)
    last = [0] * clients
    watch = Stopwatch()
    with watch:
        for i in range(clients * per_client):
            c = i % clients
            last[c] = _sqlite_append(conn, _client_tag(c), last[c])
    conn.close()
    return watch.rate(clients * per_client)


PG_SCHEMA = (
    "DROP TABLE IF EXISTS floor_dcb_events, floor_dcb_tags",
    "CREATE TABLE floor_dcb_events (position bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
    " type text NOT NULL, data bytea NOT NULL, metadata bytea NOT NULL, tags text[] NOT NULL,"
    " event_id uuid NOT NULL UNIQUE, recorded_at timestamptz NOT NULL DEFAULT now())",
    "CREATE INDEX floor_dcb_events_by_type ON floor_dcb_events (type, position)",
    "CREATE TABLE floor_dcb_tags (tag text NOT NULL, position bigint NOT NULL,"
    " PRIMARY KEY (tag, position))",
)
# The lock is taken first, in its own statement: the check's snapshot then sees every
# append that held it before.
PG_LOCK = "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))"
PG_APPEND = (
    "WITH event AS ("
    " INSERT INTO floor_dcb_events (type, data, metadata, tags, event_id)"
    " SELECT %(type)s, %(data)s, %(metadata)s, ARRAY[%(tag)s], %(event_id)s"
    " WHERE NOT EXISTS ("
    "  SELECT 1 FROM floor_dcb_tags WHERE tag = %(tag)s AND position > %(after)s)"
    " RETURNING position)"
    " INSERT INTO floor_dcb_tags SELECT %(tag)s, position FROM event RETURNING position"
)


def pg_setup(dsn: str) -> None:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        for statement in PG_SCHEMA:
            conn.execute(statement)


def _pg_append(conn: Any, tag: str, after: int) -> int:
    with conn.transaction():
        conn.execute(PG_LOCK, (tag,))
        row = conn.execute(
            PG_APPEND,
            {
                "type": TYPE,
                "data": payload_bytes(),
                "metadata": b"{}",
                "tag": tag,
                "event_id": uuid.uuid4(),
                "after": after,
            },
        ).fetchone()
    if row is None:
        raise ConditionFailed(tag)
    return int(row[0])


def pg_single(dsn: str, appends: int) -> tuple[float, Stopwatch]:
    """The raw psycopg conditional appends, one after another on one connection."""
    import psycopg

    pg_setup(dsn)
    last = 0
    watch = Stopwatch()
    with psycopg.connect(dsn, autocommit=True) as conn, watch:
        for i in range(appends):
            started = time.perf_counter()
            last = _pg_append(conn, _tag(i), last)
            watch.latencies.append(time.perf_counter() - started)
    return watch.rate(appends), watch


def pg_clients(dsn: str, clients: int, per_client: int) -> float:
    """``clients`` threads, each on its own connection and tag."""
    import psycopg

    pg_setup(dsn)

    def work(index: int) -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            last = 0
            for _ in range(per_client):
                last = _pg_append(conn, _client_tag(index), last)

    watch = Stopwatch()
    with watch, ThreadPoolExecutor(clients) as pool:
        list(pool.map(work, range(clients)))
    return watch.rate(clients * per_client)


# -- the peer -------------------------------------------------------------------------


def _peer_append(recorder: Any, tag: str, after: int | None) -> int:
    from eventsourcing.dcb.api import DCBAppendCondition, DCBEvent, DCBQuery, DCBQueryItem

    position: int = recorder.append(
        [DCBEvent(type=TYPE, data=payload_bytes(), tags=[tag])],
        DCBAppendCondition(DCBQuery([DCBQueryItem(tags=[tag])]), after=after),
    )
    return position


def _peer_single(recorder: Any, appends: int) -> tuple[float, Stopwatch]:
    last: int | None = None
    watch = Stopwatch()
    with watch:
        for i in range(appends):
            started = time.perf_counter()
            last = _peer_append(recorder, _tag(i), last)
            watch.latencies.append(time.perf_counter() - started)
    return watch.rate(appends), watch


def _peer_clients(recorder: Any, clients: int, per_client: int) -> float:
    def work(index: int) -> None:
        last: int | None = None
        for _ in range(per_client):
            last = _peer_append(recorder, _client_tag(index), last)

    watch = Stopwatch()
    with watch, ThreadPoolExecutor(clients) as pool:
        list(pool.map(work, range(clients)))
    return watch.rate(clients * per_client)


def memory_peer(appends: int, clients: int, per_client: int) -> tuple[float, float]:
    """eventsourcing's ``InMemoryDCBRecorder``: (single-client rate, ``clients`` rate)."""
    from eventsourcing.dcb.popo import InMemoryDCBRecorder

    single_rate, _ = _peer_single(InMemoryDCBRecorder(), appends)
    return single_rate, _peer_clients(InMemoryDCBRecorder(), clients, per_client)


def postgres_peer(
    env: dict[str, str], appends: int, clients: int, per_client: int
) -> tuple[float, float]:
    """eventsourcing's ``PostgresDCBRecorderTT`` (fresh tables each), with a pool of
    ``clients`` connections: (single-client rate, ``clients`` rate).

    Its tables go to the ``public`` schema: the tag table's foreign key names the events
    table without its schema, so the recorder cannot create them in another one.
    """
    from eventsourcing.dcb.postgres_tt import PostgresTTDCBFactory
    from eventsourcing.utils import Environment

    suffix = uuid.uuid4().hex[:8]
    rates = []
    for name, run in (
        (f"dcbsingle{suffix}", lambda r: _peer_single(r, appends)[0]),
        (f"dcbclients{suffix}", lambda r: _peer_clients(r, clients, per_client)),
    ):
        factory = PostgresTTDCBFactory(
            Environment(
                name, {**env, "POSTGRES_SCHEMA": "public", "POSTGRES_POOL_SIZE": str(clients)}
            )
        )
        try:
            rates.append(run(factory.dcb_recorder()))
        finally:
            factory.close()
    return rates[0], rates[1]
