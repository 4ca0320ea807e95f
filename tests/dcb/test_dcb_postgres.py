"""The DCB store contract on PostgreSQL: every client is its own store (own pool, own
writer, own connections) on the test's fresh schema."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from engine.codec import Codec
from engine.dcb.base import DcbEvent, Query
from engine.dcb.postgres import PostgresDcbStore, open_postgres_dcb_store
from engine.events import NewEvent
from engine.stores.base import DEFAULT_MAX_EVENT_BYTES
from engine.stores.postgres import open_postgres_store
from engine.testing.contract import Note, contract_codec
from engine.testing.dcb_contract import Alpha, DcbBackend, DcbStoreContract, dcb_contract_codec
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


async def test_dcb_tables_share_a_schema_with_the_event_store(pg: PgTarget) -> None:
    """The event store and the DCB store live in one schema without touching each other."""
    async with (
        open_postgres_store(pg.dsn, contract_codec(), schema=pg.schema, max_pool_size=2) as events,
        open_postgres_dcb_store(
            pg.dsn, dcb_contract_codec(), schema=pg.schema, max_pool_size=2
        ) as dcb,
    ):
        await events.append("s-1", [NewEvent(Note("stream event"))])
        position = await dcb.append([DcbEvent(Alpha("tagged"), ["k"])])
        assert [e.data for e in await events.load("s-1")] == [Note("stream event")]
        assert await events.head_position() == 1
        assert await dcb.read() == ([await _only(dcb)], position)


async def _only(store: PostgresDcbStore[Any]) -> Any:
    events, _ = await store.read(Query.of(tags=["k"]))
    assert len(events) == 1
    return events[0]


async def test_a_hot_tag_does_not_drive_reads(pg: PgTarget) -> None:
    """A query naming a tag every event carries beside a rare tag returns exactly the
    rare tag's events."""
    async with open_postgres_dcb_store(pg.dsn, dcb_contract_codec(), schema=pg.schema) as store:
        await store.append(
            [DcbEvent(Alpha(str(n)), ["tenant:1", f"user:{n % 10}"]) for n in range(200)]
        )
        events, _ = await store.read(Query.of(types=["dcb.Alpha"], tags=["tenant:1", "user:3"]))
    assert [e.data.text for e in events] == [str(n) for n in range(3, 200, 10)]
