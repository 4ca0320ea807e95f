"""Per-backend runs: eskit's cases, their floors and their peers, in one process.

Each case opens a fresh store (a new file, schema or namespace), so cases do not see
each other's data; floors and peers use the same server with the same durability.
"""

from __future__ import annotations

import contextlib
import itertools
import secrets
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import attrs
import trio

from benchmarks import cases, catchup, dcb_append, floors, http_command, peer
from benchmarks.domain import codec
from benchmarks.harness import Result, Stopwatch
from engine import MemoryStore
from engine.dcb.memory import MemoryDcbStore

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
    catchup_events: int
    #: The peer commits once per event, so it catches up fewer events.
    catchup_peer_events: int
    dcb_appends: int
    dcb_per_client: int
    #: Seconds of wrk load per HTTP server (benchmarks/http_command.py).
    http_seconds: float

    @classmethod
    def quick(cls) -> Sizes:
        return cls(200, 50, 64, 4, 10, 2_000, 10_000, 256, 10_000, 500, 300, 20, 2.0)

    @classmethod
    def full(cls) -> Sizes:
        # 64 x 200 concurrent commands: long enough (1-2 s) that one run is not noise.
        return cls(
            3_000, 100, 64, 200, 100, 10_000, 100_000, 12_800, 100_000, 5_000, 3_000, 200, 10.0
        )

    def as_dict(self) -> dict[str, int]:
        return attrs.asdict(self)


StoreOpener = Callable[[], AbstractAsyncContextManager[Any]]


@attrs.frozen(kw_only=True)
class Catchup:
    """How to run ``projection.catchup`` on one backend (see benchmarks/catchup.py).

    ``run(store, events)`` fills the opened store and catches a runner up.
    """

    run: Callable[[Any, int], Awaitable[float]]
    floor: Callable[[int], float] | None = None
    peer: Callable[[int], float] | None = None
    notes: str = ""


@attrs.frozen(kw_only=True)
class DcbAppend:
    """How to run ``dcb.append_conditional`` on one backend (see benchmarks/dcb_append.py).

    ``peer(appends, clients, per_client)`` returns the single-client and concurrent rates.
    """

    open_store: StoreOpener
    floor_single: Callable[[int], tuple[float, Stopwatch]] | None = None
    floor_clients: Callable[[int, int], float] | None = None
    peer: Callable[[int, int, int], tuple[float, float]] | None = None


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
    catchup: Catchup | None = None
    dcb: DcbAppend | None = None


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
    if backend.catchup is not None:
        yield from _catchup(backend, backend.catchup, sizes)
    if backend.dcb is not None:
        yield from _dcb_append(backend.name, backend.dcb, sizes)


def _catchup(backend: Backend, case: Catchup, sizes: Sizes) -> Iterator[Result]:
    events = sizes.catchup_events

    async def run() -> float:
        async with backend.open_store() as store:
            return await case.run(store, events)

    peer_events = sizes.catchup_peer_events
    yield Result(
        "projection.catchup",
        backend.name,
        "events",
        _trio(run),
        case.floor(events) if case.floor else None,
        case.peer(peer_events) if case.peer else None,
        notes=(
            f"{events} events, batches of {catchup.BATCH}, one upsert each, "
            "committed with the checkpoint"
            + (f"; peer: {peer_events} events, one transaction each" if case.peer else "")
            + (f"; {case.notes}" if case.notes else "")
        ),
    )


def _dcb_append(name: str, case: DcbAppend, sizes: Sizes) -> Iterator[Result]:
    appends, clients, per_client = sizes.dcb_appends, dcb_append.CLIENTS, sizes.dcb_per_client

    async def single() -> Stopwatch:
        async with case.open_store() as store:
            return await dcb_append.single(store, appends)

    async def concurrent(clients: int, per_client: int) -> float:
        async with case.open_store() as store:
            return await dcb_append.concurrent(store, clients, per_client)

    watch = _trio(single)
    peer_single, peer_clients = (
        case.peer(appends, clients, per_client) if case.peer else (None, None)
    )
    yield Result(
        "dcb.append_conditional",
        name,
        "appends",
        watch.rate(appends),
        case.floor_single(appends)[0] if case.floor_single else None,
        peer_single,
        watch.percentile_ms(0.5),
        watch.percentile_ms(0.99),
        notes=f"{appends} single-event appends, condition on the event's own tag",
    )
    yield Result(
        f"dcb.append_conditional.c{clients}",
        name,
        "appends",
        _trio(concurrent, clients, per_client),
        case.floor_clients(clients, per_client) if case.floor_clients else None,
        peer_clients,
        notes=f"{clients} clients x {per_client} appends, one tag each",
    )


# -- the backends ---------------------------------------------------------------------


def memory(folder: Path, sizes: Sizes) -> Iterator[Result]:
    """The in-memory store (with the codec, as a database backend would); no floor; the
    peer is eventsourcing's POPO persistence."""

    @contextlib.asynccontextmanager
    async def open_store() -> AsyncIterator[Any]:
        yield MemoryStore(codec())

    @contextlib.asynccontextmanager
    async def open_dcb() -> AsyncIterator[Any]:
        yield MemoryDcbStore(codec())

    yield from run_backend(
        Backend(
            "memory",
            open_store,
            peer_env={
                "PERSISTENCE_MODULE": "eventsourcing.popo",
                "AGGREGATE_CACHE_MAXSIZE": "1000",
            },
            catchup=Catchup(
                run=catchup.memory,
                notes="no peer: eventsourcing's runner builds its own application, "
                "and a POPO recorder's events live in the application object that wrote them",
            ),
            dcb=DcbAppend(open_store=open_dcb, peer=dcb_append.memory_peer),
        ),
        sizes,
    )


def sqlite(folder: Path, sizes: Sizes) -> Iterator[Result]:
    """SQLite at its default durability (WAL, synchronous=FULL) on both sides."""
    from engine.dcb.sqlite import open_sqlite_dcb_store
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

    @contextlib.asynccontextmanager
    async def open_dcb() -> AsyncIterator[Any]:
        async with open_sqlite_dcb_store(fresh("eskit-dcb"), codec()) as store:
            yield store

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
            catchup=Catchup(
                run=catchup.sql_database,
                floor=lambda n: catchup.sqlite_floor(fresh("floor-catchup"), n),
                notes="no peer: eventsourcing's SQLite application recorder has no "
                "subscriptions, which its projection runner needs",
            ),
            dcb=DcbAppend(
                open_store=open_dcb,
                floor_single=lambda n: dcb_append.sqlite_single(fresh("floor-dcb"), n),
                floor_clients=lambda c, p: dcb_append.sqlite_clients(fresh("floor-dcb"), c, p),
            ),
        ),
        sizes,
    )


def postgres(folder: Path, sizes: Sizes) -> Iterator[Result]:
    """PostgreSQL with its default durability (fsync on, synchronous commit) on all sides."""
    import psycopg

    from engine.dcb.postgres import open_postgres_dcb_store
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

        def fresh_schema(prefix: str) -> str:
            name = f"{prefix}_{secrets.token_hex(4)}"
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(f"CREATE SCHEMA {name}")
            return name

        @contextlib.asynccontextmanager
        async def open_dcb() -> AsyncIterator[Any]:
            async with open_postgres_dcb_store(
                dsn, codec(), schema=f"d_{secrets.token_hex(4)}"
            ) as store:
                yield store

        peer_schema = fresh_schema("peer")
        peer_env = {
            "PERSISTENCE_MODULE": "eventsourcing.postgres",
            "POSTGRES_DBNAME": "postgres",
            "POSTGRES_HOST": server.host,
            "POSTGRES_PORT": str(server.port),
            "POSTGRES_USER": "postgres",
            "POSTGRES_PASSWORD": "",
            "POSTGRES_SCHEMA": peer_schema,
            "POSTGRES_POOL_SIZE": "10",
            "AGGREGATE_CACHE_MAXSIZE": "1000",
        }

        def peer_catchup(events: int) -> float:
            env = {**peer_env, "POSTGRES_SCHEMA": fresh_schema("peer_catchup")}
            return float(peer.in_env(env, catchup.peer, events))

        def peer_dcb(appends: int, clients: int, per_client: int) -> tuple[float, float]:
            return dcb_append.postgres_peer(peer_env, appends, clients, per_client)

        yield from run_backend(
            Backend(
                "postgres",
                open_store,
                floor_sequential=floor_sequential,
                floor_concurrent=floor_concurrent,
                floor_batch=floor_batch,
                floor_load=floor_load,
                floor_scan=floor_scan,
                peer_env=peer_env,
                catchup=Catchup(
                    run=catchup.sql_database,
                    floor=lambda n: catchup.pg_floor(dsn, n),
                    peer=peer_catchup,
                ),
                dcb=DcbAppend(
                    open_store=open_dcb,
                    floor_single=lambda n: dcb_append.pg_single(dsn, n),
                    floor_clients=lambda c, p: dcb_append.pg_clients(dsn, c, p),
                    peer=peer_dcb,
                ),
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


def http(folder: Path, sizes: Sizes) -> Iterator[Result]:
    """The engine over HTTP under wrk on SQLite and PostgreSQL, each beside the same run's
    in-process ``command.concurrent`` on that store, the same daemon without HTTP, and
    the peer; then the HTTP server beside its floor (benchmarks/http_command.py)."""
    from engine.stores.postgres import open_postgres_store
    from engine.stores.sqlite import open_sqlite_store
    from tests.servers import run_postgres

    wrk = http_command.ensure_wrk()
    if wrk is None:
        print("   http.*: skipped, wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return
    folder.mkdir(parents=True, exist_ok=True)
    seconds = sizes.http_seconds

    async def sqlite_in_process() -> float:
        async with open_sqlite_store(folder / "in-process.db", codec()) as store:
            return await cases.command_concurrent(store, sizes.concurrent_tasks, sizes.per_task)

    yield http_command.command_case(
        wrk,
        folder / "sqlite",
        seconds,
        backend="sqlite",
        store={"backend": "sqlite"},
        in_process=_trio(sqlite_in_process),
        engine_rate=http_command.engine_in_process(folder / "sqlite-in-process", seconds, {}),
        peer_env={
            "PERSISTENCE_MODULE": "eventsourcing.sqlite",
            "SQLITE_DBNAME": str(folder / "peer.db"),
            "AGGREGATE_CACHE_MAXSIZE": "1000",
        },
    )
    with run_postgres(durable=True) as server:
        dsn = server.dsn

        async def pg_in_process() -> float:
            schema = f"h_{secrets.token_hex(4)}"
            async with open_postgres_store(dsn, codec(), schema=schema) as store:
                return await cases.command_concurrent(store, sizes.concurrent_tasks, sizes.per_task)

        def pg_store() -> dict[str, str]:
            return {"backend": "postgres", "dsn": dsn, "schema": f"h_{secrets.token_hex(4)}"}

        peer_schema = f"hpeer_{secrets.token_hex(4)}"
        import psycopg

        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {peer_schema}")
        yield http_command.command_case(
            wrk,
            folder / "postgres",
            seconds,
            backend="postgres",
            store=pg_store(),
            in_process=_trio(pg_in_process),
            engine_rate=http_command.engine_in_process(
                folder / "pg-in-process", seconds, pg_store()
            ),
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
        )
    yield http_command.noop_case(wrk, folder / "noop", seconds)


ALL: dict[str, Callable[[Path, Sizes], Iterator[Result]]] = {
    "memory": memory,
    "sqlite": sqlite,
    "postgres": postgres,
    "nats": nats,
    "http": http,
}
