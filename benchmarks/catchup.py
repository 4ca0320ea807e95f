"""``projection.catchup``: a projection runner catching up into a SQL read model.

All sides build the same read model, ``totals (stream_id PRIMARY KEY, count, amount)``,
one upsert per event, from the same events (streams of 100 ~200-byte events), and commit
the read-model writes with the runner's checkpoint in one transaction (exactly-once):

* eskit: a :class:`~engine.runners.ProjectionRunner` with a
  :class:`~engine.runners.TransactionalProjection`, batches of :data:`BATCH` events.
  SQLite and PostgreSQL go through the store's
  :class:`~engine.stores.base.SqlDatabase` (``store.transactional()``), each batch's
  upserts in one ``executemany``; memory through a
  :class:`~engine.runners.MemoryTransactionalStore` (a dict, copied per batch). Timed
  from the runner's start until ``wait_caught_up(head)`` returns;
* the floor: the raw driver paging the raw events table (undecoded: the upsert adds the
  amount every event carries, 1, without parsing the payload), the same upserts in one
  ``executemany`` per batch of :data:`BATCH`, and a compare-and-set update of a
  checkpoint row, one transaction per batch;
* the peer (PostgreSQL only): eventsourcing's ``ProjectionRunner`` with a
  ``PostgresTrackingRecorder`` view whose upsert and tracking record commit in one
  transaction. Its projection API hands over one event at a time, so it commits once
  per event; it runs on fewer events (``Sizes.catchup_peer_events``) for that reason,
  and its finish time is taken by the view when it commits the last event (the runner's
  own ``wait`` polls at 100-800 ms intervals). eventsourcing's SQLite application
  recorder has no subscriptions, and its POPO recorder's events live in the application
  object that wrote them (the runner builds its own), so SQLite and memory have no peer.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import trio
from psycopg import sql

from benchmarks import floors
from benchmarks.domain import Deposited
from engine import EventStore, NewEvent
from engine.events import Event
from engine.runners import (
    DEFAULT_BATCH_SIZE,
    MemoryTransaction,
    MemoryTransactionalStore,
    ProjectionRunner,
    TransactionalProjection,
)
from engine.stores.base import SqlDatabase, SqlTransaction

#: Events per stream (and per append when filling).
PER_STREAM = 100
#: Events per runner batch, and per floor transaction.
BATCH = DEFAULT_BATCH_SIZE
#: How long a catch-up may take before the run is called broken.
TIMEOUT = 600.0

#: The read model, in the same words on every SQL database (the floors name it
#: ``floor_totals``).
TOTALS = (
    "CREATE TABLE IF NOT EXISTS {table} ("
    " stream_id TEXT PRIMARY KEY, count BIGINT NOT NULL, amount BIGINT NOT NULL)"
)
UPSERT = (
    "INSERT INTO {table} AS t (stream_id, count, amount) VALUES ({p}, 1, {p}) "
    "ON CONFLICT (stream_id) DO UPDATE SET count = t.count + 1, amount = t.amount + excluded.amount"
)


def _rows(events: Sequence[Event[Any]]) -> list[tuple[str, int]]:
    return [(event.stream_id, event.data.amount) for event in events]


# -- eskit ----------------------------------------------------------------------------


async def fill(store: EventStore[Any], events: int) -> int:
    """Append ``events`` events in streams of :data:`PER_STREAM`; return the head."""
    for chunk in range(events // PER_STREAM):
        await store.append(f"acct-{chunk}", [NewEvent(Deposited(1)) for _ in range(PER_STREAM)])
    return await store.head_position()


async def catch_up(
    store: EventStore[Any],
    projection: TransactionalProjection[Any, Any],
    head: int,
) -> float:
    """Run a fresh projection runner from position 0 until it has done ``head``;
    events per second, from its start until ``wait_caught_up(head)`` returns."""
    runner: ProjectionRunner[Any] = ProjectionRunner(
        name="totals", handler=projection, store=store, batch_size=BATCH
    )
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            started = time.perf_counter()
            await nursery.start(runner.run)
            await runner.wait_caught_up(head)
            elapsed = time.perf_counter() - started
            nursery.cancel_scope.cancel()
    return head / elapsed


async def _memory_handle(events: Sequence[Event[Any]], transaction: MemoryTransaction) -> None:
    totals: dict[str, tuple[int, int]] = transaction.data.setdefault("totals", {})
    for event in events:
        count, amount = totals.get(event.stream_id, (0, 0))
        totals[event.stream_id] = (count + 1, amount + event.data.amount)
    await trio.lowlevel.checkpoint()


async def memory(store: EventStore[Any], events: int) -> float:
    """The catch-up into a :class:`MemoryTransactionalStore` (a dict, copied per batch)."""
    head = await fill(store, events)
    read_model = MemoryTransactionalStore()
    rate = await catch_up(store, TransactionalProjection(read_model, _memory_handle), head)
    _check(list(read_model.data["totals"].values()), events)
    return rate


def _sql_handler(upsert: str) -> Callable[[Sequence[Event[Any]], Any], Awaitable[None]]:
    async def handle(events: Sequence[Event[Any]], transaction: SqlTransaction) -> None:
        await transaction.executemany(upsert, _rows(events))

    return handle


async def sql_database(store: Any, events: int) -> float:
    """The catch-up into ``totals`` beside the store's events, through its
    :class:`~engine.stores.base.SqlDatabase` (``store.transactional()``: SQLite queues a
    batch's statements and writes them with the checkpoint in one writer job; PostgreSQL
    runs them in one transaction, ``executemany`` pipelined)."""
    head = await fill(store, events)
    database: SqlDatabase = store.transactional()
    await database.ensure_schema(TOTALS.format(table="totals"))
    upsert = UPSERT.format(table="totals", p=database.placeholder)
    rate = await catch_up(store, TransactionalProjection(database, _sql_handler(upsert)), head)
    _check(await database.fetch("SELECT count, amount FROM totals"), events)
    return rate


def _check(rows: Sequence[Sequence[int]], events: int) -> None:
    counted = sum(row[0] for row in rows)
    added = sum(row[1] for row in rows)
    if counted != events or added != events or len(rows) != events // PER_STREAM:
        raise AssertionError(
            f"read model holds {counted} events, amount {added}, {len(rows)} rows; "
            f"expected {events}, {events}, {events // PER_STREAM}"
        )


# -- floors ---------------------------------------------------------------------------


def sqlite_floor(path: Path, events: int) -> float:
    """The raw ``sqlite3`` catch-up, events per second."""
    conn = floors.sqlite_connect(path)
    conn.execute(TOTALS.format(table="floor_totals"))
    conn.execute(
        "CREATE TABLE IF NOT EXISTS checkpoints (name TEXT PRIMARY KEY, position INTEGER NOT NULL)"
    )
    conn.execute("BEGIN IMMEDIATE")
    for chunk in range(events // PER_STREAM):
        conn.executemany(
            floors.INSERT_SQLITE,
            (floors.sqlite_row(f"acct-{chunk}", v) for v in range(1, PER_STREAM + 1)),
        )
    conn.execute("INSERT INTO checkpoints VALUES ('totals', 0)")
    conn.execute("COMMIT")
    upsert = UPSERT.format(table="floor_totals", p="?")
    started = time.perf_counter()
    position = 0
    while rows := conn.execute(
        "SELECT * FROM floor_events WHERE position > ? ORDER BY position LIMIT ?",
        (position, BATCH),
    ).fetchall():
        last = rows[-1][0]
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(upsert, [(row[1], 1) for row in rows])
        cursor = conn.execute(
            "UPDATE checkpoints SET position = ? WHERE name = 'totals' AND position = ?",
            (last, position),
        )
        if cursor.rowcount != 1:
            raise sqlite3.IntegrityError("checkpoint conflict")
        conn.execute("COMMIT")
        position = last
    elapsed = time.perf_counter() - started
    _check(conn.execute("SELECT count, amount FROM floor_totals").fetchall(), events)
    conn.close()
    return events / elapsed


def pg_floor(dsn: str, events: int) -> float:
    """The raw psycopg catch-up (``executemany`` in pipeline mode), events per second."""
    import psycopg

    floors.pg_setup(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS floor_totals, floor_checkpoints")
        conn.execute(TOTALS.format(table="floor_totals"))
        conn.execute("CREATE TABLE floor_checkpoints (name text PRIMARY KEY, position bigint)")
        conn.execute("INSERT INTO floor_checkpoints VALUES ('totals', 0)")
        with (
            conn.cursor() as cur,
            cur.copy(
                "COPY floor_events (stream_id, version, type, data, metadata, event_id) FROM STDIN"
            ) as copy,
        ):
            for chunk in range(events // PER_STREAM):
                for v in range(1, PER_STREAM + 1):
                    copy.write_row(floors.pg_row(f"acct-{chunk}", v))
        conn.execute("VACUUM ANALYZE floor_events")
        upsert = UPSERT.format(table="floor_totals", p="%s")
        started = time.perf_counter()
        position = 0
        while rows := conn.execute(
            "SELECT * FROM floor_events WHERE position > %s ORDER BY position LIMIT %s",
            (position, BATCH),
            binary=True,
        ).fetchall():
            last = rows[-1][0]
            with conn.transaction(), conn.cursor() as cur:
                cur.executemany(upsert, [(row[1], 1) for row in rows])
                cur.execute(
                    "UPDATE floor_checkpoints SET position = %s "
                    "WHERE name = 'totals' AND position = %s",
                    (last, position),
                )
                if cur.rowcount != 1:
                    raise psycopg.IntegrityError("checkpoint conflict")
            position = last
        elapsed = time.perf_counter() - started
        _check(conn.execute("SELECT count, amount FROM floor_totals").fetchall(), events)
    return events / elapsed


# -- the peer: eventsourcing on PostgreSQL --------------------------------------------


def _peer_classes() -> tuple[type[Any], type[Any]]:
    """The peer's view and projection (defined lazily: importing eventsourcing's
    PostgreSQL module needs psycopg's pool)."""
    from eventsourcing.persistence import Tracking
    from eventsourcing.postgres import PostgresDatastore, PostgresTrackingRecorder
    from eventsourcing.projection import Projection

    class PeerTotalsView(PostgresTrackingRecorder):
        """``totals`` upserts committed with the tracking record, one event each."""

        target: int = 0
        finished_at: float = 0.0
        finished: threading.Event

        def __init__(self, datastore: PostgresDatastore, **kwargs: Any) -> None:
            super().__init__(datastore, **kwargs)
            table = sql.Identifier(datastore.schema, "totals").as_string()
            self.sql_create_statements.append(sql.SQL(TOTALS.format(table=table)))
            self.upsert = sql.SQL(UPSERT.format(table=table, p="%s"))
            self.finished = threading.Event()

        def add(self, stream_id: str, amount: int, tracking: Tracking) -> None:
            with self.datastore.transaction(commit=True) as curs:
                curs.execute(self.upsert, (stream_id, amount), prepare=True)
                self._insert_tracking(curs, tracking)
            if tracking.notification_id >= self.target:
                self.finished_at = time.perf_counter()
                self.finished.set()

    class PeerTotals(Projection[PeerTotalsView]):
        """Counts every event of the peer's application per aggregate."""

        name = "peertotals"

        def process_event(self, domain_event: Any, tracking: Tracking) -> None:
            # The aggregate's first event (Opened) carries no amount.
            amount = getattr(domain_event, "amount", 0)
            self.view.add(str(domain_event.originator_id), amount, tracking)

    return PeerTotalsView, PeerTotals


def peer(env: dict[str, str], events: int) -> float:
    """eventsourcing's projection runner catching up ``events`` events (aggregates of
    one ``Opened`` and 99 ``Deposited``), events per second."""
    from eventsourcing.projection import ProjectionRunner as PeerRunner

    from benchmarks.peer import PeerAccount, PeerBank, open_app

    view_class, projection_class = _peer_classes()
    app = open_app(env)
    for _ in range(events // PER_STREAM):
        account = PeerAccount()
        for _ in range(PER_STREAM - 1):
            account.deposit(1)
        app.save(account)
    head = app.recorder.max_notification_id()
    app.close()
    view_class.target = head
    started = time.perf_counter()
    runner = PeerRunner(
        application_class=PeerBank,
        projection_class=projection_class,
        view_class=view_class,
        env=env,
    )
    try:
        with runner:
            if not runner.view.finished.wait(TIMEOUT):
                raise TimeoutError(f"the peer did not catch up with {head} in {TIMEOUT} s")
            elapsed = runner.view.finished_at - started
    finally:
        # The runner closes its application, not its view's connection pool.
        runner.view.datastore.close()
    return events / elapsed
