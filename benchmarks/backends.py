"""Per-backend runs: eskit's cases, their floors and their peers, in one process.

Each case opens a fresh store (a new file, schema or namespace), so cases do not see
each other's data; floors and peers use the same server with the same durability.
"""

from __future__ import annotations

import contextlib
import itertools
import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import attrs
import trio

from benchmarks import cases, floors, peer
from benchmarks.domain import codec
from benchmarks.harness import Result, Stopwatch
from engine import MemoryStore

#: Concurrency levels of the command-throughput curve (benchmarks/README.md plots it).
CONCURRENCY = (1, 4, 16, 64)


@attrs.frozen
class Sizes:
    """How much work each case does."""

    sequential: int
    streams: int
    concurrent_tasks: int
    per_task: int
    batches: int
    stream_events: int
    read_all_events: int
    curve_commands: int

    @classmethod
    def quick(cls) -> Sizes:
        return cls(200, 50, 64, 4, 10, 2_000, 10_000, 256)

    @classmethod
    def full(cls) -> Sizes:
        return cls(3_000, 100, 64, 50, 100, 10_000, 100_000, 3_200)

    def as_dict(self) -> dict[str, int]:
        return attrs.asdict(self)


StoreOpener = Callable[[], AbstractAsyncContextManager[Any]]


@attrs.frozen
class Backend:
    """How to run the cases on one backend, and its floors and peer.

    ``open_store()`` opens a fresh, empty store each call. Floors and peers are
    callables returning what the harness records (or ``None`` where none applies).
    """

    name: str
    open_store: StoreOpener
    floor_sequential: Callable[[int, int], tuple[float, Stopwatch]] | None = None
    floor_concurrent: Callable[[int, int], float] | None = None
    floor_batch: Callable[[int, int], float] | None = None
    floor_load: Callable[[int], float] | None = None
    floor_scan: Callable[[int], float] | None = None
    peer_env: dict[str, str] | None = None


def _trio(func: Callable[..., Any], *args: Any) -> Any:
    return trio.run(func, *args)


def run_backend(backend: Backend, sizes: Sizes) -> Iterator[Result]:
    """Every case on ``backend``, each beside its floor and peer."""
    name = backend.name
    env = backend.peer_env

    async def sequential() -> tuple[float, Stopwatch]:
        async with backend.open_store() as store:
            return await cases.command_sequential(store, sizes.sequential, sizes.streams)

    rate, watch = _trio(sequential)
    floor = (
        backend.floor_sequential(sizes.sequential, sizes.streams)
        if backend.floor_sequential
        else None
    )
    peer_rate = (
        peer.in_env(env, peer.sequential, sizes.sequential, sizes.streams)[0] if env else None
    )
    yield Result(
        "command.sequential",
        name,
        "commands",
        rate,
        floor[0] if floor else None,
        peer_rate,
        watch.percentile_ms(0.5),
        watch.percentile_ms(0.99),
    )

    async def concurrent(tasks: int, per_task: int) -> float:
        async with backend.open_store() as store:
            return await cases.command_concurrent(store, tasks, per_task)

    tasks, per_task = sizes.concurrent_tasks, sizes.per_task
    yield Result(
        "command.concurrent",
        name,
        "commands",
        _trio(concurrent, tasks, per_task),
        backend.floor_concurrent(tasks, per_task) if backend.floor_concurrent else None,
        peer.in_env(env, peer.concurrent, tasks, per_task) if env else None,
        notes=f"{tasks} tasks x {per_task} commands, one stream each",
    )
    for level in CONCURRENCY:
        each = max(1, sizes.curve_commands // level)
        yield Result(
            f"command.curve.c{level}",
            name,
            "commands",
            _trio(concurrent, level, each),
            notes=f"{level} concurrent tasks",
        )

    async def batch() -> float:
        async with backend.open_store() as store:
            return await cases.append_batch(store, sizes.batches, 100)

    yield Result(
        "append.batch100",
        name,
        "events",
        _trio(batch),
        backend.floor_batch(sizes.batches, 100) if backend.floor_batch else None,
    )

    async def load() -> float:
        async with backend.open_store() as store:
            await cases.fill_stream(store, "long", sizes.stream_events)
            return await cases.load_stream(store, "long", sizes.stream_events)

    yield Result(
        "load.stream10k",
        name,
        "events",
        _trio(load),
        backend.floor_load(sizes.stream_events) if backend.floor_load else None,
        peer.in_env(env, peer.load_stream, sizes.stream_events) if env else None,
        notes=f"{sizes.stream_events} events, fresh handler (no cache), decoded and folded",
    )

    async def scan() -> float:
        async with backend.open_store() as store:
            for i in range(0, sizes.read_all_events, 500):
                await cases.fill_stream(store, f"s-{i}", min(500, sizes.read_all_events - i))
            return await cases.read_all(store, sizes.read_all_events)

    yield Result(
        "read_all",
        name,
        "events",
        _trio(scan),
        backend.floor_scan(sizes.read_all_events) if backend.floor_scan else None,
        notes=f"{sizes.read_all_events} events, pages of 1000, decoded",
    )


# -- the backends ---------------------------------------------------------------------


def memory(folder: Path, sizes: Sizes) -> Iterator[Result]:
    """The in-memory store (with the codec, as a database backend would); no floor; the
    peer is eventsourcing's POPO persistence."""

    @contextlib.asynccontextmanager
    async def open_store() -> AsyncIterator[Any]:
        yield MemoryStore(codec())

    yield from run_backend(
        Backend(
            "memory",
            open_store,
            peer_env={
                "PERSISTENCE_MODULE": "eventsourcing.popo",
                "AGGREGATE_CACHE_MAXSIZE": "1000",
            },
        ),
        sizes,
    )


def sqlite(folder: Path, sizes: Sizes) -> Iterator[Result]:
    """SQLite at its default durability (WAL, synchronous=FULL) on both sides."""
    from engine.stores.sqlite import open_sqlite_store

    folder.mkdir(parents=True, exist_ok=True)
    counter = itertools.count()

    @contextlib.asynccontextmanager
    async def open_store() -> AsyncIterator[Any]:
        async with open_sqlite_store(folder / f"eskit-{next(counter)}.db", codec()) as store:
            yield store

    def fresh(prefix: str) -> Path:
        return folder / f"{prefix}-{next(counter)}.db"

    def floor_load(count: int) -> float:
        path = fresh("floor-load")
        floors.sqlite_fill(path, "long", count)
        return floors.sqlite_load_stream(path, "long")

    def floor_scan(count: int) -> float:
        path = fresh("floor-scan")
        for i in range(0, count, 1000):
            floors.sqlite_fill(path, f"s-{i}", min(1000, count - i))
        return floors.sqlite_scan(path)

    peer_db = folder / "peer.db"
    yield from run_backend(
        Backend(
            "sqlite",
            open_store,
            floor_sequential=lambda n, s: floors.sqlite_single_inserts(fresh("floor-seq"), n, s),
            # SQLite has one writer: its best concurrency for one-row transactions is one.
            floor_concurrent=lambda t, p: floors.sqlite_single_inserts(
                fresh("floor-conc"), t * p, t
            )[0],
            floor_batch=lambda b, n: floors.sqlite_batch(fresh("floor-batch"), b, n),
            floor_load=floor_load,
            floor_scan=floor_scan,
            peer_env={
                "PERSISTENCE_MODULE": "eventsourcing.sqlite",
                "SQLITE_DBNAME": str(peer_db),
                "AGGREGATE_CACHE_MAXSIZE": "1000",
            },
        ),
        sizes,
    )


def postgres(folder: Path, sizes: Sizes) -> Iterator[Result]:
    """PostgreSQL with its default durability (fsync on, synchronous commit) on all sides."""
    import psycopg

    from engine.stores.postgres import open_postgres_store
    from tests.servers import run_postgres

    with run_postgres(durable=True) as server:
        dsn = server.dsn

        @contextlib.asynccontextmanager
        async def open_store() -> AsyncIterator[Any]:
            async with open_postgres_store(
                dsn, codec(), schema=f"b_{secrets.token_hex(4)}"
            ) as store:
                yield store

        def floor_concurrent(tasks: int, per_task: int) -> float:
            # The raw driver at its best concurrency (measured: more connections than
            # cores keeps the WAL flusher busy); 8 connections, the same total rows.
            floors.pg_setup(dsn)
            return floors.pg_concurrent_inserts(dsn, 8, max(1, tasks * per_task // 8))

        def floor_load(count: int) -> float:
            floors.pg_setup(dsn)
            floors.pg_fill(dsn, "long", count)
            return floors.pg_load_stream(dsn, "long")

        def floor_scan(count: int) -> float:
            floors.pg_setup(dsn)
            for i in range(0, count, 1000):
                floors.pg_fill(dsn, f"s-{i}", min(1000, count - i))
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute("VACUUM ANALYZE floor_events")
            return floors.pg_scan(dsn)

        def floor_sequential(n: int, streams: int) -> tuple[float, Stopwatch]:
            floors.pg_setup(dsn)
            return floors.pg_single_inserts(dsn, n, streams)

        def floor_batch(batches: int, size: int) -> float:
            floors.pg_setup(dsn)
            return floors.pg_batch(dsn, batches, size)

        peer_schema = f"peer_{secrets.token_hex(4)}"
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {peer_schema}")
        yield from run_backend(
            Backend(
                "postgres",
                open_store,
                floor_sequential=floor_sequential,
                floor_concurrent=floor_concurrent,
                floor_batch=floor_batch,
                floor_load=floor_load,
                floor_scan=floor_scan,
                peer_env={
                    "PERSISTENCE_MODULE": "eventsourcing.postgres",
                    "POSTGRES_DBNAME": "postgres",
                    "POSTGRES_HOST": server.host,
                    "POSTGRES_PORT": str(server.port),
                    "POSTGRES_USER": "postgres",
                    "POSTGRES_PASSWORD": "",
                    "POSTGRES_SCHEMA": peer_schema,
                    "POSTGRES_POOL_SIZE": "10",
                    "AGGREGATE_CACHE_MAXSIZE": "1000",
                },
            ),
            sizes,
        )


def nats(folder: Path, sizes: Sizes) -> Iterator[Result]:
    """NATS JetStream (file storage, sync_interval always); the floor is nats-py in plain
    asyncio; eventsourcing has no NATS persistence, so there is no peer."""
    from engine.stores.nats import open_nats_store
    from tests.servers import run_nats

    with run_nats() as server:

        @contextlib.asynccontextmanager
        async def open_store() -> AsyncIterator[Any]:
            namespace = f"B{secrets.token_hex(4).upper()}"
            async with open_nats_store(server.url, codec(), namespace=namespace) as store:
                yield store

        yield from run_backend(
            Backend(
                "nats",
                open_store,
                floor_sequential=lambda n, s: floors.nats_single_publishes(server.url, n, s),
                floor_batch=lambda b, n: floors.nats_batches(server.url, b, n),
                floor_scan=lambda count: floors.nats_scan(server.url, count),
            ),
            sizes,
        )


ALL: dict[str, Callable[[Path, Sizes], Iterator[Result]]] = {
    "memory": memory,
    "sqlite": sqlite,
    "postgres": postgres,
    "nats": nats,
}
