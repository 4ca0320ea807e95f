"""The floors: the raw drivers doing the same work as eskit, with nothing in between.

Each floor writes the same rows (same payload bytes, same columns and unique index) with
the same durability as the eskit backend it is compared with.
"""

from __future__ import annotations

import concurrent.futures
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Any

from benchmarks.domain import payload_bytes
from benchmarks.harness import Stopwatch

SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS floor_events (
    position INTEGER PRIMARY KEY,
    stream_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    type TEXT NOT NULL,
    data BLOB NOT NULL,
    metadata BLOB NOT NULL,
    event_id TEXT NOT NULL,
    recorded_at TEXT NOT NULL,
    UNIQUE (stream_id, version)
)
"""


def sqlite_connect(path: Path, synchronous: str = "FULL") -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute(SQLITE_SCHEMA)
    return conn


def sqlite_row(stream_id: str, version: int) -> tuple[str, int, str, bytes, bytes, str, str]:
    return (
        stream_id,
        version,
        "bench.Deposited",
        payload_bytes(),
        b"{}",
        str(uuid.uuid4()),
        "2026-11-27T00:00:00+00:00",
    )


INSERT_SQLITE = (
    "INSERT INTO floor_events (stream_id, version, type, data, metadata, event_id, recorded_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)"
)


def sqlite_single_inserts(path: Path, count: int, streams: int) -> tuple[float, Stopwatch]:
    """One single-row transaction per event, round-robin over ``streams``."""
    conn = sqlite_connect(path)
    versions = [0] * streams
    watch = Stopwatch()
    with watch:
        for i in range(count):
            started = time.perf_counter()
            s = i % streams
            versions[s] += 1
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(INSERT_SQLITE, sqlite_row(f"floor-{s}", versions[s]))
            conn.execute("COMMIT")
            watch.latencies.append(time.perf_counter() - started)
    conn.close()
    return watch.rate(count), watch


def sqlite_batch(path: Path, batches: int, size: int) -> float:
    """``batches`` transactions of ``size`` rows each, events per second."""
    conn = sqlite_connect(path)
    watch = Stopwatch()
    with watch:
        for b in range(batches):
            rows = [sqlite_row(f"batch-{b}", v) for v in range(1, size + 1)]
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(INSERT_SQLITE, rows)
            conn.execute("COMMIT")
    conn.close()
    return watch.rate(batches * size)


def sqlite_fill(path: Path, stream_id: str, count: int) -> None:
    conn = sqlite_connect(path)
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany(INSERT_SQLITE, (sqlite_row(stream_id, v) for v in range(1, count + 1)))
    conn.execute("COMMIT")
    conn.close()


def sqlite_load_stream(path: Path, stream_id: str) -> float:
    """Fetch one stream's rows in version order (undecoded), rows per second."""
    conn = sqlite_connect(path)
    watch = Stopwatch()
    with watch:
        rows = conn.execute(
            "SELECT * FROM floor_events WHERE stream_id = ? ORDER BY version", (stream_id,)
        ).fetchall()
    conn.close()
    return watch.rate(len(rows))


def sqlite_scan(path: Path, page: int = 1000) -> float:
    """Read every row in position order, page by page (undecoded), rows per second."""
    conn = sqlite_connect(path)
    count = 0
    position = 0
    watch = Stopwatch()
    with watch:
        while True:
            rows = conn.execute(
                "SELECT * FROM floor_events WHERE position > ? ORDER BY position LIMIT ?",
                (position, page),
            ).fetchall()
            if not rows:
                break
            count += len(rows)
            position = rows[-1][0]
    conn.close()
    return watch.rate(count)


PG_SCHEMA = """
CREATE TABLE IF NOT EXISTS floor_events (
    position BIGSERIAL PRIMARY KEY,
    stream_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    type TEXT NOT NULL,
    data BYTEA NOT NULL,
    metadata BYTEA NOT NULL,
    event_id UUID NOT NULL,
    recorded_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (stream_id, version)
)
"""
INSERT_PG = (
    "INSERT INTO floor_events (stream_id, version, type, data, metadata, event_id) "
    "VALUES (%s, %s, %s, %s, %s, %s)"
)


def pg_row(stream_id: str, version: int) -> tuple[str, int, str, bytes, bytes, uuid.UUID]:
    return (stream_id, version, "bench.Deposited", payload_bytes(), b"{}", uuid.uuid4())


def pg_setup(dsn: str) -> None:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS floor_events")
        conn.execute(PG_SCHEMA)


def pg_single_inserts(dsn: str, count: int, streams: int) -> tuple[float, Stopwatch]:
    """One single-row transaction per event on one connection."""
    import psycopg

    watch = Stopwatch()
    versions = [0] * streams
    with psycopg.connect(dsn) as conn, watch:
        for i in range(count):
            started = time.perf_counter()
            s = i % streams
            versions[s] += 1
            with conn.transaction():
                conn.execute(INSERT_PG, pg_row(f"floor-seq-{s}", versions[s]))
            watch.latencies.append(time.perf_counter() - started)
    return watch.rate(count), watch


def pg_concurrent_inserts(dsn: str, connections: int, per_connection: int) -> float:
    """``connections`` threads, each inserting one row per transaction on its own connection."""
    import psycopg

    def work(index: int) -> None:
        with psycopg.connect(dsn) as conn:
            for v in range(1, per_connection + 1):
                with conn.transaction():
                    conn.execute(INSERT_PG, pg_row(f"floor-c{connections}-{index}", v))

    watch = Stopwatch()
    with watch, concurrent.futures.ThreadPoolExecutor(connections) as pool:
        list(pool.map(work, range(connections)))
    return watch.rate(connections * per_connection)


def pg_batch(dsn: str, batches: int, size: int) -> float:
    """``batches`` transactions of ``size`` rows with one unnest insert each."""
    import psycopg

    with psycopg.connect(dsn) as conn, Stopwatch() as watch:
        for b in range(batches):
            rows = [pg_row(f"floor-batch-{b}", v) for v in range(1, size + 1)]
            columns = list(zip(*rows, strict=True))
            with conn.transaction():
                conn.execute(
                    "INSERT INTO floor_events (stream_id, version, type, data, metadata, event_id) "
                    "SELECT * FROM unnest(%s::text[], %s::int[], %s::text[], %s::bytea[], "
                    "%s::bytea[], %s::uuid[])",
                    [list(c) for c in columns],
                    binary=True,
                )
    return watch.rate(batches * size)


def pg_fill(dsn: str, stream_id: str, count: int) -> None:
    import psycopg

    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        with cur.copy(
            "COPY floor_events (stream_id, version, type, data, metadata, event_id) FROM STDIN"
        ) as copy:
            for v in range(1, count + 1):
                copy.write_row(pg_row(stream_id, v))
        conn.commit()


def pg_load_stream(dsn: str, stream_id: str) -> float:
    import psycopg

    with psycopg.connect(dsn) as conn:
        watch = Stopwatch()
        with watch:
            rows = conn.execute(
                "SELECT * FROM floor_events WHERE stream_id = %s ORDER BY version",
                (stream_id,),
                binary=True,
            ).fetchall()
    return watch.rate(len(rows))


def pg_scan(dsn: str, page: int = 1000) -> float:
    import psycopg

    count = 0
    position = 0
    with psycopg.connect(dsn) as conn:
        watch = Stopwatch()
        with watch:
            while True:
                rows = conn.execute(
                    "SELECT * FROM floor_events WHERE position > %s ORDER BY position LIMIT %s",
                    (position, page),
                    binary=True,
                ).fetchall()
                if not rows:
                    break
                count += len(rows)
                position = rows[-1][0]
    return watch.rate(count)


# -- NATS JetStream: nats-py in plain asyncio (no Trio, no bridge) ----------------------


async def _nats_stream(url: str) -> tuple[Any, Any, str]:
    import nats

    client = await nats.connect(url)
    js = client.jetstream()
    name = f"FLOOR{uuid.uuid4().hex[:8].upper()}"
    await js.add_stream(name=name, subjects=[f"{name}.>"], storage="file")
    return client, js, name


def nats_single_publishes(url: str, count: int, streams: int) -> tuple[float, Stopwatch]:
    """One publish per event, each with a message id and the expected last subject
    sequence (the same optimistic check eskit makes), waiting for each ack."""
    import asyncio

    async def main() -> tuple[float, Stopwatch]:
        client, js, name = await _nats_stream(url)
        last = [0] * streams
        payload = payload_bytes()
        watch = Stopwatch()
        with watch:
            for i in range(count):
                started = time.perf_counter()
                s = i % streams
                ack = await js.publish(
                    f"{name}.s{s}",
                    payload,
                    headers={
                        "Nats-Msg-Id": str(uuid.uuid4()),
                        "Nats-Expected-Last-Subject-Sequence": str(last[s]),
                    },
                )
                last[s] = ack.seq
                watch.latencies.append(time.perf_counter() - started)
        await js.delete_stream(name)
        await client.close()
        return watch.rate(count), watch

    return asyncio.run(main())


def nats_batches(url: str, batches: int, size: int) -> float:
    """``size`` pipelined publishes per batch (acks awaited together), events per second.

    Not atomic: the raw driver has no atomic batch helper, so this floor is the
    cheapest way to move the same bytes, an upper bound for an atomic batch.
    """
    import asyncio

    async def main() -> float:
        client, js, name = await _nats_stream(url)
        payload = payload_bytes()
        watch = Stopwatch()
        with watch:
            for b in range(batches):
                await asyncio.gather(
                    *(
                        js.publish(
                            f"{name}.b{b}", payload, headers={"Nats-Msg-Id": str(uuid.uuid4())}
                        )
                        for _ in range(size)
                    )
                )
        await js.delete_stream(name)
        await client.close()
        return watch.rate(batches * size)

    return asyncio.run(main())


def nats_scan(url: str, count: int) -> float:
    """Read ``count`` stored messages in order with an ordered push consumer (undecoded)."""
    import asyncio

    async def main() -> float:
        client, js, name = await _nats_stream(url)
        payload = payload_bytes()
        for start in range(0, count, 1000):
            await asyncio.gather(
                *(js.publish(f"{name}.s{start}", payload) for _ in range(min(1000, count - start)))
            )
        done = asyncio.Event()
        seen = 0

        async def on_message(message: Any) -> None:
            nonlocal seen
            seen += 1
            if seen >= count:
                done.set()

        watch = Stopwatch()
        with watch:
            subscription = await js.subscribe(f"{name}.>", cb=on_message, ordered_consumer=True)
            await done.wait()
        await subscription.unsubscribe()
        await js.delete_stream(name)
        await client.close()
        return watch.rate(count)

    return asyncio.run(main())
