"""A transactional projection runner on PostgreSQL in its own process, for the SIGKILL
test (test_sql_transactional.py).

Usage: ``python -m tests.runtime.sql_tx_child DSN SCHEMA BLOCK_AT BATCH_SIZE TOTAL``.
Writes one row per event into ``SCHEMA.applied`` through the runner's transaction; when
a batch holds position ``BLOCK_AT`` it writes the rows before it, prints ``blocked`` and
hangs inside the open transaction (waiting to be killed). With ``BLOCK_AT`` 0 it prints
``done`` once its checkpoint reaches ``TOTAL`` and exits.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import trio
from psycopg import sql

from engine import Event
from engine.runners import ProjectionRunner, TransactionalProjection
from engine.stores.postgres import open_postgres_store
from engine.stores.postgres_transactional import PostgresTransaction
from tests.runtime.helpers import codec


async def main(dsn: str, schema: str, block_at: int, batch_size: int, total: int) -> None:
    insert = sql.SQL("INSERT INTO {}.applied (event_id, position) VALUES (%s, %s)").format(
        sql.Identifier(schema)
    )

    async def handle(events: Sequence[Event[Any]], tx: PostgresTransaction) -> None:
        for event in events:
            if event.position == block_at:
                print("blocked", flush=True)
                await trio.sleep_forever()
            await tx.execute(insert, [event.event_id, event.position])

    async with open_postgres_store(dsn, codec(), schema=schema) as store:
        runner = ProjectionRunner(
            name="fault",
            handler=TransactionalProjection(store.transactional(), handle),
            store=store,
            batch_size=batch_size,
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(runner.run)
            await runner.wait_caught_up(total)
            print("done", flush=True)
            nursery.cancel_scope.cancel()


if __name__ == "__main__":
    trio.run(main, sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
