"""Quick throughput figures of the SQLite store (not a test; the full table is benchmarks/).

Run: /tmp/venv/bin/python -m benchmarks.sqlite_store_quick [FULL|NORMAL]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from engine.events import NewEvent
from engine.stores.sqlite import open_sqlite_store
from engine.testing.contract import Note, contract_codec

TEXT = "x" * 190  # about a 207-byte payload, as in DESIGN.md


def _new(count: int) -> list[NewEvent[Any]]:
    return [NewEvent(Note(TEXT)) for _ in range(count)]


async def run(synchronous: Any) -> None:
    codec = contract_codec()
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        path = Path(tmp) / "bench.db"
        async with open_sqlite_store(path, codec, synchronous=synchronous) as store:
            n = 2000
            start = time.perf_counter()
            for i in range(n):
                await store.append(f"seq-{i % 100}", _new(1))
            seq = n / (time.perf_counter() - start)
            print(f"single-event appends, sequential:      {seq:9.0f} appends/s")

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
            print(
                f"single-event appends, 64 concurrent:   {total / elapsed:9.0f} appends/s"
                f"  ({total} appends in {txns} transactions)"
            )

            batches = 300
            start = time.perf_counter()
            for i in range(batches):
                await store.append(f"batch-{i % 10}", _new(100))
            rate = batches * 100 / (time.perf_counter() - start)
            print(f"100-event batch appends, sequential:   {rate:9.0f} events/s")

            while (await store.head_position()) < 100_000:
                await store.append("fill", _new(1000))
            head = await store.head_position()
            start = time.perf_counter()
            position, seen = 0, 0
            while batch := await store.read_all(after_position=position, limit=1000):
                position = batch[-1].position
                seen += len(batch)
            rate = seen / (time.perf_counter() - start)
            print(f"read_all over {head} events (page 1000): {rate:9.0f} events/s")
            print(f"file: {path.stat().st_size >> 20} MiB, {store.statistics().database}")


if __name__ == "__main__":
    trio.run(run, sys.argv[1] if len(sys.argv) > 1 else "FULL")
