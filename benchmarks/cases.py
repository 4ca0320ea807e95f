"""eskit's side of each case, generic over an opened event store."""

from __future__ import annotations

import time
from typing import Any

import trio

from benchmarks.domain import Account, Deposit, Deposited, account
from benchmarks.harness import Stopwatch
from engine import CommandHandler, EventStore, NewEvent


async def command_sequential(
    store: EventStore[Any], commands: int, streams: int
) -> tuple[float, Stopwatch]:
    """One command at a time through the CommandHandler, round-robin over ``streams``."""
    handler: CommandHandler[Account, Deposit, Deposited] = CommandHandler(
        decider=account, store=store
    )
    watch = Stopwatch()
    with watch:
        for i in range(commands):
            started = time.perf_counter()
            await handler.handle(f"seq-{i % streams}", Deposit(1))
            watch.latencies.append(time.perf_counter() - started)
    return watch.rate(commands), watch


async def command_concurrent(store: EventStore[Any], tasks: int, per_task: int) -> float:
    """``tasks`` concurrent tasks through one CommandHandler, each on its own stream."""
    handler: CommandHandler[Account, Deposit, Deposited] = CommandHandler(
        decider=account, store=store
    )

    async def worker(index: int) -> None:
        for _ in range(per_task):
            await handler.handle(f"conc-{tasks}-{index}", Deposit(1))

    watch = Stopwatch()
    with watch:
        async with trio.open_nursery() as nursery:
            for index in range(tasks):
                nursery.start_soon(worker, index)
    return watch.rate(tasks * per_task)


async def append_batch(store: EventStore[Any], batches: int, size: int) -> float:
    """``batches`` appends of ``size`` events each, events per second."""
    watch = Stopwatch()
    with watch:
        for b in range(batches):
            await store.append(f"batch-{b}", [NewEvent(Deposited(1)) for _ in range(size)])
    return watch.rate(batches * size)


async def fill_stream(store: EventStore[Any], stream_id: str, count: int) -> None:
    # 500 per append: NATS's atomic batches hold at most 999 messages.
    for start in range(0, count, 500):
        await store.append(
            stream_id, [NewEvent(Deposited(1)) for _ in range(min(500, count - start))]
        )


async def load_stream(store: EventStore[Any], stream_id: str, count: int) -> float:
    """Load and fold a stream of ``count`` events with a fresh handler (no cache)."""
    handler: CommandHandler[Account, Deposit, Deposited] = CommandHandler(
        decider=account, store=store, cache_size=0
    )
    watch = Stopwatch()
    with watch:
        state, version = await handler.load(stream_id)
    assert version == count
    assert state.deposits == count
    return watch.rate(count)


async def read_all(store: EventStore[Any], expected: int) -> float:
    """Scan the whole log in global order, decoded, events per second."""
    count = 0
    position = 0
    watch = Stopwatch()
    with watch:
        while page := await store.read_all(after_position=position, limit=1000):
            count += len(page)
            position = page[-1].position
    assert count >= expected
    return watch.rate(count)
