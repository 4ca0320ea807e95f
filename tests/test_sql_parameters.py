"""A read model's SQL parameters: integers outside 64 bits are refused on every SQL backend,
never stored as something else."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from engine.errors import EskitError
from engine.stores.base import SqlDatabase
from engine.stores.postgres import open_postgres_store
from engine.stores.sqlite import open_sqlite_store
from engine.stores.sqlite_transactional import ReadModelStatementError
from engine.testing.contract import contract_codec
from tests.conftest import PgTarget


@pytest.fixture(params=["sqlite", "postgres"])
def open_database(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    """Opens the SQL database of a real SQLite file or a real PostgreSQL schema."""

    @asynccontextmanager
    async def sqlite() -> AsyncIterator[SqlDatabase]:
        async with open_sqlite_store(tmp_path / "events.db", contract_codec()) as store:
            yield store.transactional()

    @asynccontextmanager
    async def postgres() -> AsyncIterator[SqlDatabase]:
        pg: PgTarget = request.getfixturevalue("pg")
        async with open_postgres_store(pg.dsn, contract_codec(), schema=pg.schema) as store:
            yield store.transactional()

    return sqlite if request.param == "sqlite" else postgres


OUT_OF_RANGE = r"out of range|outside the 64-bit range"


async def _insert(db: SqlDatabase, rows: list[tuple[str, int]], *, many: bool) -> None:
    """Insert ``rows`` in one transaction, one statement each or one executemany."""
    query = f"INSERT INTO balances VALUES ({db.placeholder}, {db.placeholder})"
    async with db.transaction() as tx:
        if many:
            await tx.executemany(query, rows)
        else:
            for row in rows:
                await tx.execute(query, row)


@pytest.mark.parametrize("value", [2**63, -(2**63) - 1, 10**30])
async def test_integers_outside_64_bits_are_refused(open_database: Any, value: int) -> None:
    """An out-of-range integer fails the transaction with an engine error; nothing is written
    and the column keeps holding integers."""
    async with open_database() as db:
        await db.ensure_schema(
            "CREATE TABLE IF NOT EXISTS balances (id TEXT PRIMARY KEY, b BIGINT)"
        )
        await _insert(db, [("edge", 2**63 - 1)], many=False)
        with pytest.raises(EskitError, match=OUT_OF_RANGE):
            await _insert(db, [("x", 1), ("big", value)], many=False)
        with pytest.raises(EskitError, match=OUT_OF_RANGE):
            await _insert(db, [("y", 1), ("many", value)], many=True)
        rows = await db.fetch("SELECT id, b FROM balances ORDER BY id")
    assert rows == [("edge", 2**63 - 1)]
    assert type(rows[0][1]) is int


async def _select(db: SqlDatabase, params: tuple[int, ...]) -> None:
    async with db.transaction() as tx:
        await tx.execute("SELECT ?, ?", params)


async def test_sqlite_names_the_parameter(tmp_path: Path) -> None:
    """On SQLite the error names the statement and the parameter, before anything runs."""
    async with open_sqlite_store(tmp_path / "events.db", contract_codec()) as store:
        db = store.transactional()
        with pytest.raises(ReadModelStatementError, match="parameter 2: the integer 1844"):
            await _select(db, (1, 2**64))
        with pytest.raises(ReadModelStatementError, match="parameter n"):
            await db.fetch("SELECT :n", {"n": -(2**70)})
