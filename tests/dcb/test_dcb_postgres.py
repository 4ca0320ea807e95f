"""The DCB store contract on PostgreSQL: every client is its own store (own pool, own
writer, own connections) on the test's fresh schema."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from engine.codec import Codec
from engine.dcb.postgres import PostgresDcbStore, open_postgres_dcb_store
from engine.stores.base import DEFAULT_MAX_EVENT_BYTES
from engine.testing.dcb_contract import DcbBackend, DcbStoreContract
from tests.conftest import PgTarget

#: Small pools: the contract opens up to thirteen stores at once.
POOL_SIZE = 2


def postgres_dcb_backend(pg: PgTarget) -> DcbBackend:
    """Stores on the test's schema of the session's PostgreSQL."""

    @asynccontextmanager
    async def open_store(
        codec: Codec[Any], *, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES
    ) -> AsyncIterator[PostgresDcbStore[Any]]:
        async with open_postgres_dcb_store(
            pg.dsn,
            codec,
            schema=pg.schema,
            max_event_bytes=max_event_bytes,
            max_pool_size=POOL_SIZE,
        ) as store:
            yield store

    return DcbBackend("postgres", open_store)


class TestPostgresDcbStore(DcbStoreContract):
    @pytest.fixture
    def dcb_backend(self, pg: PgTarget) -> DcbBackend:
        return postgres_dcb_backend(pg)
