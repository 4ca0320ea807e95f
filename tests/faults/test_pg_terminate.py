"""PostgreSQL backends terminated (``pg_terminate_backend``) at random moments while a
writer streams batch appends, many of them mid-transaction.

The store must recover without operator action: the append that lost its connection
raises (unknown outcome), its retry with the same idempotency key and event ids succeeds
on a fresh connection, later appends succeed, and no acknowledged event is lost.
"""

from __future__ import annotations

import random
import secrets

import psycopg
import pytest
import trio

from tests.conftest import PgTarget
from tests.faults.backends import open_target
from tests.faults.ledger import Ledger, audit, batch_events, batch_key, read_everything, report

UNKNOWN_OUTCOME = (trio.BrokenResourceError, ConnectionError, TimeoutError)
BACKOFF = 0.05


def _terminate(dsn: str, application: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
            (application,),
        ).fetchall()
    return sum(1 for (done,) in rows if done)


@pytest.mark.parametrize("batches", [300, pytest.param(3000, marks=pytest.mark.slow)])
async def test_terminated_backends_mid_stream(pg: PgTarget, batches: int) -> None:
    """Appends go on after every termination; nothing acknowledged is lost or doubled."""
    rng = random.Random(batches)
    application = f"faults-{secrets.token_hex(4)}"
    ledger = Ledger()
    stream_id = "terminated"
    terminated = 0
    done = trio.Event()

    async def terminator() -> None:
        nonlocal terminated
        while not done.is_set():
            await trio.sleep(rng.uniform(0.005, 0.05))
            terminated += await trio.to_thread.run_sync(_terminate, pg.dsn, application)

    with trio.fail_after(60 + batches // 10):
        async with (
            open_target(["postgres", pg.dsn, pg.schema], name=application) as store,
            trio.open_nursery() as nursery,
        ):
            nursery.start_soon(terminator)
            for batch in range(batches):
                while True:
                    try:
                        stored = await store.append(
                            stream_id,
                            batch_events(stream_id, batch),
                            idempotency_key=batch_key(stream_id, batch),
                        )
                        break
                    except UNKNOWN_OUTCOME:
                        ledger.record_unknown(stream_id, batch)
                        await trio.sleep(BACKOFF)
                ledger.record_ok(stream_id, batch, stored[0].position)
            done.set()
            # Recovered without help: one more append on the same store succeeds.
            await store.append("after", batch_events("after", 0))
    async with open_target(["postgres", pg.dsn, pg.schema]) as direct:
        events = await read_everything(direct)
    result = audit(ledger, events)
    report("pg_terminate_backend mid-stream", "postgres", terminated, ledger, result)
    assert terminated > 0
    assert ledger.unknown_seen > 0
    result.assert_clean()
