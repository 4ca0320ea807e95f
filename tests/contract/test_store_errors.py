"""The backend error policy (engine.testing.error_contract) on SQLite, PostgreSQL and NATS.

Every fault is real: a file that is not a database, a schema dropped under a running
store, a sealed JetStream stream, a loopback proxy that cuts a reply, a port nobody
listens on.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
import trio

from engine.codec import Codec
from engine.dcb.base import DcbStore
from engine.dcb.postgres import open_postgres_dcb_store
from engine.dcb.sqlite import open_sqlite_dcb_store
from engine.drivers.nats import open_nats
from engine.locks.base import LockRegistry
from engine.locks.nats import open_nats_lock_registry
from engine.locks.postgres import open_pg_lock_registry
from engine.stores.base import EventStore
from engine.stores.nats import delete_nats_store, open_nats_store
from engine.stores.nats_layout import Names
from engine.stores.postgres import open_postgres_store
from engine.stores.sqlite import open_sqlite_store
from engine.testing.error_contract import (
    ConnectionErrorContract,
    DcbConnectionErrorContract,
    DcbErrorBackend,
    DcbErrorContract,
    DcbNetworkFaults,
    ErrorBackend,
    LockConnectionErrorContract,
    LockNetworkFaults,
    NetworkFaults,
    StoreErrorContract,
)
from tests.conftest import NatsTarget, PgTarget
from tests.faults.proxy import cut_proxy
from tests.servers import free_port

#: One connection, so that the request after ``cut()`` is on the connection that is cut.
PG_POOL = {"min_pool_size": 1, "max_pool_size": 1}


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/")[0])


# -- SQLite ------------------------------------------------------------------------------


def sqlite_errors(path: Path) -> ErrorBackend:
    """SQLite refuses a file that is not a database."""

    @asynccontextmanager
    async def open_store(codec: Codec[Any]) -> AsyncIterator[EventStore[Any]]:
        async with open_sqlite_store(path / "events.db", codec) as store:
            yield store

    @asynccontextmanager
    async def open_refusing(codec: Codec[Any]) -> AsyncIterator[EventStore[Any]]:
        junk = path / "junk.db"
        junk.write_bytes(b"this is not a database, just text " * 200)
        async with open_sqlite_store(junk, codec) as store:
            yield store

    return ErrorBackend("sqlite", open_store, open_refusing)


class TestSqliteErrors(StoreErrorContract):
    @pytest.fixture
    def error_backend(self, tmp_path: Path) -> ErrorBackend:
        return sqlite_errors(tmp_path)


# -- PostgreSQL --------------------------------------------------------------------------


def _empty_schema(pg: PgTarget) -> None:
    """Drop the store's tables and functions under it (the schema itself stays)."""
    schema = psycopg.sql.Identifier(pg.schema)
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        conn.execute(psycopg.sql.SQL("DROP SCHEMA {} CASCADE").format(schema))
        conn.execute(psycopg.sql.SQL("CREATE SCHEMA {}").format(schema))


def postgres_errors(pg: PgTarget) -> ErrorBackend:
    """PostgreSQL refuses an append once the store's tables were dropped under it."""

    @asynccontextmanager
    async def open_store(codec: Codec[Any]) -> AsyncIterator[EventStore[Any]]:
        async with open_postgres_store(pg.dsn, codec, schema=pg.schema, **PG_POOL) as store:
            yield store

    @asynccontextmanager
    async def open_refusing(codec: Codec[Any]) -> AsyncIterator[EventStore[Any]]:
        async with open_store(codec) as store:
            await trio.to_thread.run_sync(_empty_schema, pg)
            yield store

    return ErrorBackend("postgres", open_store, open_refusing)


def postgres_faults(pg: PgTarget) -> NetworkFaults:
    """A PostgreSQL store through a cutting proxy, and one on a closed port."""
    port = _port(pg.dsn)

    @asynccontextmanager
    async def open_cut_store(
        codec: Codec[Any],
    ) -> AsyncIterator[tuple[EventStore[Any], Callable[[], None]]]:
        async with cut_proxy(port) as proxy:
            dsn = pg.dsn.replace(f":{port}/", f":{proxy.port}/")
            async with open_postgres_store(dsn, codec, schema=pg.schema, **PG_POOL) as store:
                yield store, proxy.arm

    @asynccontextmanager
    async def open_unreachable(codec: Codec[Any]) -> AsyncIterator[EventStore[Any]]:
        dsn = pg.dsn.replace(f":{port}/", f":{free_port()}/")
        async with open_postgres_store(dsn, codec, schema=pg.schema, **PG_POOL) as store:
            yield store

    return NetworkFaults("postgres", open_cut_store, open_unreachable)


class TestPostgresErrors(StoreErrorContract, ConnectionErrorContract):
    @pytest.fixture
    def error_backend(self, pg: PgTarget) -> ErrorBackend:
        return postgres_errors(pg)

    @pytest.fixture
    def network_faults(self, pg: PgTarget) -> NetworkFaults:
        return postgres_faults(pg)


# -- NATS --------------------------------------------------------------------------------


async def _seal(url: str, namespace: str) -> None:
    stream = Names.of(namespace).stream
    async with open_nats(url) as connection:
        info = await connection.api(f"$JS.API.STREAM.INFO.{stream}")
        await connection.api(f"$JS.API.STREAM.UPDATE.{stream}", {**info["config"], "sealed": True})


def nats_errors(target: NatsTarget) -> ErrorBackend:
    """JetStream refuses an append to a sealed stream."""

    @asynccontextmanager
    async def open_store(codec: Codec[Any]) -> AsyncIterator[EventStore[Any]]:
        async with open_nats_store(target.url, codec, namespace=target.namespace) as store:
            yield store

    @asynccontextmanager
    async def open_refusing(codec: Codec[Any]) -> AsyncIterator[EventStore[Any]]:
        async with open_store(codec) as store:
            await _seal(target.url, target.namespace)
            yield store

    return ErrorBackend("nats", open_store, open_refusing)


def nats_faults(target: NatsTarget) -> NetworkFaults:
    """A NATS store through a cutting proxy, and one on a closed port."""
    port = _port(target.url)

    @asynccontextmanager
    async def open_cut_store(
        codec: Codec[Any],
    ) -> AsyncIterator[tuple[EventStore[Any], Callable[[], None]]]:
        async with cut_proxy(port) as proxy:
            url = target.url.replace(f":{port}", f":{proxy.port}")
            async with open_nats_store(url, codec, namespace=target.namespace) as store:
                yield store, proxy.arm

    @asynccontextmanager
    async def open_unreachable(codec: Codec[Any]) -> AsyncIterator[EventStore[Any]]:
        url = f"nats://127.0.0.1:{free_port()}"
        async with open_nats_store(
            url, codec, namespace=target.namespace, connect_timeout=2
        ) as store:
            yield store

    return NetworkFaults("nats", open_cut_store, open_unreachable)


class TestNatsErrors(StoreErrorContract, ConnectionErrorContract):
    @pytest.fixture
    async def error_backend(self, nats: NatsTarget) -> AsyncIterator[ErrorBackend]:
        yield nats_errors(nats)
        with trio.move_on_after(30, shield=True):
            async with open_nats(nats.url) as connection:
                await delete_nats_store(connection, nats.namespace)

    @pytest.fixture
    async def network_faults(self, nats: NatsTarget) -> AsyncIterator[NetworkFaults]:
        yield nats_faults(nats)
        with trio.move_on_after(30, shield=True):
            async with open_nats(nats.url) as connection:
                await delete_nats_store(connection, nats.namespace)


# -- DCB stores ---------------------------------------------------------------------------


def sqlite_dcb_errors(path: Path) -> DcbErrorBackend:
    """SQLite DCB stores: a fresh file, and a file that is not a database."""

    @asynccontextmanager
    async def open_store(codec: Codec[Any]) -> AsyncIterator[DcbStore[Any]]:
        async with open_sqlite_dcb_store(path / "dcb.db", codec) as store:
            yield store

    @asynccontextmanager
    async def open_refusing(codec: Codec[Any]) -> AsyncIterator[DcbStore[Any]]:
        junk = path / "junk-dcb.db"
        junk.write_bytes(b"this is not a database, just text " * 200)
        async with open_sqlite_dcb_store(junk, codec) as store:
            yield store

    return DcbErrorBackend("sqlite", open_store, open_refusing)


class TestSqliteDcbErrors(DcbErrorContract):
    @pytest.fixture
    def dcb_error_backend(self, tmp_path: Path) -> DcbErrorBackend:
        return sqlite_dcb_errors(tmp_path)


def postgres_dcb_errors(pg: PgTarget) -> DcbErrorBackend:
    """PostgreSQL DCB stores: the test's schema, and one whose tables were dropped."""

    @asynccontextmanager
    async def open_store(codec: Codec[Any]) -> AsyncIterator[DcbStore[Any]]:
        async with open_postgres_dcb_store(pg.dsn, codec, schema=pg.schema, **PG_POOL) as store:
            yield store

    @asynccontextmanager
    async def open_refusing(codec: Codec[Any]) -> AsyncIterator[DcbStore[Any]]:
        async with open_store(codec) as store:
            await trio.to_thread.run_sync(_empty_schema, pg)
            yield store

    return DcbErrorBackend("postgres", open_store, open_refusing)


def postgres_dcb_faults(pg: PgTarget) -> DcbNetworkFaults:
    """A PostgreSQL DCB store through a cutting proxy."""
    port = _port(pg.dsn)

    @asynccontextmanager
    async def open_cut_store(
        codec: Codec[Any],
    ) -> AsyncIterator[tuple[DcbStore[Any], Callable[[], None]]]:
        async with cut_proxy(port) as proxy:
            dsn = pg.dsn.replace(f":{port}/", f":{proxy.port}/")
            async with open_postgres_dcb_store(dsn, codec, schema=pg.schema, **PG_POOL) as store:
                yield store, proxy.arm

    return DcbNetworkFaults("postgres", open_cut_store)


class TestPostgresDcbErrors(DcbErrorContract, DcbConnectionErrorContract):
    @pytest.fixture
    def dcb_error_backend(self, pg: PgTarget) -> DcbErrorBackend:
        return postgres_dcb_errors(pg)

    @pytest.fixture
    def dcb_network_faults(self, pg: PgTarget) -> DcbNetworkFaults:
        return postgres_dcb_faults(pg)


# -- lock registries -------------------------------------------------------------------------


@asynccontextmanager
async def _unreachable_nats_locks() -> AsyncIterator[LockRegistry]:
    url = f"nats://127.0.0.1:{free_port()}"
    async with open_nats_lock_registry(url, connect_timeout=2) as registry:
        yield registry


@asynccontextmanager
async def _unreachable_pg_locks() -> AsyncIterator[LockRegistry]:
    dsn = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
    async with open_pg_lock_registry(dsn, statement_timeout=2) as registry:
        yield registry


class TestNatsLockErrors(LockConnectionErrorContract):
    @pytest.fixture
    def lock_network_faults(self) -> LockNetworkFaults:
        return LockNetworkFaults("nats", _unreachable_nats_locks)


class TestPostgresLockErrors(LockConnectionErrorContract):
    @pytest.fixture
    def lock_network_faults(self) -> LockNetworkFaults:
        return LockNetworkFaults("postgres", _unreachable_pg_locks)
