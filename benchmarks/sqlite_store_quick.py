"""Quick throughput figures of the SQLite store, each beside the raw sqlite3 floor.

Not a test: the machine is shared and noisy, so compare the ratios of one run.
Run: /tmp/venv/bin/python -m benchmarks.sqlite_store_quick [FULL|NORMAL]
"""

from __future__ import annotations

import sqlite3
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import trio

from engine.events import NewEvent
from engine.stores.sqlite import open_sqlite_store
from engine.testing.contract import Note, contract_codec

TEXT = "x" * 190  # about a 207-byte payload, as in DESIGN.md
PAYLOAD = b'{"text":"' + TEXT.encode() + b'"}'


def _new(count: int) -> list[NewEvent[Any]]:
    return [NewEvent(Note(TEXT)) for _ in range(count)]


def _floor(path: Path, synchronous: str) -> dict[str, float]:
    """The raw sqlite3 module doing the same writes and reads, without eskit."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    conn.execute(
        "CREATE TABLE events (position INTEGER PRIMARY KEY, stream_key INTEGER, version INTEGER,"
        " type TEXT, data BLOB, event_id BLOB, recorded_at INTEGER)"
    )
    conn.execute("CREATE UNIQUE INDEX by_stream ON events (stream_key, version)")
    insert = "INSERT INTO events VALUES (NULL, ?, ?, 'contract.Note', ?, ?, 0)"
    versions = [0] * 100
    floor = {}
    start = time.perf_counter()
    for i in range(2000):
        versions[i % 100] += 1
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(insert, (i % 100, versions[i % 100], PAYLOAD, uuid.uuid4().bytes))
        conn.execute("COMMIT")
    floor["single"] = 2000 / (time.perf_counter() - start)
    start = time.perf_counter()
    for b in range(300):
        rows = [(1000 + b, v, PAYLOAD, uuid.uuid4().bytes) for v in range(100)]
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(insert, rows)
        conn.execute("COMMIT")
    floor["batch"] = 30_000 / (time.perf_counter() - start)
    conn.execute("BEGIN")
    conn.executemany(insert, ((5000, v, PAYLOAD, uuid.uuid4().bytes) for v in range(70_000)))
    conn.execute("COMMIT")
    start, position, seen = time.perf_counter(), 0, 0
    while rows := conn.execute(
        "SELECT * FROM events WHERE position > ? ORDER BY position LIMIT 1000", (position,)
    ).fetchall():
        position, seen = rows[-1][0], seen + len(rows)
    floor["scan"] = seen / (time.perf_counter() - start)
    conn.close()
    return floor


async def run(synchronous: Any) -> None:
    codec = contract_codec()
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        floor = _floor(Path(tmp) / "floor.db", synchronous)
        path = Path(tmp) / "bench.db"
        async with open_sqlite_store(path, codec, synchronous=synchronous) as store:

            def show(what: str, rate: float, unit: str, ref: float | None, extra: str = "") -> None:
                ratio = f"  floor {ref:8.0f} ({rate / ref:4.0%})" if ref else ""
                print(f"{what:40} {rate:8.0f} {unit}{ratio}{extra}")

            n = 2000
            start = time.perf_counter()
            for i in range(n):
                await store.append(f"seq-{i % 100}", _new(1))
            show(
                "single-event appends, sequential",
                n / (time.perf_counter() - start),
                "appends/s",
                floor["single"],
            )

            tasks, per_task = 64, 100
            before = store.statistics().database.transactions

            async def appender(t: int) -> None:
                for _ in range(per_task):
                    await store.append(f"con-{t}", _new(1))

            start = time.perf_counter()
            async with trio.open_nursery() as nursery:
                for t in range(tasks):
                    nursery.start_soon(appender, t)
            elapsed = time.perf_counter() - start
            txns = store.statistics().database.transactions - before
            total = tasks * per_task
            show(
                "single-event appends, 64 concurrent",
                total / elapsed,
                "appends/s",
                floor["single"],
                f"  {total} appends in {txns} transactions",
            )

            start = time.perf_counter()
            for i in range(300):
                await store.append(f"batch-{i % 10}", _new(100))
            show(
                "100-event batch appends, sequential",
                30_000 / (time.perf_counter() - start),
                "events/s ",
                floor["batch"],
            )

            while (await store.head_position()) < 100_000:
                await store.append("fill", _new(1000))
            head = await store.head_position()
            start, position, seen = time.perf_counter(), 0, 0
            while batch := await store.read_all(after_position=position, limit=1000):
                position, seen = batch[-1].position, seen + len(batch)
            show(
                f"read_all over {head} events, page 1000",
                seen / (time.perf_counter() - start),
                "events/s ",
                floor["scan"],
            )
            stats = store.statistics().database
            print(
                f"synchronous={stats.synchronous} journal={stats.journal_mode} file={path.stat().st_size >> 20} MiB"
            )


if __name__ == "__main__":
    trio.run(run, sys.argv[1] if len(sys.argv) > 1 else "FULL")
