"""The DCB store contract on SQLite, plus what only SQLite has: a shared file with the
event store, and several processes writing one file."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from engine.codec import Codec
from engine.dcb.base import DcbEvent, Query, QueryItem
from engine.dcb.sqlite import SqliteDcbStore, _driver, open_sqlite_dcb_store
from engine.drivers.sqlite import open_sqlite
from engine.events import NewEvent
from engine.stores.base import DEFAULT_MAX_EVENT_BYTES
from engine.stores.sqlite import open_sqlite_store
from engine.testing.contract import Note, contract_codec
from engine.testing.dcb_contract import Alpha, DcbBackend, DcbStoreContract, dcb_contract_codec


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


async def test_dcb_tables_share_a_file_with_the_event_store(tmp_path: Path) -> None:
    """The event store and the DCB store live in one file, through one driver or two."""
    path = tmp_path / "shared.db"
    contract = contract_codec()
    async with (
        open_sqlite_store(path, contract) as events,
        open_sqlite(path) as db,
        open_sqlite_dcb_store(db, dcb_contract_codec()) as dcb,
        open_sqlite_dcb_store(path, dcb_contract_codec()) as other,
    ):
        await events.append("s-1", [NewEvent(Note("stream event"))])
        position = await dcb.append([DcbEvent(Alpha("tagged"), ["k"])])
        assert await other.read(Query.of(tags=["k"])) == await dcb.read(Query.of(tags=["k"]))
        assert [e.data for e in await events.load("s-1")] == [Note("stream event")]
        assert position == 1
    async with open_sqlite_dcb_store(path, dcb_contract_codec()) as reopened:
        events_read, head = await reopened.read()
    assert [e.data for e in events_read] == [Alpha("tagged")]
    assert head == 1


async def test_the_rarest_tag_drives_the_scan(tmp_path: Path) -> None:
    """An item's scan starts from its rarest tag, not from one that every event carries."""
    async with open_sqlite_dcb_store(tmp_path / "x.db", dcb_contract_codec()) as store:
        await store.append([DcbEvent(Alpha(str(n)), ["tenant:1", f"user:{n}"]) for n in range(50)])

        def drivers(conn: sqlite3.Connection) -> list[str | None]:
            item = QueryItem(tags=["tenant:1", "user:7"])
            return [_driver(conn, item, 0), _driver(conn, QueryItem(tags=["user:7"]), 0)]

        assert await store._db.read(drivers) == ["user:7", None]
        events, _ = await store.read(Query.of(tags=["tenant:1", "user:7"]))
    assert [e.data for e in events] == [Alpha("7")]
