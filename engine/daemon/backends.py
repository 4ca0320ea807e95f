"""The backends the engine opens, from tables of ``open_*`` factories keyed by the config.

:data:`STORE_BACKENDS`, :data:`BUS_BACKENDS`, :data:`LOCK_BACKENDS` and
:data:`DEAD_LETTER_BACKENDS` map a ``backend = "..."`` name to its opener; one NATS
connection (:func:`open_nats_from_config`) is shared by every NATS backend and by cluster
command routing, and with ``[nats] embedded = true`` it goes to a ``nats-server`` the
engine runs under its supervisor (:mod:`engine.drivers.nats_server`).
"""

from __future__ import annotations

import functools
import logging
import ssl
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import trio

from engine.bus.channel import ChannelEventBus
from engine.codec import Codec
from engine.daemon.config import Config, NatsConfig
from engine.daemon.raw_events import tolerant_codec
from engine.drivers.nats import NatsConnection, open_nats
from engine.drivers.nats_server import EmbeddedNats
from engine.errors import BackendError, ConfigError
from engine.groups import unwrap_lone_errors
from engine.locks.base import LockRegistry
from engine.locks.memory import MemoryLockRegistry
from engine.observability.logging import redact_text
from engine.runners.memory import MemoryDeadLetterStore
from engine.runners.supervisor import RestartPolicy, run_supervised
from engine.stores.base import (
    CheckpointStore,
    DeadLetterStore,
    EventStore,
    SnapshotStore,
    SqlDatabase,
)
from engine.stores.memory import MemoryStore

__all__ = [
    "BUS_BACKENDS",
    "DEAD_LETTER_BACKENDS",
    "LOCK_BACKENDS",
    "NATS_SERVER_POLICY",
    "STORAGE_BUNDLES",
    "STORE_BACKENDS",
    "SnapshotFactory",
    "Storage",
    "backend",
    "nats_connect_options",
    "open_nats_from_config",
    "open_storage",
    "open_store_from_config",
]

logger = logging.getLogger("eskit.engine")


#: How the embedded nats-server is restarted: quickly at first, and the engine stops
#: (with the server's log in the error) when restarting does not help.
NATS_SERVER_POLICY = RestartPolicy(max_restarts=5, window=60.0, backoff_initial=0.2)


def nats_connect_options(nats: NatsConfig) -> dict[str, Any]:
    """The ``nats.connect`` options of ``[nats]``: authentication and TLS.

    Raises:
        ConfigError: A TLS file cannot be read.
    """
    options: dict[str, Any] = {}
    if nats.token:
        options["token"] = nats.token
    if nats.user:
        options["user"] = nats.user
        options["password"] = nats.password
    if nats.credentials:
        options["user_credentials"] = str(Path(nats.credentials).expanduser())
    if nats.nkey_seed:
        options["nkeys_seed"] = str(Path(nats.nkey_seed).expanduser())
    if nats.tls_ca or nats.tls_cert:
        try:
            context = ssl.create_default_context(cafile=nats.tls_ca or None)
            if nats.tls_cert:
                context.load_cert_chain(nats.tls_cert, nats.tls_key or None)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"nats.tls_*: cannot load the TLS files: {exc}") from None
        options["tls"] = context
    return options


@unwrap_lone_errors
@asynccontextmanager
async def open_nats_from_config(config: Config) -> AsyncIterator[NatsConnection | None]:
    """The engine's one NATS connection, or ``None`` when nothing needs NATS.

    With ``nats.embedded`` the connection goes to a ``nats-server`` started here under
    the supervisor (restarted when it exits or fails its health check); the client
    reconnects to it on the same port.
    """
    if not (config.uses_nats() or config.routes_commands()):
        await trio.lowlevel.checkpoint()
        yield None
        return
    name = f"eskit-{config.engine.node_id}"
    if not config.nats.embedded:
        async with open_nats(
            config.nats.url, name=name, **nats_connect_options(config.nats)
        ) as connection:
            yield connection
        return
    server = EmbeddedNats.create(
        config.data_path("nats"), host=config.nats.embedded_host, port=config.nats.embedded_port
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(
            functools.partial(run_supervised, name="nats-server", policy=NATS_SERVER_POLICY),
            server.run,
        )
        try:
            async with open_nats(server.url, name=name) as connection:
                yield connection
        finally:
            nursery.cancel_scope.cancel()


@asynccontextmanager
async def _open_memory(
    config: Config, codec: Codec[Any], nats: NatsConnection | None
) -> AsyncIterator[Any]:
    yield MemoryStore(codec, max_event_bytes=config.store.max_event_bytes)


@asynccontextmanager
async def _open_sqlite(
    config: Config, codec: Codec[Any], nats: NatsConnection | None
) -> AsyncIterator[Any]:
    from engine.stores.sqlite import open_sqlite_store

    path = config.data_path(config.store.path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # engine.data_dir is a file, or under one, or not writable
        reason = (
            "a file is in the way"
            if isinstance(exc, FileExistsError | NotADirectoryError)
            else exc.strerror or str(exc)
        )
        raise ConfigError(
            f"engine.data_dir: cannot create the folder {str(path.parent)!r} of the SQLite "
            f"store: {reason}"
        ) from None
    async with AsyncExitStack() as stack:
        try:
            store = await stack.enter_async_context(
                open_sqlite_store(
                    path,
                    codec,
                    synchronous=config.store.synchronous,
                    max_event_bytes=config.store.max_event_bytes,
                )
            )
        except BackendError as exc:  # not a database, unreadable, corrupt
            raise type(exc)(
                exc.backend, f"cannot open the SQLite store {str(path)!r}: {exc}"
            ) from exc
        yield store


@asynccontextmanager
async def _open_postgres(
    config: Config, codec: Codec[Any], nats: NatsConnection | None
) -> AsyncIterator[Any]:
    from engine.stores.postgres import open_postgres_store

    async with AsyncExitStack() as stack:
        try:
            store = await stack.enter_async_context(
                open_postgres_store(
                    config.store.dsn,
                    codec,
                    schema=config.store.schema,
                    max_event_bytes=config.store.max_event_bytes,
                    min_pool_size=config.store.min_pool_size,
                    max_pool_size=config.store.pool_size,
                    read_dsn=config.store.read_dsn or None,
                    read_pool_size=config.store.read_pool_size,
                    name=f"eskit-{config.engine.node_id}",
                )
            )
        except BackendError as exc:  # unreachable, or the login was refused
            cause = exc.__cause__ or exc
            reason = " ".join(str(cause).split())  # psycopg's message spans lines
            raise type(exc)(
                exc.backend, f"cannot connect to the PostgreSQL store: {redact_text(reason)}"
            ) from exc
        yield store


@asynccontextmanager
async def _open_nats(
    config: Config, codec: Codec[Any], nats: NatsConnection | None
) -> AsyncIterator[Any]:
    from engine.stores.nats import open_nats_store

    if nats is None and config.nats.embedded:
        raise ConfigError(
            "the NATS store of an embedded server can only be opened while the engine runs"
        )
    async with open_nats_store(
        nats if nats is not None else config.nats.url,
        codec,
        namespace=config.store.namespace,
        max_event_bytes=config.store.max_event_bytes,
        **({} if nats is not None else nats_connect_options(config.nats)),
    ) as store:
        yield store


#: ``store.backend`` -> how to open it (STYLE: a table of factories, no string magic).
STORE_BACKENDS: Mapping[
    str, Callable[[Config, Codec[Any], NatsConnection | None], AbstractAsyncContextManager[Any]]
] = {
    "memory": _open_memory,
    "sqlite": _open_sqlite,
    "postgres": _open_postgres,
    "nats": _open_nats,
}


def open_store_from_config(
    config: Config, codec: Codec[Any], *, nats: NatsConnection | None = None
) -> AbstractAsyncContextManager[Any]:
    """Open the event store the config names (also used by the CLI's offline commands).

    Args:
        config: The configuration.
        codec: The events' codec.
        nats: A NATS connection to share; without one a NATS store opens its own.
    """
    return STORE_BACKENDS[config.store.backend](config, codec, nats)


#: Makes the snapshot store of one state type.
SnapshotFactory = Callable[[type[Any]], SnapshotStore[Any]]


@attrs.frozen(kw_only=True)
class Storage:
    """What a store backend provides, typed: the engine asks the bundle, never the store.

    Attributes:
        events: The event store.
        reader: The same events decoded by a codec that shows unknown types raw
            (``GET /events``); the event store itself where it holds only our types.
        checkpoints: Where runners save their checkpoints, beside the events; ``None``
            for a backend that keeps none (the engine keeps them in memory).
        snapshots: Makes a snapshot store per state type; ``None`` without snapshots.
        dead_letters: Where runners park the events they give up on, beside the events
            (same file, schema or namespace), so every node sees the same ones.
        sql: The store's SQL database for read models in the same transactions;
            ``None`` for a backend that is not SQL.
        native: The backend's own store object, for what shares its connections (the
            PostgreSQL advisory locks).
    """

    events: EventStore[Any]
    reader: EventStore[Any]
    checkpoints: CheckpointStore | None
    snapshots: SnapshotFactory | None
    dead_letters: DeadLetterStore
    sql: SqlDatabase | None
    native: object


def _memory_storage(config: Config, codec: Codec[Any], store: Any, nats: object) -> Storage:
    return Storage(
        events=store,
        reader=store,
        checkpoints=None,
        snapshots=None,
        dead_letters=MemoryDeadLetterStore(),
        sql=None,
        native=store,
    )


def _sqlite_storage(config: Config, codec: Codec[Any], store: Any, nats: object) -> Storage:
    from engine.stores.sqlite_dead_letters import sqlite_dead_letters

    return Storage(
        events=store,
        reader=attrs.evolve(store, codec=tolerant_codec(codec)),
        checkpoints=store,
        snapshots=store.snapshots,
        dead_letters=sqlite_dead_letters(store),
        sql=store.transactional(),
        native=store,
    )


def _postgres_storage(config: Config, codec: Codec[Any], store: Any, nats: object) -> Storage:
    from engine.stores.postgres_dead_letters import postgres_dead_letters

    return Storage(
        events=store,
        reader=attrs.evolve(store, codec=tolerant_codec(codec)),
        checkpoints=store,
        snapshots=store.snapshots,
        dead_letters=postgres_dead_letters(store),
        sql=store.transactional(),
        native=store,
    )


def _nats_storage(
    config: Config, codec: Codec[Any], store: Any, nats: NatsConnection | None
) -> Storage:
    from engine.stores.nats_dead_letters import nats_dead_letters

    if nats is None:
        raise ConfigError("the NATS store's dead letters need the engine's NATS connection")
    return Storage(
        events=store,
        reader=attrs.evolve(store, codec=tolerant_codec(codec)),
        checkpoints=store,
        snapshots=store.snapshots,
        dead_letters=nats_dead_letters(nats, store.namespace),
        sql=None,
        native=store,
    )


#: ``store.backend`` -> the bundle of what its opened store provides.
STORAGE_BUNDLES: Mapping[
    str, Callable[[Config, Codec[Any], Any, NatsConnection | None], Storage]
] = {
    "memory": _memory_storage,
    "sqlite": _sqlite_storage,
    "postgres": _postgres_storage,
    "nats": _nats_storage,
}


@asynccontextmanager
async def open_storage(
    config: Config, codec: Codec[Any], *, nats: NatsConnection | None = None
) -> AsyncIterator[Storage]:
    """Open the store the config names and yield the bundle of what it provides.

    Raises:
        ConfigError: An unknown backend, or the NATS backend without a connection.
    """
    bundle = backend(STORAGE_BUNDLES, "store", config.store.backend)
    async with open_store_from_config(config, codec, nats=nats) as store:
        yield bundle(config, codec, store, nats)


@asynccontextmanager
async def _open_memory_bus(config: Config, nats: NatsConnection | None) -> AsyncIterator[Any]:
    await trio.lowlevel.checkpoint()
    yield ChannelEventBus()


@asynccontextmanager
async def _open_nats_bus(config: Config, nats: NatsConnection | None) -> AsyncIterator[Any]:
    from engine.bus.nats import open_nats_event_bus

    assert nats is not None  # the engine opens NATS whenever a backend is nats
    async with open_nats_event_bus(nats, namespace=config.store.namespace) as bus:
        yield bus


#: ``bus.backend`` -> how to open it, given the shared NATS connection.
BUS_BACKENDS: Mapping[
    str, Callable[[Config, NatsConnection | None], AbstractAsyncContextManager[Any]]
] = {
    "memory": _open_memory_bus,
    "nats": _open_nats_bus,
}


@asynccontextmanager
async def _open_memory_locks(
    config: Config, nats: NatsConnection | None, store: Any
) -> AsyncIterator[LockRegistry]:
    await trio.lowlevel.checkpoint()
    yield MemoryLockRegistry(config.engine.node_id)


@asynccontextmanager
async def _open_nats_locks(
    config: Config, nats: NatsConnection | None, store: Any
) -> AsyncIterator[LockRegistry]:
    from engine.locks.nats import open_nats_lock_registry

    assert nats is not None  # the engine opens NATS whenever a backend is nats
    async with open_nats_lock_registry(
        nats,
        namespace=config.store.namespace,
        owner_id=config.engine.node_id,
        ttl=config.locks.ttl,
    ) as registry:
        yield registry


@asynccontextmanager
async def _open_postgres_locks(
    config: Config, nats: NatsConnection | None, store: Any
) -> AsyncIterator[LockRegistry]:
    from engine.locks.postgres import open_pg_lock_registry

    # Advisory locks end with their session: a dead node's leases go when PostgreSQL
    # notices its connection is gone; ``locks.ttl`` bounds how long that may take.
    async with open_pg_lock_registry(
        config.store.dsn,
        schema=config.store.schema,
        owner_id=config.engine.node_id,
        check_interval=max(config.locks.ttl / 3, 0.1),
        statement_timeout=config.locks.ttl,
        application_name=f"eskit-locks-{config.engine.node_id}",
    ) as registry:
        yield registry


#: ``locks.backend`` -> how to open it, given the shared NATS connection and the store.
LOCK_BACKENDS: Mapping[
    str, Callable[[Config, NatsConnection | None, Any], AbstractAsyncContextManager[LockRegistry]]
] = {
    "memory": _open_memory_locks,
    "nats": _open_nats_locks,
    "postgres": _open_postgres_locks,
}


def _memory_dead_letters(
    config: Config, store: Any, nats: NatsConnection | None
) -> DeadLetterStore:
    return MemoryDeadLetterStore()


def _sqlite_dead_letters(
    config: Config, store: Any, nats: NatsConnection | None
) -> DeadLetterStore:
    from engine.stores.sqlite_dead_letters import sqlite_dead_letters

    return sqlite_dead_letters(store)


def _postgres_dead_letters(
    config: Config, store: Any, nats: NatsConnection | None
) -> DeadLetterStore:
    from engine.stores.postgres_dead_letters import postgres_dead_letters

    return postgres_dead_letters(store)


def _nats_dead_letters(config: Config, store: Any, nats: NatsConnection | None) -> DeadLetterStore:
    from engine.stores.nats_dead_letters import nats_dead_letters

    assert nats is not None  # the engine opens NATS whenever a backend is nats
    return nats_dead_letters(nats, store.namespace)


#: ``store.backend`` -> where runners park the events they give up on: beside the
#: events (same file, schema or namespace), so dead letters survive a restart and every
#: node of a cluster sees the same ones. Given the opened (raw) store.
DEAD_LETTER_BACKENDS: Mapping[
    str, Callable[[Config, Any, NatsConnection | None], DeadLetterStore]
] = {
    "memory": _memory_dead_letters,
    "sqlite": _sqlite_dead_letters,
    "postgres": _postgres_dead_letters,
    "nats": _nats_dead_letters,
}


def backend(table: Mapping[str, Any], section: str, name: str) -> Any:
    """The factory of ``name`` in a table of backends.

    Raises:
        ConfigError: No backend of that name (the error names the ones there are).
    """
    factory = table.get(name)
    if factory is None:
        known = ", ".join(sorted(table))
        raise ConfigError(f"{section}.backend: {name!r} is not available (have: {known})")
    return factory
