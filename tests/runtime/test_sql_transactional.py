"""Transactional projections on PostgreSQL: read-model rows and the runner's checkpoint
commit in one transaction, so each event is applied exactly once, also across SIGKILL."""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from psycopg import sql

from engine import CheckpointConflictError, EskitError, Event, NewEvent
from engine.runners import (
    ErrorPolicy,
    OnFailure,
    ProjectionRunner,
    RunnerStoppedError,
    TransactionalProjection,
)
from engine.stores.postgres import PostgresStore, open_postgres_store
from engine.stores.postgres_transactional import PostgresTransaction
from tests.conftest import PgTarget
from tests.runtime.child_output import lines_until
from tests.runtime.helpers import Noted, codec

ROOT = Path(__file__).resolve().parents[2]
TOTAL = 120
BATCH = 10
# Where each run hangs (mid-batch, inside its open transaction) before it is killed.
BLOCK_AT = [7, 35, 36, 99, 120, 0]


def _table(schema: str) -> sql.Composed:
    return sql.SQL("{}.applied").format(sql.Identifier(schema))


async def _prepare(store: PostgresStore[Any], schema: str, count: int) -> None:
    async with store.transactional().transaction() as tx:
        await tx.execute(
            sql.SQL("CREATE TABLE {} (event_id uuid NOT NULL, position bigint NOT NULL)").format(
                _table(schema)
            )
        )
    for first in range(0, count, 10):
        await store.append("s", [NewEvent(Noted(n)) for n in range(first, first + 10)])


async def _counts(store: PostgresStore[Any], schema: str) -> list[tuple[Any, ...]]:
    """(position, rows) per applied event, by position."""
    async with store.transactional().transaction() as tx:
        return await tx.fetch(
            sql.SQL("SELECT position, count(*) FROM {} GROUP BY position ORDER BY 1").format(
                _table(schema)
            )
        )


def _handler(schema: str, fail_at: int | None = None, block_at: int | None = None) -> Any:
    insert = sql.SQL("INSERT INTO {} (event_id, position) VALUES (%s, %s)").format(_table(schema))

    async def handle(events: Sequence[Event[Any]], tx: PostgresTransaction) -> None:
        for event in events:
            await tx.execute(insert, [event.event_id, event.position])
            if event.position == fail_at:
                raise ValueError(f"boom at {fail_at}")
            if event.position == block_at:
                await trio.sleep_forever()

    return handle


async def test_every_event_is_applied_once_with_its_checkpoint(pg: PgTarget) -> None:
    """A transactional runner writes one row per event and its checkpoint in the same
    schema; a second runner from that checkpoint applies nothing again."""
    async with open_postgres_store(pg.dsn, codec(), schema=pg.schema) as store:
        await _prepare(store, pg.schema, 50)
        for _ in range(2):
            runner = ProjectionRunner(
                name="p",
                handler=TransactionalProjection(store.transactional(), _handler(pg.schema)),
                store=store,
                batch_size=BATCH,
            )
            async with trio.open_nursery() as nursery:
                await nursery.start(runner.run)
                assert await runner.wait_caught_up(50) == 50
                nursery.cancel_scope.cancel()
        assert await _counts(store, pg.schema) == [(n, 1) for n in range(1, 51)]
        assert await store.load_checkpoint("p@1") == 50


async def test_a_failure_or_cancellation_rolls_back_rows_and_checkpoint(pg: PgTarget) -> None:
    """A handler that raises half-way, or is cancelled inside its transaction, leaves
    neither rows nor checkpoint of that transaction."""
    async with open_postgres_store(pg.dsn, codec(), schema=pg.schema) as store:
        await _prepare(store, pg.schema, 20)
        database = store.transactional()
        events = await store.read_all()

        async def fail_half_way() -> None:
            async with database.transaction() as tx:
                await _handler(pg.schema, fail_at=5)(events[:10], tx)
                await tx.save_checkpoint("direct", 10, expected=None)

        with pytest.raises(ValueError, match="boom"):
            await fail_half_way()
        assert await _counts(store, pg.schema) == []
        assert await store.load_checkpoint("direct") is None

        blocked = ProjectionRunner(
            name="p",
            handler=TransactionalProjection(database, _handler(pg.schema, block_at=13)),
            store=store,
            batch_size=BATCH,
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(blocked.run)
            await blocked.wait_caught_up(10)
            await trio.testing.wait_all_tasks_blocked()  # hanging inside the transaction
            nursery.cancel_scope.cancel()
        assert await _counts(store, pg.schema) == [(n, 1) for n in range(1, 11)]
        assert await store.load_checkpoint("p@1") == 10

        failing = ProjectionRunner(
            name="p",
            handler=TransactionalProjection(database, _handler(pg.schema, fail_at=15)),
            store=store,
            batch_size=BATCH,
            error_policy=ErrorPolicy(retries=0, on_failure=OnFailure.STOP),
        )
        with pytest.raises(RunnerStoppedError) as stopped:
            await failing.run()
        assert stopped.value.position == 15
        # The failed batch was retried event by event: 11-14 committed one by one.
        assert await _counts(store, pg.schema) == [(n, 1) for n in range(1, 15)]
        assert await store.load_checkpoint("p@1") == 14


async def test_checkpoint_compare_and_set_and_statement_errors(pg: PgTarget) -> None:
    """The transaction's checkpoint save is the store's compare-and-set; a bad
    statement is an engine error, and a cancelled statement is stopped: both roll the
    whole transaction back."""
    async with open_postgres_store(pg.dsn, codec(), schema=pg.schema) as store:
        database = store.transactional()
        async with database.transaction() as tx:
            assert await tx.load_checkpoint("c") is None
            await tx.save_checkpoint("c", 3, expected=None)
            assert await tx.load_checkpoint("c") == 3
        with pytest.raises(CheckpointConflictError):
            async with database.transaction() as tx:
                await tx.save_checkpoint("c", 4, expected=None)

        async def bad_statement() -> None:
            async with database.transaction() as tx:
                await tx.save_checkpoint("c", 5, expected=3)
                await tx.execute("SELECT * FROM no_such_table")

        with pytest.raises(EskitError, match="PostgreSQL error"):
            await bad_statement()
        assert await store.load_checkpoint("c") == 3

        # Cancelled while a statement runs: the statement is cancelled on the server.
        with trio.fail_after(30), trio.move_on_after(0.2):
            async with database.transaction() as tx:
                await tx.save_checkpoint("c", 6, expected=3)
                await tx.execute("SELECT pg_sleep(60)")
        assert await store.load_checkpoint("c") == 3


async def test_sigkill_mid_transaction_applies_each_event_exactly_once(pg: PgTarget) -> None:
    """A runner process killed with SIGKILL inside its transaction, again and again,
    ends with exactly one row per event and its checkpoint at the end."""
    async with open_postgres_store(pg.dsn, codec(), schema=pg.schema) as store:
        await _prepare(store, pg.schema, TOTAL)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    checkpoints: list[int | None] = []
    with trio.fail_after(120):
        for block_at in BLOCK_AT:
            command = [sys.executable, "-m", "tests.runtime.sql_tx_child", pg.dsn, pg.schema]
            command += [str(block_at), str(BATCH), str(TOTAL)]
            async with trio.open_nursery() as nursery:
                process: trio.Process = await nursery.start(
                    functools.partial(
                        trio.run_process,
                        command,
                        stdout=subprocess.PIPE,
                        check=False,
                        cwd=ROOT,
                        env=env,
                    )
                )
                await lines_until(process, {"blocked", "done"})
                if block_at:
                    process.send_signal(signal.SIGKILL)
            assert process.returncode == (-signal.SIGKILL if block_at else 0)
            async with open_postgres_store(pg.dsn, codec(), schema=pg.schema) as store:
                checkpoints.append(await store.load_checkpoint("fault@1"))
                counts = await _counts(store, pg.schema)
            # Whatever the killed transaction wrote is gone: rows end at the checkpoint.
            assert counts == [(n, 1) for n in range(1, (checkpoints[-1] or 0) + 1)]
    assert checkpoints == [None, 30, 30, 90, 110, TOTAL]
