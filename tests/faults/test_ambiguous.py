"""Ambiguous commits: the connection dies after the append left and before its reply.

A trio proxy between the store and PostgreSQL / nats-server drops the reply of every
few appends and closes the connection. The store raises (the outcome is unknown), the
client retries with the same idempotency key and event ids until it gets an answer;
the full read then holds every batch exactly once.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator

import pytest
import trio

from engine.drivers.nats import open_nats
from engine.stores.base import EventStore
from engine.stores.nats import delete_nats_store
from tests.conftest import NatsTarget, PgTarget
from tests.faults.backends import open_target
from tests.faults.ledger import Ledger, audit, batch_events, batch_key, read_everything, report
from tests.faults.proxy import CutProxy, cut_proxy

FAST_BATCHES = 120
SLOW_BATCHES = 1500
#: One append in CUT_EVERY has its reply cut.
CUT_EVERY = 4
#: What a store raises when its connection is lost with a request in flight.
UNKNOWN_OUTCOME = (trio.BrokenResourceError, ConnectionError, TimeoutError)
RETRY_BACKOFF = 0.05
#: The driver fails a request in flight as soon as its connection drops (nats-py alone
#: would wait for the reply until this timeout), so a cut costs a reconnect, not this.
NATS_REQUEST_TIMEOUT = 5.0


async def append_until_answered(
    store: EventStore[object], ledger: Ledger, stream_id: str, batch: int, proxy: CutProxy
) -> None:
    """Append one batch, cutting its reply now and then; retry unknown outcomes."""
    while True:
        try:
            stored = await store.append(
                stream_id,
                batch_events(stream_id, batch),
                idempotency_key=batch_key(stream_id, batch),
            )
        except UNKNOWN_OUTCOME:
            ledger.record_unknown(stream_id, batch)
            proxy.disarm()
            # A client backs off before retrying; the store reconnects meanwhile.
            await trio.sleep(RETRY_BACKOFF)
            continue
        ledger.record_ok(stream_id, batch, stored[0].position)
        return


async def run_ambiguous(
    target: list[str], port: int, backend: str, batches: int, **options: object
) -> None:
    """Append ``batches`` batches through a cutting proxy, then audit a direct full read."""
    rng = random.Random(batches)
    ledger = Ledger()
    stream_id = f"ambiguous-{backend}"
    async with cut_proxy(port) as proxy:
        proxied = [target[0], target[1].replace(f":{port}", f":{proxy.port}"), *target[2:]]
        with trio.fail_after(20 + batches // 4):
            async with open_target(proxied, **options) as store:
                for batch in range(batches):
                    if rng.randrange(CUT_EVERY) == 0:
                        proxy.arm()
                    await append_until_answered(store, ledger, stream_id, batch, proxy)
        cuts = proxy.cuts
    async with open_target(target) as direct:
        events = await read_everything(direct)
    result = audit(ledger, events)
    report("ambiguous commit (reply cut)", backend, cuts, ledger, result)
    assert cuts > batches // (CUT_EVERY * 2)
    assert ledger.unknown_seen > 0
    result.assert_clean()


@pytest.mark.parametrize(
    "batches", [FAST_BATCHES, pytest.param(SLOW_BATCHES, marks=pytest.mark.slow)]
)
async def test_postgres_reply_cut(pg: PgTarget, batches: int) -> None:
    """PostgreSQL: an append whose reply is lost and is retried is stored exactly once."""
    port = int(pg.dsn.rsplit(":", 1)[1].split("/")[0])
    await run_ambiguous(["postgres", pg.dsn, pg.schema], port, "postgres", batches)


@pytest.fixture
async def nats_target(nats: NatsTarget) -> AsyncIterator[list[str]]:
    yield ["nats", nats.url, nats.namespace]
    with trio.move_on_after(30, shield=True):
        async with open_nats(nats.url) as connection:
            await delete_nats_store(connection, nats.namespace)


@pytest.mark.parametrize(
    "batches", [FAST_BATCHES, pytest.param(SLOW_BATCHES, marks=pytest.mark.slow)]
)
async def test_nats_reply_cut(nats_target: list[str], batches: int) -> None:
    """NATS: an atomic batch whose ack is lost and is retried is stored exactly once."""
    port = int(nats_target[1].rsplit(":", 1)[1])
    await run_ambiguous(
        nats_target, port, "nats", batches // 2, request_timeout=NATS_REQUEST_TIMEOUT
    )
