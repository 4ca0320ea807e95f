"""The event/snapshot/checkpoint store contract, run against every backend."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from engine.codec import Codec
from engine.stores.base import DEFAULT_MAX_EVENT_BYTES
from engine.stores.memory import MemoryCheckpointStore, MemorySnapshotStore, MemoryStore
from engine.testing.contract import Backend, EventStoreContract


def memory_backend() -> Backend:
    """One shared set of memory stores; every "client" sees the same data."""
    stores: dict[str, Any] = {}
    checkpoints = MemoryCheckpointStore()

    @asynccontextmanager
    async def open_store(
        codec: Codec[Any], *, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES
    ) -> AsyncIterator[MemoryStore[Any]]:
        store = stores.setdefault("events", MemoryStore(codec))
        store.max_event_bytes = max_event_bytes
        yield store

    @asynccontextmanager
    async def open_snapshots(codec: Codec[Any], state_type: type) -> AsyncIterator[Any]:
        yield stores.setdefault("snapshots", MemorySnapshotStore(codec, state_type))

    @asynccontextmanager
    async def open_checkpoints() -> AsyncIterator[MemoryCheckpointStore]:
        yield checkpoints

    return Backend("memory", open_store, open_snapshots, open_checkpoints)


BACKENDS = {"memory": memory_backend}


class TestEventStoreContract(EventStoreContract):
    @pytest.fixture(params=sorted(BACKENDS))
    def backend(self, request: pytest.FixtureRequest) -> Backend:
        return BACKENDS[request.param]()
