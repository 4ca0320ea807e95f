"""The DCB store contract on SQLite, plus what only SQLite has: a shared file with the
event store, and several processes writing one file."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from engine.codec import Codec
from engine.dcb.sqlite import SqliteDcbStore, open_sqlite_dcb_store
from engine.stores.base import DEFAULT_MAX_EVENT_BYTES
from engine.testing.dcb_contract import DcbBackend, DcbStoreContract


def sqlite_dcb_backend(path: Path) -> DcbBackend:
    """Every client opens the same file with its own connections and writer thread."""

    @asynccontextmanager
    async def open_store(
        codec: Codec[Any], *, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES
    ) -> AsyncIterator[SqliteDcbStore[Any]]:
        async with open_sqlite_dcb_store(
            path, codec, synchronous="NORMAL", max_event_bytes=max_event_bytes, poll_interval=0.01
        ) as store:
            yield store

    return DcbBackend("sqlite", open_store)


class TestSqliteDcbStore(DcbStoreContract):
    @pytest.fixture
    def dcb_backend(self, tmp_path: Path) -> DcbBackend:
        return sqlite_dcb_backend(tmp_path / "dcb.db")
