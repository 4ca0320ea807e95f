"""Quick throughput figures for the PostgreSQL store beside raw psycopg doing the same work.

Run: ``python -m benchmarks.postgres_store_quick [--dsn DSN] [--scale 1.0]``. Without
``--dsn`` it starts the test suite's embedded PostgreSQL (fsync off, like the tests).
Each case runs in a fresh schema. Not a test: it asserts nothing about time.

Cases (events are ``benchmarks.domain.Deposited``, ~200-byte orjson payloads):

* ``seq1``: single-event appends, one after another, over 100 streams.
* ``conc64``: 64 concurrent tasks appending single events, each to its own stream.
* ``batch100``: appends of 100 events, one after another.
* ``read_all``: paging 100k events with ``read_all(limit=1000)``, decoded.

Floors: ``raw sync`` is a plain psycopg loop with no Trio; ``raw trio`` does the same
insert through ``trio.to_thread.run_sync`` (the bridge the driver uses); ``+lock`` adds
the advisory lock the store takes, in a transaction. Raw inserts use the same table and
``INSERT ... SELECT FROM unnest(...)`` with binary array parameters, but do no version
check, no idempotency and no decoding of the result.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import secrets
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import trio

import engine.stores.postgres as pg_store
from benchmarks.domain import Deposited, codec
from engine.events import NewEvent
from engine.stores.encoding import decode_event
from engine.stores.postgres import open_postgres_store
from engine.stores.postgres_sql import Queries

INSERT = (
    "INSERT INTO {s}.events (stream_id, version, type, schema_version, data, metadata, "
    "event_id, recorded_at) SELECT * FROM unnest(%b::text[], %b::int[], %b::text[], "
    "%b::int[], %b::bytea[], %b::bytea[], %b::uuid[], %b::timestamptz[]) RETURNING position"
)
SELECT = (
    "SELECT position, stream_id, version, type, schema_version, data, metadata, event_id, "
    "recorded_at FROM {s}.events WHERE position > %s ORDER BY position LIMIT %s"
)


DATA = codec().encode(Deposited(1)).data


def _params(stream: str, first_version: int, count: int) -> list[Any]:
    data = DATA
    now = dt.datetime.now(dt.UTC)
    return [
        [stream] * count,
        list(range(first_version, first_version + count)),
        ["bench.Deposited"] * count,
        [1] * count,
        [data] * count,
        [b"{}"] * count,
        [uuid.uuid4() for _ in range(count)],
        [now] * count,
    ]


@contextlib.contextmanager
def _schema(dsn: str) -> Iterator[str]:
    name = f"bench_{secrets.token_hex(4)}"
    try:
        yield name
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


async def _migrated(dsn: str, schema: str) -> None:
    async with open_postgres_store(dsn, codec(), schema=schema):
        pass


def raw_sync_seq(dsn: str, n: int, per_append: int) -> float:
    with _schema(dsn) as schema:
        trio.run(_migrated, dsn, schema)
        query = INSERT.format(s=f'"{schema}"')
        with psycopg.connect(dsn, autocommit=True) as conn:
            versions = [0] * 100
            start = time.perf_counter()
            for i in range(n):
                s = i % 100
                conn.execute(query, _params(f"s-{s}", versions[s] + 1, per_append)).fetchall()
                versions[s] += per_append
            return n * per_append / (time.perf_counter() - start)


def raw_trio(dsn: str, tasks: int, per_task: int, per_append: int, lock: bool) -> float:
    """``tasks`` Trio tasks, each inserting through ``to_thread`` on a pooled connection."""
    from psycopg_pool import ConnectionPool

    with _schema(dsn) as schema:
        trio.run(_migrated, dsn, schema)
        query = INSERT.format(s=f'"{schema}"')
        key = Queries.for_schema(schema).append_lock
        with ConnectionPool(dsn, min_size=8, max_size=8, kwargs={"autocommit": True}) as pool:
            pool.wait()

            def insert(stream: str, version: int) -> None:
                with pool.connection() as conn:
                    if lock:
                        with conn.transaction():
                            conn.execute("SELECT pg_advisory_xact_lock(%s)", [key])
                            conn.execute(query, _params(stream, version, per_append)).fetchall()
                    else:
                        conn.execute(query, _params(stream, version, per_append)).fetchall()

            async def main() -> float:
                limiter = trio.CapacityLimiter(8)

                async def worker(t: int) -> None:
                    for i in range(per_task):
                        await trio.to_thread.run_sync(
                            insert, f"t-{t}", i * per_append + 1, limiter=limiter
                        )

                start = time.perf_counter()
                async with trio.open_nursery() as nursery:
                    for t in range(tasks):
                        nursery.start_soon(worker, t)
                return tasks * per_task * per_append / (time.perf_counter() - start)

            return trio.run(main)


def store_appends(dsn: str, tasks: int, per_task: int, per_append: int) -> tuple[float, Any]:
    with _schema(dsn) as schema:

        async def main() -> tuple[float, Any]:
            async with open_postgres_store(dsn, codec(), schema=schema) as store:

                async def worker(t: int) -> None:
                    for i in range(per_task):
                        stream = f"t-{t}" if tasks > 1 else f"s-{i % 100}"
                        await store.append(
                            stream, [NewEvent(Deposited(1)) for _ in range(per_append)]
                        )

                start = time.perf_counter()
                async with trio.open_nursery() as nursery:
                    for t in range(tasks):
                        nursery.start_soon(worker, t)
                rate = tasks * per_task * per_append / (time.perf_counter() - start)
                return rate, store.statistics()

        return trio.run(main)


def read_all_case(dsn: str, total: int) -> dict[str, float]:
    with _schema(dsn) as schema:
        query = SELECT.format(s=f'"{schema}"')

        async def fill() -> None:
            async with open_postgres_store(dsn, codec(), schema=schema) as store:
                for b in range(total // 1000):
                    await store.append(f"r-{b}", [NewEvent(Deposited(1)) for _ in range(1000)])

        async def read() -> float:
            async with open_postgres_store(dsn, codec(), schema=schema) as store:
                position, count = 0, 0
                start = time.perf_counter()
                while page := await store.read_all(after_position=position, limit=1000):
                    count += len(page)
                    position = page[-1].position
                assert count == total
                return count / (time.perf_counter() - start)

        trio.run(fill)
        with psycopg.connect(dsn, autocommit=True) as conn:
            # Steady state: hint bits set and statistics current, as in a live store.
            conn.execute(f'VACUUM ANALYZE "{schema}".events')
        results = {"store": trio.run(read)}
        c = codec()
        for decode in (False, True):
            with psycopg.connect(dsn, autocommit=True) as conn:
                position, count = 0, 0
                start = time.perf_counter()
                while rows := conn.execute(query, [position, 1000], binary=True).fetchall():
                    if decode:
                        for r in rows:
                            decode_event(
                                c,
                                position=r[0],
                                stream_id=r[1],
                                version=r[2],
                                type_name=r[3],
                                schema_version=r[4],
                                data=r[5],
                                metadata=r[6],
                                event_id=r[7],
                                recorded_at=r[8],
                            )
                    count += len(rows)
                    position = rows[-1][0]
                results["raw+decode" if decode else "raw"] = count / (time.perf_counter() - start)
        results["store (again)"] = trio.run(read)
        return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dsn")
    parser.add_argument("--scale", type=float, default=1.0)
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        dsn = args.dsn
        if dsn is None:
            from tests.servers import run_postgres

            dsn = stack.enter_context(run_postgres()).dsn
        s = args.scale
        seq_n, per_task, batches = int(3000 * s), int(50 * s), int(200 * s)

        def row(case: str, what: str, rate: float, note: str = "") -> None:
            print(f"{case:<10} {what:<34} {rate:>12,.0f} ev/s  {note}", flush=True)

        row("seq1", "raw sync psycopg", raw_sync_seq(dsn, seq_n, 1))
        row("seq1", "raw trio (to_thread per insert)", raw_trio(dsn, 1, seq_n, 1, False))
        rate, stats = store_appends(dsn, 1, seq_n, 1)
        row("seq1", "store", rate, f"{stats}")
        row("conc64", "raw trio, no lock", raw_trio(dsn, 64, per_task, 1, False))
        row("conc64", "raw trio +lock", raw_trio(dsn, 64, per_task, 1, True))
        rate, stats = store_appends(dsn, 64, per_task, 1)
        row("conc64", "store (group commit)", rate, f"{stats}")
        pg_store.MAX_GROUP_REQUESTS = 1
        try:
            rate, stats = store_appends(dsn, 64, per_task, 1)
            row("conc64", "store, group commit off", rate, f"{stats}")
        finally:
            pg_store.MAX_GROUP_REQUESTS = 256
        row("batch100", "raw sync psycopg", raw_sync_seq(dsn, batches, 100))
        rate, stats = store_appends(dsn, 1, batches, 100)
        row("batch100", "store", rate)
        for what, rate in read_all_case(dsn, int(100_000 * s)).items():
            row("read_all", what, rate)


if __name__ == "__main__":
    main()
