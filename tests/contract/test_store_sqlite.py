"""The store contract on the SQLite backend: every client is a new store on one file."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from engine.codec import Codec
from engine.stores.base import DEFAULT_MAX_EVENT_BYTES, SnapshotStore
from engine.stores.sqlite import SqliteStore, open_sqlite_store
from engine.testing.contract import Backend, EventStoreContract, contract_codec


def sqlite_backend(path: Path) -> Backend:
    """Each ``open_*`` opens a new store (its own writer thread and connections) on ``path``."""

    @asynccontextmanager
    async def open_store(
        codec: Codec[Any], *, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES
    ) -> AsyncIterator[SqliteStore[Any]]:
        async with open_sqlite_store(path, codec, max_event_bytes=max_event_bytes) as store:
            yield store

    @asynccontextmanager
    async def open_snapshots(
        codec: Codec[Any], state_type: type
    ) -> AsyncIterator[SnapshotStore[Any]]:
        async with open_sqlite_store(path, codec) as store:
            yield store.snapshots(state_type)

    @asynccontextmanager
    async def open_checkpoints() -> AsyncIterator[SqliteStore[Any]]:
        async with open_sqlite_store(path, contract_codec()) as store:
            yield store

    return Backend("sqlite", open_store, open_snapshots, open_checkpoints)


class TestSqliteStoreContract(EventStoreContract):
    @pytest.fixture
    def backend(self, tmp_path: Path) -> Backend:
        return sqlite_backend(tmp_path / "events.db")
