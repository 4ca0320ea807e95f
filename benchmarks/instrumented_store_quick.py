"""What the instrumented store costs: each figure bare and wrapped, in one run.

Not a test: the machine is shared and noisy, so compare the ratios of one run. Each
backend is measured bare and through :class:`InstrumentedStore` (profiler + metrics,
DEBUG logging off as in production), alternating, best of ``ROUNDS``.
Run: /tmp/venv/bin/python -m benchmarks.instrumented_store_quick
"""

from __future__ import annotations

import gc
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from engine.events import NewEvent
from engine.observability.instrumented import InstrumentedStore
from engine.observability.metrics import EngineMetrics
from engine.observability.profiler import Profiler
from engine.stores.memory import MemoryStore
from engine.stores.sqlite import open_sqlite_store
from engine.testing.contract import Note, contract_codec

TEXT = "x" * 190  # about a 207-byte payload, as in DESIGN.md
ROUNDS = 4
SINGLE = 2000
BATCHES = 100
READ_EVENTS = 50_000

Opener = Callable[[Path], AbstractAsyncContextManager[Any]]


@asynccontextmanager
async def _memory(path: Path) -> AsyncIterator[Any]:
    yield MemoryStore(contract_codec())


@asynccontextmanager
async def _sqlite(path: Path) -> AsyncIterator[Any]:
    async with open_sqlite_store(path, contract_codec()) as store:
        yield store


async def _measure(store: Any) -> dict[str, float]:
    figures = {}
    start = time.perf_counter()
    for i in range(SINGLE):
        await store.append(f"s-{i % 100}", [NewEvent(Note(TEXT))])
    figures["append 1"] = SINGLE / (time.perf_counter() - start)
    start = time.perf_counter()
    for b in range(BATCHES):
        await store.append(f"b-{b}", [NewEvent(Note(TEXT)) for _ in range(100)])
    figures["append 100"] = BATCHES * 100 / (time.perf_counter() - start)
    done = SINGLE + BATCHES * 100
    while done < READ_EVENTS:
        await store.append(f"r-{done}", [NewEvent(Note(TEXT)) for _ in range(1000)])
        done += 1000
    start = time.perf_counter()
    position, read = 0, 0
    while batch := await store.read_all(after_position=position, limit=1000):
        position = batch[-1].position
        read += len(batch)
    figures["read_all"] = read / (time.perf_counter() - start)
    return figures


async def _run(name: str, opener: Opener, folder: Path) -> list[str]:
    best: dict[str, dict[str, float]] = {"bare": {}, "instrumented": {}}
    for round_ in range(ROUNDS):
        # Alternate which goes first, so that neither always pays for the other's garbage.
        modes = ("bare", "instrumented") if round_ % 2 == 0 else ("instrumented", "bare")
        for mode in modes:
            async with opener(folder / f"{name}-{mode}-{round_}.db") as raw:
                store = raw
                if mode == "instrumented":
                    store = InstrumentedStore(raw, profiler=Profiler(), metrics=EngineMetrics())
                gc.collect()  # the previous store's events are garbage: collect them now
                for key, value in (await _measure(store)).items():
                    best[mode][key] = max(best[mode].get(key, 0.0), value)
    rows = []
    for key in best["bare"]:
        bare, wrapped = best["bare"][key], best["instrumented"][key]
        rows.append(f"{name:<7} {key:<11} {bare:>12,.0f} {wrapped:>14,.0f} {wrapped / bare:>7.2f}")
    return rows


async def main() -> None:
    print(f"{'backend':<7} {'ev/s':<11} {'bare':>12} {'instrumented':>14} {'ratio':>7}")
    with tempfile.TemporaryDirectory() as folder:
        for name, opener in (("memory", _memory), ("sqlite", _sqlite)):
            for row in await _run(name, opener, Path(folder)):
                print(row, flush=True)


if __name__ == "__main__":
    trio.run(main)
