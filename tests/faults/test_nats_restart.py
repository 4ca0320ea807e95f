"""nats-server killed with SIGKILL and restarted (same port, same store folder) while a
writer appends batches and a follower tails ``read_all``.

The store's connection reconnects by itself; appends in flight at a kill have an unknown
outcome and are retried with the same idempotency key and event ids. Afterwards every
acknowledged event is there, and the follower, which read through the restarts, saw
exactly the full log.
"""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
import trio

from engine.events import Event
from tests.faults.backends import open_target
from tests.faults.ledger import Ledger, audit, batch_events, batch_key, read_everything, report
from tests.servers import free_port, spawn_nats

UNKNOWN_OUTCOME = (trio.BrokenResourceError, ConnectionError, TimeoutError)
BACKOFF = 0.05
#: Acknowledged batches between two kills.
BATCHES_PER_KILL = 15
OPTIONS: dict[str, Any] = {"request_timeout": 1.0, "reconnect_time_wait": 0.1}


def _kill(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=20)


@pytest.mark.parametrize("kills", [5, pytest.param(25, marks=pytest.mark.slow)])
async def test_nats_server_sigkill_and_restart(tmp_path: Path, kills: int) -> None:
    """Acknowledged events survive SIGKILLs of nats-server; a follower misses nothing."""
    port, monitor = free_port(), free_port()
    proc = await trio.to_thread.run_sync(spawn_nats, tmp_path, port, monitor)
    target = ["nats", f"nats://127.0.0.1:{port}", "RESTART"]
    ledger = Ledger()
    stream_id = "restart"
    total = BATCHES_PER_KILL * (kills + 1)
    seen: list[Event[Any]] = []
    acked = 0
    progress = trio.Event()
    writer_done = trio.Event()

    async def writer() -> None:
        nonlocal acked, progress
        async with open_target(target, **OPTIONS) as store:
            for batch in range(total):
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
                acked += 1
                progress.set()
        writer_done.set()

    async def follower() -> None:
        async with open_target(target, **OPTIONS) as store:
            while True:
                after = seen[-1].position if seen else 0
                try:
                    page = await store.read_all(after_position=after, limit=200)
                except UNKNOWN_OUTCOME:
                    await trio.sleep(BACKOFF)
                    continue
                seen.extend(page)
                if not page:
                    if writer_done.is_set() and after >= await store.head_position():
                        return
                    await trio.sleep(BACKOFF)  # a follower polls at a steady pace

    try:
        with trio.fail_after(60 + 15 * kills):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(writer)
                nursery.start_soon(follower)
                for kill in range(kills):
                    while acked < BATCHES_PER_KILL * (kill + 1):
                        progress = trio.Event()
                        await progress.wait()
                    await trio.to_thread.run_sync(_kill, proc)
                    proc = await trio.to_thread.run_sync(spawn_nats, tmp_path, port, monitor)
        async with open_target(target) as store:
            events = await read_everything(store)
    finally:
        await trio.to_thread.run_sync(_kill, proc)
    result = audit(ledger, events)
    report("nats-server SIGKILL + restart", "nats", kills, ledger, result)
    result.assert_clean()
    assert [e.position for e in seen] == [e.position for e in events]
    assert [e.event_id for e in seen] == [e.event_id for e in events]
