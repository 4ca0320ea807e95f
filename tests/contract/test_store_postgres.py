"""The event/snapshot/checkpoint store contract on the PostgreSQL backend.

Every ``open_*`` opens its own store (own pool, own writer) on the test's fresh schema,
so concurrent writers and followers in the contract really are separate clients.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from engine.codec import Codec
from engine.stores.base import DEFAULT_MAX_EVENT_BYTES
from engine.stores.postgres import PostgresSnapshotStore, PostgresStore, open_postgres_store
from engine.testing.contract import Backend, EventStoreContract, contract_codec
from tests.conftest import PgTarget

#: Small pools: the contract opens up to eight stores at once.
POOL_SIZE = 4


def postgres_backend(pg: PgTarget) -> Backend:
    """Stores on the test's schema of the session's PostgreSQL."""

    @asynccontextmanager
    async def open_store(
        codec: Codec[Any], *, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES
    ) -> AsyncIterator[PostgresStore[Any]]:
        async with open_postgres_store(
            pg.dsn,
            codec,
            schema=pg.schema,
            max_event_bytes=max_event_bytes,
            max_pool_size=POOL_SIZE,
        ) as store:
            yield store

    @asynccontextmanager
    async def open_snapshots(
        codec: Codec[Any], state_type: type
    ) -> AsyncIterator[PostgresSnapshotStore[Any]]:
        async with open_store(codec) as store:
            yield store.snapshots(state_type)

    @asynccontextmanager
    async def open_checkpoints() -> AsyncIterator[PostgresStore[Any]]:
        async with open_store(contract_codec()) as store:
            yield store

    return Backend("postgres", open_store, open_snapshots, open_checkpoints)


class TestPostgresStoreContract(EventStoreContract):
    @pytest.fixture
    def backend(self, pg: PgTarget) -> Backend:
        return postgres_backend(pg)
