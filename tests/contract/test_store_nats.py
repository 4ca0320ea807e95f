"""The event/snapshot/checkpoint store contract on NATS JetStream (a real nats-server)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

from engine.codec import Codec
from engine.drivers.nats import open_nats
from engine.stores.base import DEFAULT_MAX_EVENT_BYTES
from engine.stores.nats import NatsStore, delete_nats_store, open_nats_store
from engine.testing.contract import Backend, EventStoreContract, contract_codec
from tests.conftest import NatsTarget


def nats_backend(target: NatsTarget) -> Backend:
    """Every opener connects anew to the same namespace, as separate processes would."""

    @asynccontextmanager
    async def open_store(
        codec: Codec[Any], *, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES
    ) -> AsyncIterator[NatsStore[Any]]:
        async with open_nats_store(
            target.url, codec, namespace=target.namespace, max_event_bytes=max_event_bytes
        ) as store:
            yield store

    @asynccontextmanager
    async def open_snapshots(codec: Codec[Any], state_type: type) -> AsyncIterator[Any]:
        async with open_nats_store(target.url, codec, namespace=target.namespace) as store:
            yield store.snapshots(state_type)

    @asynccontextmanager
    async def open_checkpoints() -> AsyncIterator[NatsStore[Any]]:
        async with open_nats_store(
            target.url, contract_codec(), namespace=target.namespace
        ) as store:
            yield store

    return Backend("nats", open_store, open_snapshots, open_checkpoints)


class TestNatsStoreContract(EventStoreContract):
    @pytest.fixture
    async def backend(self, nats: NatsTarget) -> AsyncIterator[Backend]:
        yield nats_backend(nats)
        with trio.move_on_after(30, shield=True):
            async with open_nats(nats.url) as connection:
                await delete_nats_store(connection, nats.namespace)
