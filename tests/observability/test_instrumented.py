"""The instrumented store and lock registry: what they record, count and log."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from prometheus_client.parser import text_string_to_metric_families

from engine.errors import ConcurrencyError, LockNotHeldError
from engine.events import ExpectedVersion, NewEvent
from engine.locks.memory import MemoryLockRegistry
from engine.observability.instrumented import (
    InstrumentedLocks,
    InstrumentedSnapshotStore,
    InstrumentedStore,
)
from engine.observability.logging import JsonFormatter
from engine.observability.metrics import EngineMetrics
from engine.observability.profiler import Profiler
from engine.stores.base import Snapshot
from engine.stores.memory import MemoryStore
from engine.stores.sqlite import open_sqlite_store
from engine.testing.contract import Note, Tally, contract_codec


def samples(metrics: EngineMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape, keyed by (name, sorted labels)."""
    text = metrics.exposition().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


@pytest.fixture
def store_log() -> Iterator[io.StringIO]:
    """The ``eskit.store`` log as JSON lines, at DEBUG."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter({"node_id": "n1"}))
    logger = logging.getLogger("eskit.store")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.DEBUG)
    yield stream
    logger.removeHandler(handler)
    logger.setLevel(old_level)


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


async def test_every_call_is_profiled_counted_and_logged(
    autojump_clock: trio.testing.MockClock, store_log: io.StringIO
) -> None:
    """Each store call is a profiler operation and a DEBUG line; appends are counted."""
    profiler, metrics = Profiler(), EngineMetrics()
    store = InstrumentedStore(MemoryStore(contract_codec()), profiler=profiler, metrics=metrics)
    first = await store.append(
        "s-1", [NewEvent(Note("a")), NewEvent(Note("b"))], idempotency_key="k"
    )
    again = await store.append(
        "s-1", [NewEvent(Note("a")), NewEvent(Note("b"))], idempotency_key="k"
    )
    assert [e.event_id for e in again] == [e.event_id for e in first]
    with pytest.raises(ConcurrencyError):
        await store.append("s-1", [NewEvent(Note("c"))], expected_version=ExpectedVersion.NO_STREAM)
    assert len(await store.load("s-1")) == 2
    assert await store.stream_version("s-1") == 2
    assert len(await store.read_all()) == 2
    assert await store.head_position() == 2
    assert await store.find_idempotent("k") is not None

    stats = profiler.statistics()
    assert stats["store.append"].count == 3
    assert stats["store.append"].errors == 1
    assert {name: s.count for name, s in stats.items() if name != "store.append"} == {
        "store.find_idempotent": 1,
        "store.head_position": 1,
        "store.load": 1,
        "store.read_all": 1,
        "store.stream_version": 1,
    }
    scraped = samples(metrics)
    assert scraped["eskit_store_events_appended_total", ()] == 2  # the repeat wrote nothing
    assert scraped["eskit_store_append_duration_seconds_count", ()] == 3
    assert (
        scraped[
            "eskit_store_errors_total",
            (("error", "ConcurrencyError"), ("operation", "store.append")),
        ]
        == 1
    )

    logged = lines(store_log)
    assert [line["operation"] for line in logged] == [
        "store.append",
        "store.append",
        "store.append",
        "store.load",
        "store.stream_version",
        "store.read_all",
        "store.head_position",
        "store.find_idempotent",
    ]
    assert {line["level"] for line in logged} == {"debug"}  # a conflict is the caller's
    assert logged[0]["stream_id"] == "s-1"
    assert logged[0]["events"] == 2
    assert logged[0]["node_id"] == "n1"
    assert "refused: ConcurrencyError" in logged[2]["message"]
    assert all('"a"' not in json.dumps(line) for line in logged)  # no payloads


async def test_a_failing_backend_is_logged_as_a_warning(
    tmp_path: Path, store_log: io.StringIO
) -> None:
    """A store call that fails for the backend's own reasons is a WARNING and an error count."""
    profiler, metrics = Profiler(), EngineMetrics()
    async with open_sqlite_store(tmp_path / "e.db", contract_codec()) as raw:
        store = InstrumentedStore(raw, profiler=profiler, metrics=metrics)
        await store.append("s", [NewEvent(Note("x"))])
    with pytest.raises(trio.ClosedResourceError):
        await store.append("s", [NewEvent(Note("y"))])
    [warning] = [line for line in lines(store_log) if line["level"] == "warning"]
    assert warning["operation"] == "store.append"
    assert "ClosedResourceError" in warning["message"]
    assert profiler.statistics()["store.append"].errors == 1
    scraped = samples(metrics)
    assert scraped["eskit_store_events_appended_total", ()] == 1
    key = (("error", "ClosedResourceError"), ("operation", "store.append"))
    assert scraped["eskit_store_errors_total", key] == 1


async def test_other_attributes_pass_through(tmp_path: Path) -> None:
    """Snapshots come back instrumented; anything else is the wrapped store's own."""
    profiler = Profiler()
    async with open_sqlite_store(tmp_path / "e.db", contract_codec()) as raw:
        store: InstrumentedStore[Any] = InstrumentedStore(raw, profiler=profiler)
        snapshots = store.snapshots(Tally)
        assert isinstance(snapshots, InstrumentedSnapshotStore)
        await snapshots.save_snapshot(Snapshot("s", 3, Tally(3)))
        assert await snapshots.load_snapshot("s") == Snapshot("s", 3, Tally(3))
        await store.save_checkpoint("runner", 5, expected=None)
        assert await store.load_checkpoint("runner") == 5
        assert store.database is raw.database
    assert set(profiler.operations()) == {
        "store.load_checkpoint",
        "store.load_snapshot",
        "store.save_checkpoint",
        "store.save_snapshot",
    }
    memory: InstrumentedStore[Any] = InstrumentedStore(MemoryStore(contract_codec()))
    assert not hasattr(memory, "no_such_attribute")
    assert getattr(memory, "transactional", None) is None


async def test_locks_know_what_they_hold(autojump_clock: trio.testing.MockClock) -> None:
    """Held leases are listed with their token and age; a lost lease is counted."""
    inner = MemoryLockRegistry("node-a")
    locks = InstrumentedLocks(inner)
    async with locks.hold("runner/x") as lease:
        await trio.sleep(2)
        [held] = locks.held()
        assert (held.key, held.owner, held.token) == ("runner/x", "node-a", lease.token)
        assert trio.current_time() - held.since == 2
        assert await locks.owner("runner/x") == "node-a"
        assert locks.expire("runner/y") is False  # the inner registry's own method
    assert locks.held() == []

    async def hold_forever(task_status: trio.TaskStatus[None]) -> None:
        async with locks.hold("runner/y"):
            task_status.started()
            await trio.sleep_forever()

    async def holder(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with pytest.raises(LockNotHeldError):
            await hold_forever(task_status)

    async with trio.open_nursery() as nursery:
        await nursery.start(holder)
        async with trio.open_nursery() as waiters:
            waiters.start_soon(_hold_briefly, locks, "runner/y")
            await trio.testing.wait_all_tasks_blocked()
            assert locks.statistics().waiting == 1
            assert inner.expire("runner/y")
    stats = locks.statistics()
    assert (stats.held, stats.acquired, stats.lost, stats.waiting) == (0, 3, 1, 0)


async def _hold_briefly(locks: InstrumentedLocks, key: str) -> None:
    async with locks.hold(key):
        await trio.sleep(1)
