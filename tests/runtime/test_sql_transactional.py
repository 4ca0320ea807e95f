"""Transactional projections on SQL stores (SQLite and PostgreSQL): read-model rows and
the runner's checkpoint commit in one transaction, so each event is applied exactly
once, also across SIGKILL at any moment."""

from __future__ import annotations

import functools
import os
import random
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from engine import CheckpointConflictError, EskitError, Event, NewEvent
from engine.runners import (
    ErrorPolicy,
    OnFailure,
    ProjectionRunner,
    RunnerStoppedError,
    TransactionalProjection,
)
from engine.stores.base import SqlDatabase, SqlTransaction
from engine.stores.postgres import open_postgres_store
from engine.stores.sqlite import open_sqlite_store
from engine.stores.sqlite_transactional import ReadModelStatementError
from tests.runtime.child_output import lines_until
from tests.runtime.helpers import Noted, codec

ROOT = Path(__file__).resolve().parents[2]
TOTAL = 120
BATCH = 10
# Where each run hangs (mid-batch, inside its open transaction) before it is killed.
BLOCK_AT = [7, 35, 36, 99, 120, 0]


@attrs.frozen
class SqlTarget:
    """One SQL backend: how to open its store here and name it to a child process."""

    name: str
    child_target: str
    open: Callable[[], AbstractAsyncContextManager[Any]]


@pytest.fixture(params=["sqlite", "postgres"])
def sql(request: pytest.FixtureRequest, tmp_path: Path) -> SqlTarget:
    if request.param == "sqlite":
        path = tmp_path / "events.db"
        return SqlTarget(
            "sqlite", f"sqlite:{path}", functools.partial(open_sqlite_store, path, codec())
        )
    pg = request.getfixturevalue("pg")
    return SqlTarget(
        "postgres",
        f"postgres:{pg.schema}:{pg.dsn}",
        functools.partial(open_postgres_store, pg.dsn, codec(), schema=pg.schema),
    )


async def _prepare(store: Any, count: int) -> None:
    async with store.transactional().transaction() as tx:
        await tx.execute("CREATE TABLE applied (event_id TEXT NOT NULL, position BIGINT NOT NULL)")
    for first in range(0, count, 10):
        await store.append("s", [NewEvent(Noted(n)) for n in range(first, first + 10)])


async def _counts(database: SqlDatabase) -> list[tuple[Any, ...]]:
    """(position, rows) per applied event, by position (committed data)."""
    rows = await database.fetch(
        "SELECT position, count(*) FROM applied GROUP BY position ORDER BY 1"
    )
    return [(int(p), int(n)) for p, n in rows]


def _handler(database: SqlDatabase, fail_at: int | None = None, block_at: int | None = None) -> Any:
    p = database.placeholder
    insert = f"INSERT INTO applied (event_id, position) VALUES ({p}, {p})"

    async def handle(events: Sequence[Event[Any]], tx: SqlTransaction) -> None:
        for event in events:
            await tx.execute(insert, [str(event.event_id), event.position])
            if event.position == fail_at:
                raise ValueError(f"boom at {fail_at}")
            if event.position == block_at:
                await trio.sleep_forever()

    return handle


async def test_every_event_is_applied_once_with_its_checkpoint(sql: SqlTarget) -> None:
    """A transactional runner writes one row per event and its checkpoint in the
    store's database; a second runner from that checkpoint applies nothing again."""
    async with sql.open() as store:
        await _prepare(store, 50)
        database = store.transactional()
        for _ in range(2):
            runner = ProjectionRunner(
                name="p",
                handler=TransactionalProjection(database, _handler(database)),
                store=store,
                batch_size=BATCH,
            )
            async with trio.open_nursery() as nursery:
                await nursery.start(runner.run)
                assert await runner.wait_caught_up(50) == 50
                nursery.cancel_scope.cancel()
        assert await _counts(database) == [(n, 1) for n in range(1, 51)]
        assert await store.load_checkpoint("p@1") == 50


async def test_unqualified_tables_live_in_the_store_schema(pg: Any) -> None:
    """On PostgreSQL a read model's unqualified table lands in the store's schema (first
    on the transaction's search_path), and the database's committed reads find it."""
    async with open_postgres_store(pg.dsn, codec(), schema=pg.schema) as store:
        await _prepare(store, 0)
        database = store.transactional()
        schemas = await database.fetch(
            "SELECT table_schema FROM information_schema.tables WHERE table_name = 'applied'"
        )
        assert schemas == [(pg.schema,)]
        assert await _counts(database) == []


async def test_a_failure_or_cancellation_rolls_back_rows_and_checkpoint(sql: SqlTarget) -> None:
    """A handler that raises half-way, or is cancelled inside its transaction, leaves
    neither rows nor checkpoint of that transaction."""
    async with sql.open() as store:
        await _prepare(store, 20)
        database = store.transactional()
        events = await store.read_all()

        async def fail_half_way() -> None:
            async with database.transaction() as tx:
                await _handler(database, fail_at=5)(events[:10], tx)
                await tx.save_checkpoint("direct", 10, expected=None)

        with pytest.raises(ValueError, match="boom"):
            await fail_half_way()
        assert await _counts(database) == []
        assert await store.load_checkpoint("direct") is None

        blocked = ProjectionRunner(
            name="p",
            handler=TransactionalProjection(database, _handler(database, block_at=13)),
            store=store,
            batch_size=BATCH,
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(blocked.run)
            await blocked.wait_caught_up(10)
            await trio.testing.wait_all_tasks_blocked()  # hanging inside the transaction
            nursery.cancel_scope.cancel()
        assert await _counts(database) == [(n, 1) for n in range(1, 11)]
        assert await store.load_checkpoint("p@1") == 10

        failing = ProjectionRunner(
            name="p",
            handler=TransactionalProjection(database, _handler(database, fail_at=15)),
            store=store,
            batch_size=BATCH,
            error_policy=ErrorPolicy(retries=0, on_failure=OnFailure.STOP),
        )
        with pytest.raises(RunnerStoppedError) as stopped:
            await failing.run()
        assert stopped.value.position == 15
        # The failed batch was retried event by event: 11-14 committed one by one.
        assert await _counts(database) == [(n, 1) for n in range(1, 15)]
        assert await store.load_checkpoint("p@1") == 14


async def test_checkpoint_compare_and_set_and_statement_errors(sql: SqlTarget) -> None:
    """The transaction's checkpoint save is the store's compare-and-set, and a bad
    statement is an engine error; either rolls the whole transaction back."""
    async with sql.open() as store:
        await _prepare(store, 0)
        database = store.transactional()
        async with database.transaction() as tx:
            assert await tx.load_checkpoint("c") is None
            await tx.save_checkpoint("c", 3, expected=None)
            await tx.execute(f"INSERT INTO applied VALUES ('x', {database.placeholder})", [3])
        assert await store.load_checkpoint("c") == 3

        async def conflicting() -> None:
            async with database.transaction() as tx:
                await tx.execute("INSERT INTO applied VALUES ('y', 4)")
                await tx.save_checkpoint("c", 4, expected=None)

        async def bad_statement() -> None:
            async with database.transaction() as tx:
                await tx.execute("INSERT INTO applied VALUES ('z', 5)")
                await tx.save_checkpoint("c", 5, expected=3)
                await tx.execute("SELECT * FROM no_such_table")

        with pytest.raises(CheckpointConflictError):
            await conflicting()
        with pytest.raises(EskitError, match=r"no such table|does not exist"):
            await bad_statement()
        assert await store.load_checkpoint("c") == 3
        assert await _counts(database) == [(3, 1)]
        with pytest.raises(ValueError, match=">= 0"):
            async with database.transaction() as tx:
                await tx.save_checkpoint("c", -1, expected=3)


async def test_a_cancelled_postgres_statement_is_stopped_on_the_server(pg: Any) -> None:
    """Cancelled while a statement runs, the transaction cancels it on the server and
    rolls back at once."""
    async with open_postgres_store(pg.dsn, codec(), schema=pg.schema) as store:
        database = store.transactional()
        with trio.fail_after(30), trio.move_on_after(0.2):
            async with database.transaction() as tx:
                await tx.save_checkpoint("c", 6, expected=None)
                await tx.execute("SELECT pg_sleep(60)")
        assert await store.load_checkpoint("c") is None


@pytest.mark.parametrize(
    "statement",
    [
        "INSERT INTO events (position) VALUES (999)",
        "DELETE FROM events",
        "UPDATE checkpoints SET position = 0",
        "DROP TABLE streams",
        "CREATE INDEX sneaky ON events (type)",
        "ALTER TABLE snapshots ADD COLUMN x",
        "COMMIT",
        "BEGIN",
        "SAVEPOINT mine",
        "ATTACH DATABASE ':memory:' AS other",
        "PRAGMA synchronous = OFF",
        "CREATE TRIGGER t AFTER INSERT ON applied BEGIN DELETE FROM events; END",
        "DELETE FROM sqlite_sequence",
    ],
)
async def test_sqlite_read_models_cannot_touch_the_log(tmp_path: Path, statement: str) -> None:
    """A read model's statement that writes eskit's tables, controls the transaction,
    attaches a file, sets a pragma or creates a trigger is refused; nothing of its block
    is written and the store goes on."""
    async with open_sqlite_store(tmp_path / "events.db", codec()) as store:
        await _prepare(store, 10)
        database = store.transactional()

        async def refused() -> None:
            async with database.transaction() as tx:
                await tx.execute("INSERT INTO applied VALUES ('a', 1)")
                await tx.execute(statement)
                await tx.save_checkpoint("c", 1, expected=None)

        with pytest.raises(ReadModelStatementError):
            await refused()
        assert await _counts(database) == []
        assert await store.load_checkpoint("c") is None
        # Reading the log is allowed; the store still appends and reads.
        async with database.transaction() as tx:
            await tx.execute("INSERT INTO applied SELECT hex(event_id), position FROM events")
        assert len(await _counts(database)) == 10
        await store.append("s", [NewEvent(Noted(99))])
        assert len(await store.read_all()) == 11
        integrity = await database.fetch("PRAGMA integrity_check")
        assert integrity == [("ok",)]


async def test_sqlite_statements_run_when_the_block_ends(tmp_path: Path) -> None:
    """On SQLite the block's statements are queued: fetch inside the block sees committed
    data only, a queued statement's error surfaces when the block ends, and the
    transaction object refuses use after its block."""
    async with open_sqlite_store(tmp_path / "events.db", codec()) as store:
        await _prepare(store, 0)
        database = store.transactional()
        async with database.transaction() as tx:
            await tx.execute("INSERT INTO applied VALUES ('a', 1)")
            assert await tx.fetch("SELECT count(*) FROM applied") == [(0,)]
        assert await database.fetch("SELECT count(*) FROM applied") == [(1,)]
        with pytest.raises(RuntimeError, match="ended"):
            await tx.execute("INSERT INTO applied VALUES ('b', 2)")
        with pytest.raises(ReadModelStatementError, match="no column named nope") as failed:
            async with database.transaction() as tx:
                await tx.execute("INSERT INTO applied (nope) VALUES (1)")
        assert "INSERT INTO applied (nope)" in failed.value.statement


@asynccontextmanager
async def _child(target: str, block_at: int, total: int) -> AsyncIterator[trio.Process]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "tests.runtime.sql_tx_child", target]
    command += [str(block_at), str(BATCH), str(total)]
    async with trio.open_nursery() as nursery:
        process: trio.Process = await nursery.start(
            functools.partial(
                trio.run_process, command, stdout=subprocess.PIPE, check=False, cwd=ROOT, env=env
            )
        )
        yield process


async def test_sigkill_mid_transaction_applies_each_event_exactly_once(sql: SqlTarget) -> None:
    """A runner process killed with SIGKILL inside its transaction, again and again,
    ends with exactly one row per event and its checkpoint at the end."""
    async with sql.open() as store:
        await _prepare(store, TOTAL)
    checkpoints: list[int | None] = []
    with trio.fail_after(120):
        for block_at in BLOCK_AT:
            async with _child(sql.child_target, block_at, TOTAL) as process:
                await lines_until(process, {"blocked", "done"})
                if block_at:
                    process.send_signal(signal.SIGKILL)
            assert process.returncode == (-signal.SIGKILL if block_at else 0)
            async with sql.open() as store:
                checkpoints.append(await store.load_checkpoint("fault@1"))
                counts = await _counts(store.transactional())
            # Whatever the killed transaction wrote is gone: rows end at the checkpoint.
            assert counts == [(n, 1) for n in range(1, (checkpoints[-1] or 0) + 1)]
    assert checkpoints == [None, 30, 30, 90, 110, TOTAL]


async def test_sigkill_at_random_moments_applies_each_event_exactly_once(sql: SqlTarget) -> None:
    """A runner process killed with SIGKILL at random moments while it catches up (so
    some kills land inside commits) ends with exactly one row per event."""
    # Enough events that the run lasts longer than the latest kill (SQLite is faster).
    total = 20_000 if sql.name == "sqlite" else 1_500
    async with sql.open() as store:
        await _prepare(store, total)
    rng = random.Random(5)
    checkpoints: list[int | None] = []
    with trio.fail_after(240):
        for _ in range(6):
            async with _child(sql.child_target, 0, total) as process:
                if (await lines_until(process, {"running", "done"}))[-1] == "running":
                    await trio.sleep(rng.uniform(0.0, 0.3))
                    process.send_signal(signal.SIGKILL)
            async with sql.open() as store:
                checkpoint = await store.load_checkpoint("fault@1")
                counts = await _counts(store.transactional())
            assert counts == [(n, 1) for n in range(1, (checkpoint or 0) + 1)]
            checkpoints.append(checkpoint)
        async with _child(sql.child_target, 0, total) as process:
            await lines_until(process, {"done"})
        assert process.returncode == 0
        async with sql.open() as store:
            assert await store.load_checkpoint("fault@1") == total
            assert await _counts(store.transactional()) == [(n, 1) for n in range(1, total + 1)]
    # Kills landed mid-run, after some progress (not all before the first batch).
    assert any(0 < (checkpoint or 0) < total for checkpoint in checkpoints), checkpoints
