"""Quick throughput figures for the DCB stores (memory, SQLite, PostgreSQL).

Run: ``python -m benchmarks.dcb_quick [--dsn DSN] [--scale 1.0] [--backends ...]``.
Without ``--dsn`` it starts the test suite's embedded PostgreSQL (fsync off, like the
tests). SQLite runs on a temporary file with ``synchronous=FULL`` and ``NORMAL``. Not a
test: it asserts nothing about time.

Cases (events are ``benchmarks.domain.Deposited``, ~200-byte payloads, two tags each):

* ``uncond1``: single-event appends without a condition, one after another.
* ``cond1``: single-event conditional appends, one after another: condition "no event
  tagged ``account:<n>`` after the head" (what a decision appends with).
* ``decide1``: one decision after another: read the account's events (a query on its
  tag), then the conditional append (``DecisionHandler``-style), over 100 accounts.
* ``cond64``: 64 concurrent tasks, each deciding on its own account (read + conditional
  append): group commit at work; counts decisions per second.
* ``hot16``: 16 concurrent tasks deciding on *one* account (every pair conflicts), with
  the handler's retries; counts successful decisions per second.
* ``batch100``: conditional appends of 100 events.
* ``read``: paging the whole log (``read(None, limit=1000)``), decoded; events/s.
"""

from __future__ import annotations

import argparse
import contextlib
import secrets
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import psycopg
import trio

from benchmarks.domain import Deposited, codec
from engine.dcb.base import AppendCondition, DcbEvent, DcbStore, Query
from engine.dcb.handler import DecisionHandler, DecisionModel, DecisionProjection
from engine.dcb.memory import MemoryDcbStore
from engine.dcb.postgres import open_postgres_dcb_store
from engine.dcb.sqlite import open_sqlite_dcb_store

Opener = Callable[[], AbstractAsyncContextManager[DcbStore[Any]]]


def _event(account: int) -> DcbEvent[Any]:
    return DcbEvent(Deposited(1), [f"account:{account}", "bank:1"])


def _model(account: int) -> DecisionModel[int, int, Any]:
    projection: DecisionProjection[int, Any] = DecisionProjection(
        query=Query.of(types=["bench.Deposited"], tags=[f"account:{account}"]),
        initial_state=lambda: 0,
        evolve=lambda balance, event: balance + event.amount,
    )
    return DecisionModel(projection=lambda command: projection, decide=lambda s, c: [_event(c)])


async def _uncond(store: DcbStore[Any], n: int) -> float:
    start = time.perf_counter()
    for i in range(n):
        await store.append([_event(i % 100)])
    return n / (time.perf_counter() - start)


async def _cond(store: DcbStore[Any], n: int) -> float:
    start = time.perf_counter()
    head = await store.head()
    for i in range(n):
        condition = AppendCondition(Query.of(tags=[f"account:{i % 100}"]), after=head)
        head = await store.append([_event(i % 100)], condition)
    return n / (time.perf_counter() - start)


async def _decide(store: DcbStore[Any], n: int) -> float:
    handlers = [DecisionHandler(model=_model(a), store=store) for a in range(100)]
    start = time.perf_counter()
    for i in range(n):
        await handlers[i % 100].handle(i % 100)
    return n / (time.perf_counter() - start)


async def _concurrent(store: DcbStore[Any], tasks: int, per_task: int, hot: bool) -> float:
    async def worker(t: int) -> None:
        account = 0 if hot else 1000 + t
        handler = DecisionHandler(model=_model(account), store=store, max_attempts=10_000)
        for _ in range(per_task):
            await handler.handle(account)

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for t in range(tasks):
            nursery.start_soon(worker, t)
    return tasks * per_task / (time.perf_counter() - start)


async def _batch(store: DcbStore[Any], batches: int) -> float:
    start = time.perf_counter()
    for b in range(batches):
        head = await store.head()
        condition = AppendCondition(Query.of(tags=[f"batch:{b}"]), after=head)
        await store.append([_event(b) for _ in range(100)], condition)
    return batches * 100 / (time.perf_counter() - start)


async def _read(store: DcbStore[Any]) -> float:
    count, after = 0, 0
    start = time.perf_counter()
    while True:
        events, head = await store.read(None, after=after, limit=1000)
        count += len(events)
        if len(events) < 1000:
            break
        after = head
    return count / (time.perf_counter() - start)


async def run_cases(open_store: Opener, scale: float) -> dict[str, float]:
    """Every case on fresh data from ``open_store``; rates per second."""
    n, per_task, batches = int(2000 * scale), int(20 * scale), int(100 * scale)
    results: dict[str, float] = {}
    async with open_store() as store:
        results["uncond1"] = await _uncond(store, n)
        results["cond1"] = await _cond(store, n)
        results["decide1"] = await _decide(store, n)
        results["cond64"] = await _concurrent(store, 64, per_task, hot=False)
        results["hot16"] = await _concurrent(store, 16, per_task, hot=True)
        results["batch100"] = await _batch(store, batches)
        results["read"] = await _read(store)
    return results


def _memory() -> Opener:
    @asynccontextmanager
    async def open_store() -> AsyncIterator[DcbStore[Any]]:
        yield MemoryDcbStore(codec())

    return open_store


def _sqlite(path: Path, synchronous: Any) -> Opener:
    @asynccontextmanager
    async def open_store() -> AsyncIterator[DcbStore[Any]]:
        async with open_sqlite_dcb_store(path, codec(), synchronous=synchronous) as store:
            yield store

    return open_store


def _postgres(dsn: str, schema: str) -> Opener:
    @asynccontextmanager
    async def open_store() -> AsyncIterator[DcbStore[Any]]:
        async with open_postgres_dcb_store(dsn, codec(), schema=schema) as store:
            yield store

    return open_store


@contextlib.contextmanager
def _schema(dsn: str) -> Iterator[str]:
    name = f"bench_{secrets.token_hex(4)}"
    try:
        yield name
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


def main() -> None:
    """Print one row per backend and case."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dsn")
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--backends", default="memory,sqlite-full,sqlite-normal,postgres")
    args = parser.parse_args()
    backends = args.backends.split(",")
    print(f"{'backend':<14} {'case':<9} {'per second':>12}", flush=True)
    with contextlib.ExitStack() as stack:
        openers: dict[str, Opener] = {}
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        if "memory" in backends:
            openers["memory"] = _memory()
        if "sqlite-full" in backends:
            openers["sqlite-full"] = _sqlite(tmp / "full.db", "FULL")
        if "sqlite-normal" in backends:
            openers["sqlite-normal"] = _sqlite(tmp / "normal.db", "NORMAL")
        if "postgres" in backends:
            dsn = args.dsn
            if dsn is None:
                from tests.servers import run_postgres

                dsn = stack.enter_context(run_postgres()).dsn
            openers["postgres"] = _postgres(dsn, stack.enter_context(_schema(dsn)))
        for name, opener in openers.items():
            for case, rate in trio.run(run_cases, opener, args.scale).items():
                print(f"{name:<14} {case:<9} {rate:>12,.0f}", flush=True)


if __name__ == "__main__":
    main()
