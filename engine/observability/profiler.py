"""A profiler: rolling-window latency percentiles per operation, and degradation detection.

``profiler.record(operation, seconds, ok=...)`` is all a caller does (it is the
:class:`~engine.middleware.Profiler` protocol that
:func:`~engine.middleware.profiler_middleware` records into). The profiler keeps, per
operation, a ring of time slices; each slice holds a count, an error count, the sum, the
minimum, the maximum and a log-bucketed histogram of the durations (the DDSketch idea:
bucket ``i`` holds values in ``(gamma**(i-1), gamma**i]``, so every percentile it reports
is within ``relative_accuracy`` of a real sample). Recording is O(1) and memory is
bounded by the number of slices, whatever the rate.

Two windows are compared:

* the **current window**: the last ``slices`` slices, the newest one still filling (so
  it spans between ``window * (slices - 1) / slices`` and ``window`` seconds);
* the **baseline**: the ``baseline_windows`` windows before it.

An operation is **degraded** when both have at least ``min_samples`` samples and the
current percentile (p95 by default) is more than ``degradation_factor`` times the
baseline's and at least ``min_increase`` seconds above it (so that a jump from 20 µs
to 50 µs does not count), or when its error ratio grew by more than
``error_ratio_increase``.

Time comes from Trio's clock (``trio.current_time``), so tests drive it with
``trio.testing.MockClock(autojump_threshold=0)`` and get exact windows.
"""

from __future__ import annotations

import collections
import contextlib
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import attrs
import trio

__all__ = [
    "DEFAULT_PERCENTILES",
    "Degradation",
    "OperationStatistics",
    "Profiler",
]

#: The percentiles reported for every operation.
DEFAULT_PERCENTILES: tuple[float, ...] = (0.5, 0.95, 0.99)
# Durations at or below this many seconds share one bucket (the log scale needs a floor).
_FLOOR = 1e-9
_ZERO_BUCKET = -(2**31)


@attrs.define(eq=False)
class _Slice:
    index: int
    count: int = 0
    errors: int = 0
    total: float = 0.0
    low: float = math.inf
    high: float = 0.0
    buckets: collections.Counter[int] = attrs.field(factory=collections.Counter)


@attrs.frozen(kw_only=True)
class OperationStatistics:
    """One operation's figures over the current window (and its baseline).

    Attributes:
        operation: The operation's name.
        count: Samples in the current window.
        errors: Samples recorded with ``ok=False`` in the current window.
        rate: ``count`` per second of window.
        mean: Mean duration in seconds (exact), ``None`` without samples.
        min: Shortest duration (exact), ``None`` without samples.
        max: Longest duration (exact), ``None`` without samples.
        percentiles: ``{"p50": seconds, "p95": ..., "p99": ...}`` (within the profiler's
            relative accuracy); empty without samples.
        baseline_count: Samples in the baseline.
        baseline: The baseline's value of the tracked percentile, ``None`` when the
            baseline has fewer than ``min_samples`` samples.
        total_count: Samples ever recorded for this operation.
        degraded: Whether the operation counts as degraded now.
    """

    operation: str
    count: int
    errors: int
    rate: float
    mean: float | None
    min: float | None
    max: float | None
    percentiles: dict[str, float]
    baseline_count: int
    baseline: float | None
    total_count: int
    degraded: bool


@attrs.frozen(kw_only=True)
class Degradation:
    """An operation that got slower (or fails more often) than its baseline.

    Attributes:
        operation: The operation's name.
        percentile: The tracked percentile's label (``"p95"``).
        current: Its value over the current window (seconds).
        baseline: Its value over the baseline (seconds).
        ratio: ``current / baseline`` (``inf`` when the baseline is 0).
        error_ratio: Errors per sample over the current window.
        baseline_error_ratio: Errors per sample over the baseline.
    """

    operation: str
    percentile: str
    current: float
    baseline: float
    ratio: float
    error_ratio: float
    baseline_error_ratio: float


def _label(q: float) -> str:
    text = f"{q * 100:g}".replace(".", "_")
    return f"p{text}"


@attrs.define(eq=False)
class _Merged:
    count: int = 0
    errors: int = 0
    total: float = 0.0
    low: float = math.inf
    high: float = 0.0
    buckets: collections.Counter[int] = attrs.field(factory=collections.Counter)

    @classmethod
    def of(cls, slices: Iterable[_Slice]) -> _Merged:
        merged = cls()
        for piece in slices:
            merged.count += piece.count
            merged.errors += piece.errors
            merged.total += piece.total
            merged.low = min(merged.low, piece.low)
            merged.high = max(merged.high, piece.high)
            merged.buckets.update(piece.buckets)
        return merged

    def quantiles(self, qs: Sequence[float], gamma: float) -> list[float]:
        """The values at quantiles ``qs`` (ascending), clamped into [min, max]."""
        if not self.count:
            return []
        ranks = [q * (self.count - 1) for q in qs]
        values: list[float] = []
        seen = 0
        wanted = iter(ranks)
        rank = next(wanted, None)
        for key in sorted(self.buckets):
            seen += self.buckets[key]
            while rank is not None and seen > rank:
                estimate = 0.0 if key == _ZERO_BUCKET else 2 * gamma**key / (gamma + 1)
                values.append(min(self.high, max(self.low, estimate)))
                rank = next(wanted, None)
            if rank is None:
                break
        while len(values) < len(qs):  # float rounding at the top end
            values.append(self.high)
        return values


@attrs.define(eq=False)
class _Operation:
    slices: collections.deque[_Slice] = attrs.field(factory=collections.deque)
    total_count: int = 0


@attrs.define(eq=False)
class Profiler:
    """Records operation durations; reports rolling percentiles and degradations.

    Args:
        window: Seconds in the current window.
        slices: Slices per window (the window rolls forward one slice at a time).
        baseline_windows: Windows before the current one that make the baseline.
        percentiles: Quantiles reported per operation (ascending, each in [0, 1]).
        tracked: The quantile compared against the baseline (one of ``percentiles``).
        degradation_factor: Degraded when current > factor * baseline.
        min_increase: ... and current - baseline >= this many seconds.
        error_ratio_increase: Degraded too when the error ratio grew by more than this.
        min_samples: Samples both windows need before anything counts as degraded.
        relative_accuracy: Largest relative error of a reported percentile.
        clock: Seconds, monotonic; Trio's clock by default (so call :meth:`record`
            from inside ``trio.run``).

    Example:
        >>> profiler = Profiler()
        >>> handler.use(profiler_middleware(profiler))
        >>> profiler.statistics()["command.Deposit"].percentiles["p95"]
    """

    window: float = 60.0
    slices: int = 6
    baseline_windows: int = 10
    percentiles: tuple[float, ...] = DEFAULT_PERCENTILES
    tracked: float = 0.95
    degradation_factor: float = 2.0
    min_increase: float = 0.001
    error_ratio_increase: float = 0.1
    min_samples: int = 20
    relative_accuracy: float = 0.01
    clock: Callable[[], float] = trio.current_time
    _operations: dict[str, _Operation] = attrs.field(factory=dict, init=False)
    _width: float = attrs.field(init=False)
    _keep: int = attrs.field(init=False)
    _gamma: float = attrs.field(init=False)
    _log_gamma: float = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        if self.window <= 0 or self.slices < 1 or self.baseline_windows < 0:
            raise ValueError("window must be > 0, slices >= 1 and baseline_windows >= 0")
        if not 0 < self.relative_accuracy < 1:
            raise ValueError("relative_accuracy must be between 0 and 1")
        if list(self.percentiles) != sorted(self.percentiles) or not all(
            0 <= q <= 1 for q in self.percentiles
        ):
            raise ValueError("percentiles must be ascending quantiles in [0, 1]")
        if self.tracked not in self.percentiles:
            raise ValueError(f"tracked ({self.tracked}) must be one of the percentiles")
        self._width = self.window / self.slices
        self._keep = self.slices * (1 + self.baseline_windows)
        self._gamma = (1 + self.relative_accuracy) / (1 - self.relative_accuracy)
        self._log_gamma = math.log(self._gamma)

    # -- recording -------------------------------------------------------------------

    def record(self, operation: str, seconds: float, *, ok: bool = True) -> None:
        """Record that ``operation`` took ``seconds`` (``ok=False``: it failed)."""
        now = int(self.clock() // self._width)
        entry = self._operations.get(operation)
        if entry is None:
            entry = self._operations[operation] = _Operation()
        ring = entry.slices
        if not ring or ring[-1].index != now:
            ring.append(_Slice(now))
            oldest = now - self._keep
            while ring[0].index <= oldest:
                ring.popleft()
        piece = ring[-1]
        piece.count += 1
        entry.total_count += 1
        if not ok:
            piece.errors += 1
        piece.total += seconds
        if seconds < piece.low:
            piece.low = seconds
        if seconds > piece.high:
            piece.high = seconds
        if seconds <= _FLOOR:
            piece.buckets[_ZERO_BUCKET] += 1
        else:
            piece.buckets[math.ceil(math.log(seconds) / self._log_gamma)] += 1

    @contextlib.contextmanager
    def measure(self, operation: str) -> Iterator[None]:
        """Time the ``with`` block as ``operation`` (an exception records ``ok=False``)."""
        started = self.clock()
        ok = False
        try:
            yield
            ok = True
        finally:
            self.record(operation, self.clock() - started, ok=ok)

    def reset(self) -> None:
        """Forget every sample."""
        self._operations.clear()

    # -- reading ---------------------------------------------------------------------

    def operations(self) -> list[str]:
        """The operations recorded so far, sorted."""
        return sorted(self._operations)

    def statistics(self) -> dict[str, OperationStatistics]:
        """Every operation's figures over the current window, by name."""
        now = int(self.clock() // self._width)
        return {name: self._statistics(name, entry, now) for name, entry in self._sorted()}

    def degradations(self) -> list[Degradation]:
        """The operations degraded now, sorted by name."""
        now = int(self.clock() // self._width)
        found = []
        for name, entry in self._sorted():
            current, baseline = self._windows(entry, now)
            degradation = self._compare(name, current, baseline)
            if degradation is not None:
                found.append(degradation)
        return found

    def to_json(self) -> dict[str, Any]:
        """The profiler's figures as a JSON-ready dict (what ``GET /profiler`` serves)."""
        stats = self.statistics()
        return {
            "window_seconds": self.window,
            "baseline_seconds": self.window * self.baseline_windows,
            "tracked": _label(self.tracked),
            "operations": {name: attrs.asdict(s) for name, s in stats.items()},
            "degraded": [
                {**attrs.asdict(d), "ratio": d.ratio if math.isfinite(d.ratio) else None}
                for d in self.degradations()
            ],
        }

    def _sorted(self) -> list[tuple[str, _Operation]]:
        return sorted(self._operations.items())

    def _windows(self, entry: _Operation, now: int) -> tuple[_Merged, _Merged]:
        start = now - self.slices  # slices with index > start are current
        oldest = now - self._keep
        current = _Merged.of(s for s in entry.slices if s.index > start)
        baseline = _Merged.of(s for s in entry.slices if oldest < s.index <= start)
        return current, baseline

    def _statistics(self, name: str, entry: _Operation, now: int) -> OperationStatistics:
        current, baseline = self._windows(entry, now)
        values = current.quantiles(self.percentiles, self._gamma)
        base = self._tracked_value(baseline)
        return OperationStatistics(
            operation=name,
            count=current.count,
            errors=current.errors,
            rate=current.count / self.window,
            mean=current.total / current.count if current.count else None,
            min=current.low if current.count else None,
            max=current.high if current.count else None,
            percentiles=dict(zip(map(_label, self.percentiles), values, strict=False)),
            baseline_count=baseline.count,
            baseline=base,
            total_count=entry.total_count,
            degraded=self._compare(name, current, baseline) is not None,
        )

    def _tracked_value(self, merged: _Merged) -> float | None:
        if merged.count < self.min_samples:
            return None
        return merged.quantiles([self.tracked], self._gamma)[0]

    def _compare(self, name: str, current: _Merged, baseline: _Merged) -> Degradation | None:
        now_value = self._tracked_value(current)
        base_value = self._tracked_value(baseline)
        if now_value is None or base_value is None:
            return None
        error_ratio = current.errors / current.count
        base_error_ratio = baseline.errors / baseline.count
        slower = (
            now_value > base_value * self.degradation_factor
            and now_value - base_value >= self.min_increase
        )
        failing = error_ratio - base_error_ratio > self.error_ratio_increase
        if not (slower or failing):
            return None
        return Degradation(
            operation=name,
            percentile=_label(self.tracked),
            current=now_value,
            baseline=base_value,
            ratio=now_value / base_value if base_value else math.inf,
            error_ratio=error_ratio,
            baseline_error_ratio=base_error_ratio,
        )
