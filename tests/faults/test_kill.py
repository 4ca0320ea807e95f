"""SIGKILL of writer processes at random points while they append multi-event batches.

Two writer processes (tests/faults/writer.py), each on its own stream, append batches
with idempotency keys and fixed event ids and report each acknowledgement; each is
killed after a random short delay and restarted with the batch whose outcome it never
learned. In the end every acknowledged event is there, no batch is partial, nothing is
duplicated or out of order, and a SQLite file passes ``PRAGMA integrity_check``.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from engine.drivers.nats import open_nats
from engine.stores.nats import delete_nats_store
from tests.conftest import NatsTarget, PgTarget
from tests.faults.backends import open_target
from tests.faults.ledger import (
    Ledger,
    audit,
    batch_events,
    batch_key,
    read_everything,
    report,
)

ROOT = Path(__file__).resolve().parents[2]
WRITERS = 2
#: Kill cycles per backend: 9 x 2 writers x 3 backends = 54 kills in the fast tier.
FAST_CYCLES = 9
SLOW_CYCLES = 34
MAX_DELAY = 0.25


async def _one_life(
    target: list[str], stream_id: str, first: int, ledger: Ledger, rng: random.Random
) -> int:
    """Run one writer until a random kill; return the batch its successor starts with."""
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "tests.faults.writer", stream_id, str(first), *target],
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert process.stdout is not None
    buffer = b""
    pending: int | None = None
    next_batch = first
    ready = trio.Event()

    def handle(line: str) -> None:
        nonlocal pending, next_batch
        word, *rest = line.split()
        if word == "ready":
            ready.set()
        elif word == "send":
            pending = int(rest[0])
        elif word == "ack":
            batch = int(rest[0])
            assert batch == pending, line
            ledger.record_ok(stream_id, batch, int(rest[1]))
            pending, next_batch = None, batch + 1

    async def pump() -> None:
        nonlocal buffer
        assert process.stdout is not None
        while chunk := await process.stdout.receive_some():
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                handle(line.decode())

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pump)
            with trio.fail_after(60):
                await ready.wait()
            await trio.sleep(rng.uniform(0, MAX_DELAY))
            process.kill()
        assert await process.wait() == -signal.SIGKILL
    finally:
        with trio.move_on_after(10, shield=True):
            process.kill()
            await process.wait()
    if pending is not None:
        ledger.record_unknown(stream_id, pending)
        return pending
    return next_batch


async def run_kill_cycles(target: list[str], backend: str, cycles: int, seed: int) -> None:
    """Kill and restart the writers ``cycles`` times, then audit the full read."""
    rng = random.Random(seed)
    ledger = Ledger()
    streams = [f"kill-{backend}-{n}" for n in range(WRITERS)]
    next_batch = dict.fromkeys(streams, 0)

    async def life(stream_id: str) -> None:
        next_batch[stream_id] = await _one_life(
            target, stream_id, next_batch[stream_id], ledger, rng
        )

    with trio.fail_after(60 + cycles * 20):
        for _ in range(cycles):
            async with trio.open_nursery() as nursery:
                for stream_id in streams:
                    nursery.start_soon(life, stream_id)
    async with open_target(target) as store:
        for stream_id, batch in sorted(ledger.unknown):
            stored = await store.append(
                stream_id,
                batch_events(stream_id, batch),
                idempotency_key=batch_key(stream_id, batch),
            )
            ledger.record_ok(stream_id, batch, stored[0].position)
        events = await read_everything(store)
    result = audit(ledger, events)
    report("kill -9 writer mid-batch", backend, cycles * WRITERS, ledger, result, seed=seed)
    assert len(ledger.ok) > 0
    result.assert_clean()


def _integrity(path: Path) -> str:
    with sqlite3.connect(path) as conn:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])


@pytest.fixture
async def nats_target(nats: NatsTarget) -> AsyncIterator[list[str]]:
    yield ["nats", nats.url, nats.namespace]
    with trio.move_on_after(30, shield=True):
        async with open_nats(nats.url) as connection:
            await delete_nats_store(connection, nats.namespace)


@pytest.mark.parametrize("cycles", [FAST_CYCLES, pytest.param(SLOW_CYCLES, marks=pytest.mark.slow)])
async def test_sqlite_writers_killed(tmp_path: Path, cycles: int) -> None:
    """SQLite: no acknowledged event lost, no partial batch, and the file stays intact."""
    path = tmp_path / "events.db"
    await run_kill_cycles(["sqlite", str(path)], "sqlite", cycles, seed=cycles)
    assert await trio.to_thread.run_sync(_integrity, path) == "ok"


@pytest.mark.parametrize("cycles", [FAST_CYCLES, pytest.param(SLOW_CYCLES, marks=pytest.mark.slow)])
async def test_postgres_writers_killed(pg: PgTarget, cycles: int) -> None:
    """PostgreSQL: a killed client's transaction leaves nothing behind, acked events stay."""
    await run_kill_cycles(["postgres", pg.dsn, pg.schema], "postgres", cycles, seed=cycles)


@pytest.mark.parametrize("cycles", [FAST_CYCLES, pytest.param(SLOW_CYCLES, marks=pytest.mark.slow)])
async def test_nats_writers_killed(nats_target: list[str], cycles: int) -> None:
    """NATS: an atomic batch cut by a kill is never half-stored, acked events stay."""
    await run_kill_cycles(nats_target, "nats", cycles, seed=cycles)
