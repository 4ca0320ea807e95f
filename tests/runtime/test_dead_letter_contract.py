"""The dead-letter store contract, run against every store: memory, SQLite (a file),
PostgreSQL (a real server) and NATS JetStream KV (a real nats-server)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from engine.codec import Codec, EventRegistry
from engine.drivers.nats import open_nats
from engine.runners.memory import MemoryDeadLetterStore
from engine.stores.base import DeadLetterStore
from engine.stores.nats_dead_letters import delete_nats_dead_letters, nats_dead_letters
from engine.stores.postgres import open_postgres_store
from engine.stores.postgres_dead_letters import postgres_dead_letters
from engine.stores.sqlite import open_sqlite_store
from engine.stores.sqlite_dead_letters import sqlite_dead_letters
from engine.testing.dead_letter_contract import DeadLetterBackend, DeadLetterStoreContract
from tests.conftest import NatsTarget, PgTarget


def _codec() -> Codec[object]:
    return Codec(EventRegistry())


class TestMemoryDeadLetters(DeadLetterStoreContract):
    @pytest.fixture
    def dead_letter_backend(self) -> DeadLetterBackend:
        shared = MemoryDeadLetterStore()

        @asynccontextmanager
        async def open_store() -> AsyncIterator[DeadLetterStore]:
            await trio.lowlevel.checkpoint()
            yield shared

        return DeadLetterBackend("memory", open_store)


class TestSqliteDeadLetters(DeadLetterStoreContract):
    @pytest.fixture
    def dead_letter_backend(self, tmp_path: Path) -> DeadLetterBackend:
        path = tmp_path / "events.db"

        @asynccontextmanager
        async def open_store() -> AsyncIterator[DeadLetterStore]:
            async with open_sqlite_store(path, _codec(), synchronous="NORMAL") as store:
                yield sqlite_dead_letters(store)

        return DeadLetterBackend("sqlite", open_store)


class TestPostgresDeadLetters(DeadLetterStoreContract):
    @pytest.fixture
    def dead_letter_backend(self, pg: PgTarget) -> DeadLetterBackend:
        @asynccontextmanager
        async def open_store() -> AsyncIterator[DeadLetterStore]:
            async with open_postgres_store(pg.dsn, _codec(), schema=pg.schema) as store:
                yield postgres_dead_letters(store)

        return DeadLetterBackend("postgres", open_store)


class TestNatsDeadLetters(DeadLetterStoreContract):
    @pytest.fixture
    async def dead_letter_backend(self, nats: NatsTarget) -> AsyncIterator[DeadLetterBackend]:
        @asynccontextmanager
        async def open_store() -> AsyncIterator[DeadLetterStore]:
            async with open_nats(nats.url) as connection:
                yield nats_dead_letters(connection, nats.namespace)

        yield DeadLetterBackend("nats", open_store)
        with trio.move_on_after(30, shield=True):
            async with open_nats(nats.url) as connection:
                await delete_nats_dead_letters(connection, nats.namespace)
