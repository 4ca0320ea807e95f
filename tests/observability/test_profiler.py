"""The profiler on virtual time: rolling percentiles, windows, degradation detection."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from engine.decider import Decider
from engine.errors import DomainError
from engine.handler import CommandContext, CommandHandler, CommandResult, NextHandler
from engine.middleware import profiler_middleware
from engine.observability.profiler import Profiler
from engine.stores.memory import MemoryStore


def approx(value: float) -> Any:
    """Within the profiler's default relative accuracy (1%)."""
    return pytest.approx(value, rel=0.01)


async def test_percentiles_of_a_window(autojump_clock: trio.testing.MockClock) -> None:
    """p50/p95/p99 are within 1% of the true sample; count, min, max and mean are exact."""
    profiler = Profiler()
    for ms in range(100, 0, -1):
        profiler.record("op", ms / 1000)
    stats = profiler.statistics()["op"]
    assert stats.count == 100
    assert stats.errors == 0
    assert (stats.min, stats.max) == (0.001, 0.1)
    assert stats.mean == pytest.approx(0.0505)
    assert stats.percentiles == {"p50": approx(0.050), "p95": approx(0.095), "p99": approx(0.099)}
    assert stats.rate == 100 / 60


async def test_one_value_is_reported_exactly(autojump_clock: trio.testing.MockClock) -> None:
    """When every sample is the same, every percentile is that value (clamped to min/max)."""
    profiler = Profiler()
    for _ in range(10):
        profiler.record("op", 0.25)
    profiler.record("zero", 0.0)
    assert profiler.statistics()["op"].percentiles == {"p50": 0.25, "p95": 0.25, "p99": 0.25}
    assert profiler.statistics()["zero"].percentiles == {"p50": 0.0, "p95": 0.0, "p99": 0.0}


async def test_measure_uses_trios_clock(autojump_clock: trio.testing.MockClock) -> None:
    """``measure`` times a block on Trio's clock; an exception records a failure."""
    profiler = Profiler()
    with profiler.measure("sleep"):
        await trio.sleep(0.5)

    async def fail_slowly() -> None:
        with profiler.measure("sleep"):
            await trio.sleep(1.5)
            raise ZeroDivisionError

    with pytest.raises(ZeroDivisionError):
        await fail_slowly()
    stats = profiler.statistics()["sleep"]
    assert (stats.count, stats.errors, stats.min, stats.max) == (2, 1, 0.5, 1.5)


async def test_the_window_rolls_forward_slice_by_slice(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Samples leave the current window once their slice is ``window`` seconds old."""
    profiler = Profiler(window=60, slices=6)
    profiler.record("op", 0.01)  # slice [0, 10)
    await trio.sleep(30)
    profiler.record("op", 0.02)  # slice [30, 40)
    assert profiler.statistics()["op"].count == 2
    await trio.sleep(29.9)  # t=59.9: the first slice is still in the window
    assert profiler.statistics()["op"].count == 2
    await trio.sleep(0.1)  # t=60: it moved into the baseline
    stats = profiler.statistics()["op"]
    assert (stats.count, stats.min, stats.baseline_count, stats.total_count) == (1, 0.02, 1, 2)
    await trio.sleep(60 * 11)  # older than the baseline too: forgotten
    stats = profiler.statistics()["op"]
    assert (stats.count, stats.baseline_count, stats.total_count) == (0, 0, 2)
    assert stats.percentiles == {}
    assert stats.mean is None


async def test_memory_is_bounded_by_the_number_of_slices(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """An operation recorded for hours keeps at most ``slices * (1 + baseline_windows)`` slices."""
    profiler = Profiler(window=10, slices=2, baseline_windows=3)
    for _ in range(1000):
        profiler.record("op", 0.001)
        await trio.sleep(1)
    assert len(profiler._operations["op"].slices) <= 2 * (1 + 3)
    assert profiler.statistics()["op"].total_count == 1000


async def record_for(profiler: Profiler, seconds: float, every: float, value: float) -> None:
    """Record ``value`` every ``every`` seconds for ``seconds`` seconds of virtual time."""
    end = trio.current_time() + seconds
    while trio.current_time() < end:
        profiler.record("command.Deposit", value)
        await trio.sleep(every)


async def test_a_slowdown_is_detected_against_the_baseline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """p95 rising over twice the baseline's flags the operation; it clears on recovery."""
    profiler = Profiler(window=60, baseline_windows=5, min_samples=20)
    await record_for(profiler, 600, 1.0, 0.010)
    assert profiler.degradations() == []
    assert profiler.statistics()["command.Deposit"].baseline == approx(0.010)

    await record_for(profiler, 60, 1.0, 0.050)
    [degradation] = profiler.degradations()
    assert degradation.operation == "command.Deposit"
    assert degradation.percentile == "p95"
    assert degradation.current == approx(0.050)
    assert degradation.baseline == approx(0.010)
    assert degradation.ratio == approx(5.0)
    assert profiler.statistics()["command.Deposit"].degraded

    # Back to normal: once the slow minute has left the current window it is fine again.
    await record_for(profiler, 60, 1.0, 0.010)
    assert profiler.degradations() == []


async def test_a_small_or_thin_change_is_not_a_degradation(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Too few samples, or a rise under ``min_increase`` seconds, flags nothing."""
    profiler = Profiler(window=60, baseline_windows=2, min_samples=20)
    await record_for(profiler, 120, 1.0, 0.00002)
    await record_for(profiler, 60, 1.0, 0.00009)  # 4.5x, but only 70 µs more
    assert profiler.degradations() == []

    thin = Profiler(window=60, baseline_windows=2, min_samples=20)
    await record_for(thin, 120, 1.0, 0.010)
    await record_for(thin, 60, 4.0, 0.500)  # 15 samples: too few to judge
    assert thin.degradations() == []
    assert thin.statistics()["command.Deposit"].percentiles["p95"] == approx(0.5)


async def test_a_rising_error_ratio_is_a_degradation(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Failures growing by more than ``error_ratio_increase`` flag the operation too."""
    profiler = Profiler(window=60, baseline_windows=2, min_samples=20)
    await record_for(profiler, 120, 1.0, 0.010)
    for n in range(60):
        profiler.record("command.Deposit", 0.010, ok=n % 2 == 0)
        await trio.sleep(1)
    # t=180: the current window is the slices from t=130 on (50 samples, 25 failed); the
    # failures at t=120..129 are in the baseline (5 of its 120 samples).
    [degradation] = profiler.degradations()
    assert (degradation.error_ratio, degradation.baseline_error_ratio) == (0.5, 5 / 120)
    document = profiler.to_json()
    json.dumps(document, allow_nan=False)
    assert document["degraded"][0]["operation"] == "command.Deposit"
    assert document["operations"]["command.Deposit"]["errors"] == 25


@attrs.frozen
class Add:
    amount: int


@attrs.frozen
class Added:
    amount: int


def decide(state: int, command: Add) -> Sequence[Added]:
    if command.amount <= 0:
        raise DomainError("amount must be positive")
    return [Added(command.amount)]


counter: Decider[int, Add, Added] = Decider(
    initial_state=lambda: 0,
    decide=decide,
    evolve=lambda state, event: state + event.amount,
    command_types=(Add,),
)


async def test_profiler_middleware_records_each_command(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The engine's profiler middleware records each command's time on virtual time."""
    from engine.codec import Codec, EventRegistry

    registry = EventRegistry()
    registry.register(Added, name="Added")
    profiler = Profiler()

    async def slow(context: CommandContext[Any], call_next: NextHandler) -> CommandResult[Any, Any]:
        await trio.sleep(0.25 if context.command.amount < 100 else 2.0)
        return await call_next(context)

    handler: CommandHandler[int, Add, Added] = CommandHandler(
        decider=counter,
        store=MemoryStore(Codec(registry)),
        middleware=[profiler_middleware(profiler), slow],
    )
    for amount in (1, 2, 3, 500):
        await handler.handle("c-1", Add(amount))
    with pytest.raises(DomainError):
        await handler.handle("c-1", Add(-1))
    stats = profiler.statistics()["command.Add"]
    assert (stats.count, stats.errors, stats.min, stats.max) == (5, 1, 0.25, 2.0)
    assert stats.percentiles["p50"] == 0.25


def test_settings_are_checked() -> None:
    """Impossible settings are refused when the profiler is made."""
    with pytest.raises(ValueError, match="window"):
        Profiler(window=0)
    with pytest.raises(ValueError, match="tracked"):
        Profiler(tracked=0.9)
    with pytest.raises(ValueError, match="ascending"):
        Profiler(percentiles=(0.99, 0.5))
    with pytest.raises(ValueError, match="relative_accuracy"):
        Profiler(relative_accuracy=1.5)
