"""The DCB store contract on the in-memory backend."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from engine.codec import Codec
from engine.dcb.memory import MemoryDcbStore
from engine.stores.base import DEFAULT_MAX_EVENT_BYTES
from engine.testing.dcb_contract import DcbBackend, DcbStoreContract


def memory_dcb_backend() -> DcbBackend:
    """One shared memory store; every "client" sees the same log."""
    stores: dict[str, MemoryDcbStore[Any]] = {}

    @asynccontextmanager
    async def open_store(
        codec: Codec[Any], *, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES
    ) -> AsyncIterator[MemoryDcbStore[Any]]:
        store = stores.setdefault("log", MemoryDcbStore(codec))
        store.max_event_bytes = max_event_bytes
        yield store

    return DcbBackend("memory", open_store)


class TestMemoryDcbStore(DcbStoreContract):
    @pytest.fixture
    def dcb_backend(self) -> DcbBackend:
        return memory_dcb_backend()
