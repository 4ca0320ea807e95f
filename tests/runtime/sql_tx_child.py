"""A transactional projection runner in its own process, for the SIGKILL tests
(test_sql_transactional.py), on SQLite or PostgreSQL.

Usage: ``python -m tests.runtime.sql_tx_child TARGET BLOCK_AT BATCH_SIZE TOTAL`` where
TARGET is ``sqlite:PATH`` or ``postgres:SCHEMA:DSN``. Writes one row per event into the
table ``applied`` through the runner's transaction. When a batch holds position
``BLOCK_AT`` it queues the rows before it, prints ``blocked`` and hangs inside the open
transaction (waiting to be killed). With ``BLOCK_AT`` 0 it prints ``running`` once
started and ``done`` once its checkpoint reaches ``TOTAL``, then exits.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import trio

from engine import Event
from engine.runners import ProjectionRunner, TransactionalProjection
from engine.stores.base import SqlTransaction
from tests.runtime.helpers import codec


@asynccontextmanager
async def open_target(target: str) -> AsyncIterator[Any]:
    """The store named by ``sqlite:PATH`` or ``postgres:SCHEMA:DSN``."""
    kind, _, rest = target.partition(":")
    if kind == "sqlite":
        from engine.stores.sqlite import open_sqlite_store

        async with open_sqlite_store(rest, codec()) as store:
            yield store
    else:
        from engine.stores.postgres import open_postgres_store

        schema, _, dsn = rest.partition(":")
        async with open_postgres_store(dsn, codec(), schema=schema) as store:
            yield store


async def main(target: str, block_at: int, batch_size: int, total: int) -> None:
    async with open_target(target) as store:
        database = store.transactional()
        p = database.placeholder
        insert = f"INSERT INTO applied (event_id, position) VALUES ({p}, {p})"

        async def handle(events: Sequence[Event[Any]], tx: SqlTransaction) -> None:
            for event in events:
                if event.position == block_at:
                    print("blocked", flush=True)
                    await trio.sleep_forever()
                await tx.execute(insert, (str(event.event_id), event.position))

        runner = ProjectionRunner(
            name="fault",
            handler=TransactionalProjection(database, handle),
            store=store,
            batch_size=batch_size,
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(runner.run)
            print("running", flush=True)
            await runner.wait_caught_up(total)
            print("done", flush=True)
            nursery.cancel_scope.cancel()


if __name__ == "__main__":
    trio.run(main, sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
