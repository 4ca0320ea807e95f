"""Per-backend runs: eskit's cases, their floors and their peers, in one process."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import trio

from benchmarks import cases, floors, peer
from benchmarks.domain import codec
from benchmarks.harness import Result
from engine import MemoryStore


@attrs.frozen
class Sizes:
    """How much work each case does."""

    sequential: int
    streams: int
    concurrent_tasks: int
    per_task: int
    batches: int
    stream_events: int
    read_all_events: int

    @classmethod
    def quick(cls) -> Sizes:
        return cls(300, 50, 64, 5, 20, 2_000, 10_000)

    @classmethod
    def full(cls) -> Sizes:
        return cls(3_000, 100, 64, 50, 100, 10_000, 100_000)

    def as_dict(self) -> dict[str, int]:
        return attrs.asdict(self)


def _run(func: Callable[..., Any], *args: Any) -> Any:
    return trio.run(func, *args)


def memory(folder: Path, sizes: Sizes) -> Iterator[Result]:
    """The in-memory store (with the codec, as a database backend would): no floor; the
    peer is eventsourcing's POPO (plain old Python objects) persistence."""
    env = {"PERSISTENCE_MODULE": "eventsourcing.popo", "AGGREGATE_CACHE_MAXSIZE": "1000"}

    async def sequential() -> Any:
        return await cases.command_sequential(MemoryStore(codec()), sizes.sequential, sizes.streams)

    rate, watch = _run(sequential)
    peer_rate, _ = peer.in_env(env, peer.sequential, sizes.sequential, sizes.streams)
    yield Result(
        "command.sequential",
        "memory",
        "commands",
        rate,
        None,
        peer_rate,
        watch.percentile_ms(0.5),
        watch.percentile_ms(0.99),
    )

    async def concurrent() -> float:
        return await cases.command_concurrent(
            MemoryStore(codec()), sizes.concurrent_tasks, sizes.per_task
        )

    yield Result(
        "command.concurrent",
        "memory",
        "commands",
        _run(concurrent),
        None,
        peer.in_env(env, peer.concurrent, sizes.concurrent_tasks, sizes.per_task),
    )

    async def batch() -> float:
        return await cases.append_batch(MemoryStore(codec()), sizes.batches, 100)

    yield Result("append.batch100", "memory", "events", _run(batch))

    async def load() -> float:
        store: MemoryStore[Any] = MemoryStore(codec())
        await cases.fill_stream(store, "long", sizes.stream_events)
        return await cases.load_stream(store, "long", sizes.stream_events)

    yield Result(
        "load.stream10k",
        "memory",
        "events",
        _run(load),
        None,
        peer.in_env(env, peer.load_stream, sizes.stream_events),
    )

    async def scan() -> float:
        store: MemoryStore[Any] = MemoryStore(codec())
        for i in range(0, sizes.read_all_events, 1000):
            await cases.fill_stream(store, f"s-{i}", 1000)
        return await cases.read_all(store, sizes.read_all_events)

    yield Result("read_all", "memory", "events", _run(scan))


ALL: dict[str, Callable[[Path, Sizes], Iterator[Result]]] = {"memory": memory}

_ = floors  # the database backends below use the floors
