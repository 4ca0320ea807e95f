"""The lock registry contract, run against every registry: memory, NATS KV (a real
nats-server) and PostgreSQL advisory locks (a real PostgreSQL)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import psycopg
import pytest
import trio

from engine.drivers.nats import open_nats
from engine.locks.memory import MemoryLockRegistry
from engine.locks.nats import NATSLockRegistry, delete_nats_lock_bucket, open_nats_lock_registry
from engine.locks.postgres import PgLockRegistry, open_pg_lock_registry
from engine.testing.lock_contract import LockBackend, LockRegistryContract
from tests.conftest import NatsTarget, PgTarget

#: Short enough that loss and takeover stay fast, long enough for a loaded CI machine.
NATS_TTL = 2.0
PG_CHECK_INTERVAL = 0.2


def memory_backend() -> LockBackend:
    """One registry shared by every "node" (a single process has one lock space)."""
    shared = MemoryLockRegistry()

    @asynccontextmanager
    async def open_registry(owner_id: str) -> AsyncIterator[MemoryLockRegistry]:
        yield shared

    async def take_away(registry: MemoryLockRegistry, key: str) -> None:
        await trio.lowlevel.checkpoint()
        assert registry.expire(key)

    return LockBackend("memory", open_registry, take_away)


def nats_backend(target: NatsTarget) -> LockBackend:
    """Each node connects anew to the test's namespace, as separate processes would."""

    @asynccontextmanager
    async def open_registry(owner_id: str) -> AsyncIterator[NATSLockRegistry]:
        async with open_nats_lock_registry(
            target.url, namespace=target.namespace, owner_id=owner_id, ttl=NATS_TTL
        ) as registry:
            yield registry

    async def take_away(registry: NATSLockRegistry, key: str) -> None:
        # Purging the key is what an expiry followed by a takeover looks like to the
        # holder: its next compare-and-set renewal fails.
        async with open_nats(target.url) as connection:
            await connection.api(
                f"$JS.API.STREAM.PURGE.{registry.stream}", {"filter": registry.subject(key)}
            )

    return LockBackend("nats", open_registry, take_away)


async def terminate_backend(dsn: str, pid: int) -> None:
    """``pg_terminate_backend(pid)`` from a connection of its own."""

    def terminate() -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            row = conn.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone()
            assert row is not None
            assert row[0], f"backend {pid} was not terminated"

    await trio.to_thread.run_sync(terminate)


def pg_backend(target: PgTarget) -> LockBackend:
    """Each node has its own lock session on the test's schema."""

    @asynccontextmanager
    async def open_registry(owner_id: str) -> AsyncIterator[PgLockRegistry]:
        async with open_pg_lock_registry(
            target.dsn,
            schema=target.schema,
            owner_id=owner_id,
            check_interval=PG_CHECK_INTERVAL,
        ) as registry:
            yield registry

    async def take_away(registry: PgLockRegistry, key: str) -> None:
        pid = registry.statistics().backend_pid
        assert pid is not None
        await terminate_backend(target.dsn, pid)

    return LockBackend("postgres", open_registry, take_away)


class TestMemoryLocks(LockRegistryContract):
    @pytest.fixture
    def lock_backend(self) -> LockBackend:
        return memory_backend()


class TestNatsLocks(LockRegistryContract):
    @pytest.fixture
    async def lock_backend(self, nats: NatsTarget) -> AsyncIterator[LockBackend]:
        yield nats_backend(nats)
        with trio.move_on_after(30, shield=True):
            async with open_nats(nats.url) as connection:
                await delete_nats_lock_bucket(connection, nats.namespace)


class TestPgLocks(LockRegistryContract):
    @pytest.fixture
    def lock_backend(self, pg: PgTarget) -> LockBackend:
        return pg_backend(pg)
