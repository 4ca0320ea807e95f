"""A full disk (or database) is a clear StorageFullError: nothing written, the store still serves."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
import trio

from engine.errors import StorageFullError
from engine.events import NewEvent
from engine.stores.postgres import open_postgres_store
from engine.stores.sqlite import open_sqlite_store
from engine.testing.contract import Note, contract_codec
from tests.conftest import PgTarget


async def test_sqlite_full_raises_storage_full(tmp_path: Path) -> None:
    """SQLite's SQLITE_FULL (the database at its page limit) is StorageFullError; room again, appends work."""
    async with open_sqlite_store(tmp_path / "events.db", contract_codec()) as store:
        await store.append("s-1", [NewEvent(Note("first"))])
        head = await store.head_position()

        def limit(pages: int) -> Callable[[sqlite3.Connection], int]:
            def job(conn: sqlite3.Connection) -> int:
                return int(conn.execute(f"PRAGMA max_page_count = {pages}").fetchone()[0])

            return job

        # The limit is clamped to the pages in use: no page is left for new rows.
        await store._db.write(limit(1))
        with trio.fail_after(30), pytest.raises(StorageFullError, match="full"):
            await store.append("s-2", [NewEvent(Note("x" * 200_000))])
        assert await store.head_position() == head
        assert [e.data for e in await store.load("s-1")] == [Note("first")]
        await store._db.write(limit(1_000_000_000))
        stored = await store.append("s-2", [NewEvent(Note("x" * 200_000))])
        assert stored[0].position == head + 1


async def test_postgres_disk_full_raises_storage_full(pg: PgTarget) -> None:
    """PostgreSQL's disk_full (SQLSTATE 53100, raised by the real server in the append's
    transaction) is StorageFullError; once the disk has room, appends work."""
    async with open_postgres_store(pg.dsn, contract_codec(), schema=pg.schema) as store:
        await store.append("s-1", [NewEvent(Note("first"))])
        head = await store.head_position()
        with psycopg.connect(pg.dsn, autocommit=True) as conn:
            conn.execute(
                f'CREATE FUNCTION "{pg.schema}".disk_full() RETURNS trigger LANGUAGE plpgsql AS '
                "$$ BEGIN RAISE EXCEPTION 'could not extend file: No space left on device' "
                "USING ERRCODE = 'disk_full'; END $$"
            )
            conn.execute(
                f'CREATE TRIGGER disk_full BEFORE INSERT ON "{pg.schema}".events '
                f'FOR EACH ROW EXECUTE FUNCTION "{pg.schema}".disk_full()'
            )
        with trio.fail_after(30), pytest.raises(StorageFullError, match="full"):
            await store.append("s-2", [NewEvent(Note("second"))])
        assert await store.head_position() == head
        with psycopg.connect(pg.dsn, autocommit=True) as conn:
            conn.execute(f'DROP TRIGGER disk_full ON "{pg.schema}".events')
        stored = await store.append("s-2", [NewEvent(Note("second"))])
        assert stored[0].version == 1
