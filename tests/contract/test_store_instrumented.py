"""The store contract through :class:`InstrumentedStore`, over the memory and SQLite backends.

The wrapper must change nothing a caller can observe: every contract test passes with
every store, snapshot store and checkpoint store wrapped, and the profiler and metrics
shared by all the clients of one test.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from engine.codec import Codec
from engine.observability.instrumented import (
    InstrumentedCheckpointStore,
    InstrumentedSnapshotStore,
    InstrumentedStore,
)
from engine.observability.metrics import EngineMetrics
from engine.observability.profiler import Profiler
from engine.stores.base import DEFAULT_MAX_EVENT_BYTES, CheckpointStore, SnapshotStore
from engine.testing.contract import Backend, EventStoreContract
from tests.contract.test_store_memory import memory_backend
from tests.contract.test_store_sqlite import sqlite_backend


def instrumented(inner: Backend) -> Backend:
    """``inner`` with each store it opens wrapped (one profiler and metrics for all)."""
    profiler = Profiler()
    metrics = EngineMetrics(node_id="contract")

    @asynccontextmanager
    async def open_store(
        codec: Codec[Any], *, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES
    ) -> AsyncIterator[InstrumentedStore[Any]]:
        async with inner.open_store(codec, max_event_bytes=max_event_bytes) as store:
            yield InstrumentedStore(store, profiler=profiler, metrics=metrics)

    @asynccontextmanager
    async def open_snapshots(
        codec: Codec[Any], state_type: type
    ) -> AsyncIterator[SnapshotStore[Any]]:
        async with inner.open_snapshots(codec, state_type) as snapshots:
            yield InstrumentedSnapshotStore(snapshots, profiler=profiler, metrics=metrics)

    @asynccontextmanager
    async def open_checkpoints() -> AsyncIterator[CheckpointStore]:
        async with inner.open_checkpoints() as checkpoints:
            yield InstrumentedCheckpointStore(checkpoints, profiler=profiler, metrics=metrics)

    return Backend(f"instrumented-{inner.name}", open_store, open_snapshots, open_checkpoints)


BACKENDS: dict[str, Callable[[Path], Backend]] = {
    "memory": lambda _: memory_backend(),
    "sqlite": lambda tmp_path: sqlite_backend(tmp_path / "events.db"),
}


class TestInstrumentedStoreContract(EventStoreContract):
    @pytest.fixture(params=sorted(BACKENDS))
    def backend(self, request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
        return instrumented(BACKENDS[request.param](tmp_path))
