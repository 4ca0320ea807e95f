"""DCB test fixtures: ``open_dcb`` opens a client on one shared log, per backend."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from engine.codec import Codec
from engine.dcb.base import DcbStore
from engine.dcb.memory import MemoryDcbStore
from engine.dcb.postgres import open_postgres_dcb_store
from engine.dcb.sqlite import open_sqlite_dcb_store
from tests.conftest import PgTarget

#: ``open_dcb(codec)`` opens one more client on the test's shared DCB log.
DcbOpener = Callable[[Codec[Any]], AbstractAsyncContextManager[DcbStore[Any]]]


def memory_opener() -> DcbOpener:
    """Every client of the returned opener shares one memory log."""
    shared: list[MemoryDcbStore[Any]] = []

    @asynccontextmanager
    async def open_dcb(codec: Codec[Any]) -> AsyncIterator[DcbStore[Any]]:
        if not shared:
            shared.append(MemoryDcbStore(codec))
        yield shared[0]

    return open_dcb


def sqlite_opener(path: Path) -> DcbOpener:
    """Every client opens the same file with its own connections and writer thread."""

    @asynccontextmanager
    async def open_dcb(codec: Codec[Any]) -> AsyncIterator[DcbStore[Any]]:
        async with open_sqlite_dcb_store(
            path, codec, synchronous="NORMAL", poll_interval=0.01
        ) as store:
            yield store

    return open_dcb


def postgres_opener(pg: PgTarget) -> DcbOpener:
    """Every client is its own store (own pool and writer) on the test's schema."""

    @asynccontextmanager
    async def open_dcb(codec: Codec[Any]) -> AsyncIterator[DcbStore[Any]]:
        async with open_postgres_dcb_store(
            pg.dsn, codec, schema=pg.schema, max_pool_size=2
        ) as store:
            yield store

    return open_dcb


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def open_dcb(request: pytest.FixtureRequest, tmp_path: Path) -> DcbOpener:
    """Opens clients on a fresh shared DCB log of each backend."""
    if request.param == "sqlite":
        return sqlite_opener(tmp_path / "dcb.db")
    if request.param == "postgres":
        return postgres_opener(request.getfixturevalue("pg"))
    return memory_opener()
