"""Prometheus metrics of one engine, in its own ``CollectorRegistry``.

Each engine owns an :class:`EngineMetrics` (never prometheus-client's global registry,
so two engines in one process, or a test after another, never share a counter).

Counted as things happen:

* ``eskit_commands_total{plugin,command,outcome}``: commands ``handled``, ``rejected``
  (the decider refused: a :class:`~engine.errors.DomainError`) or ``failed`` (any other
  error), by command type;
* ``eskit_command_duration_seconds{plugin,command}``: a histogram of command handling;
* ``eskit_store_append_duration_seconds``: a histogram of every append (refused ones too);
* ``eskit_store_events_appended_total``: events written (a repeated idempotency key
  writes none);
* ``eskit_store_errors_total{operation,error}``: store calls that raised.

Read when scraped (from :meth:`EngineMetrics.watch`'s sources):

* ``eskit_runner_checkpoint``, ``_head``, ``_lag``, ``_parked``, ``_restarts``,
  ``_rate``, ``eskit_runner_processed_total``, ``eskit_runner_retries_total``,
  ``eskit_runner_state{state}`` (1 for the current state), by ``runner``;
* ``eskit_command_conflicts_total{plugin}``: appends retried after a conflict;
* ``eskit_lock_held{key}`` (1 per lease this node holds), ``eskit_lock_acquired_total``,
  ``eskit_lock_lost_total``;
* ``eskit_bus_published_total``, ``eskit_bus_dropped_total``,
  ``eskit_bus_reconnects_total``, ``eskit_bus_subscribers``;
* ``eskit_profiler_seconds{operation,quantile}`` and ``eskit_profiler_degraded{operation}``
  from the profiler's current window.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import attrs
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest

from engine.handler import HandlerStatistics
from engine.runners.base import RunnerState, RunnerStatistics

if TYPE_CHECKING:
    from engine.observability.instrumented import InstrumentedLocks
    from engine.observability.profiler import Profiler

__all__ = ["CONTENT_TYPE", "LATENCY_BUCKETS", "EngineMetrics", "MetricSources"]

#: The ``content-type`` of :meth:`EngineMetrics.exposition`.
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
#: Histogram buckets (seconds): from 50 µs (an in-memory append) to 10 s.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)

_OUTCOMES = ("handled", "rejected", "failed")


@attrs.define(kw_only=True, eq=False)
class MetricSources:
    """Where the scrape-time metrics are read.

    Attributes:
        runners: Runner name -> its statistics, now.
        handlers: ``(plugin, handler statistics)`` pairs, one per command handler.
        locks: The engine's instrumented lock registry.
        bus: Anything with ``statistics()`` returning ``published``, ``dropped``,
            ``subscribers`` and (for a networked bus) ``reconnects``.
        profiler: The engine's profiler.
    """

    runners: Callable[[], Mapping[str, RunnerStatistics]] = dict
    handlers: Callable[[], Iterable[tuple[str, HandlerStatistics]]] = tuple
    locks: InstrumentedLocks | None = None
    bus: Any = None
    profiler: Profiler | None = None


@attrs.define(eq=False)
class EngineMetrics:
    """The metrics of one engine.

    Args:
        node_id: Exported as ``eskit_info{node_id=...}``.
        version: Exported as ``eskit_info{version=...}``.
    """

    node_id: str = ""
    version: str = ""
    registry: CollectorRegistry = attrs.field(
        factory=lambda: CollectorRegistry(auto_describe=False), init=False
    )
    _commands: Counter = attrs.field(init=False)
    _command_duration: Histogram = attrs.field(init=False)
    _append_duration: Histogram = attrs.field(init=False)
    _events_appended: Counter = attrs.field(init=False)
    _store_errors: Counter = attrs.field(init=False)
    _sources: MetricSources = attrs.field(factory=MetricSources, init=False)

    def __attrs_post_init__(self) -> None:
        registry = self.registry
        self._commands = Counter(
            "eskit_commands",
            "Commands by plugin, command type and outcome (handled, rejected, failed).",
            ["plugin", "command", "outcome"],
            registry=registry,
        )
        self._command_duration = Histogram(
            "eskit_command_duration_seconds",
            "Time to handle a command (load, decide, append), by plugin and command type.",
            ["plugin", "command"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self._append_duration = Histogram(
            "eskit_store_append_duration_seconds",
            "Time of each append to the event store (refused appends included).",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self._events_appended = Counter(
            "eskit_store_events_appended", "Events written to the event store.", registry=registry
        )
        self._store_errors = Counter(
            "eskit_store_errors",
            "Event store calls that raised, by operation and error type.",
            ["operation", "error"],
            registry=registry,
        )
        registry.register(_Collector(self))

    # -- recording ---------------------------------------------------------------------

    def command(self, plugin: str, command: str, outcome: str, seconds: float) -> None:
        """Count one command (``outcome``: handled, rejected or failed) and its duration."""
        if outcome not in _OUTCOMES:
            raise ValueError(f"outcome must be one of {', '.join(_OUTCOMES)}, got {outcome!r}")
        self._commands.labels(plugin, command, outcome).inc()
        self._command_duration.labels(plugin, command).observe(seconds)

    def appended(self, seconds: float, events: int) -> None:
        """Count one append that took ``seconds`` and wrote ``events`` events."""
        self._append_duration.observe(seconds)
        if events:
            self._events_appended.inc(events)

    def store_error(self, operation: str, error: str) -> None:
        """Count a store call (``store.append``...) that raised ``error`` (a type name)."""
        self._store_errors.labels(operation, error).inc()

    def watch(self, sources: MetricSources) -> None:
        """Read runner, handler, lock, bus and profiler figures from ``sources`` on scrape."""
        self._sources = sources

    # -- exposition --------------------------------------------------------------------

    def exposition(self) -> bytes:
        """Every metric in the Prometheus text format (:data:`CONTENT_TYPE`)."""
        return generate_latest(self.registry)


_RUNNER_GAUGES = (
    ("checkpoint", "Position of the last event the runner is done with."),
    ("head", "Highest stored position the runner knows of."),
    ("lag", "Events the runner has yet to handle."),
    ("parked", "Events the runner parked as dead letters."),
    ("restarts", "Times the runner was restarted."),
    ("rate", "Events the runner handled per second, recently."),
)


@attrs.define(eq=False)
class _Collector:
    """Builds the scrape-time metric families from the engine's live objects."""

    metrics: EngineMetrics

    def describe(self) -> list[Metric]:
        # Registering without a collect() at registration time (the sources come later).
        return []

    def collect(self) -> Iterator[Metric]:
        sources = self.metrics._sources
        info = GaugeMetricFamily(
            "eskit_info", "The engine's node id and version.", labels=["node_id", "version"]
        )
        info.add_metric([self.metrics.node_id, self.metrics.version], 1)
        yield info
        yield from self._runners(sources.runners())
        yield from self._handlers(sources.handlers())
        if sources.locks is not None:
            yield from self._locks(sources.locks)
        if sources.bus is not None:
            yield from self._bus(sources.bus.statistics())
        if sources.profiler is not None:
            yield from self._profiler(sources.profiler)

    def _runners(self, runners: Mapping[str, RunnerStatistics]) -> Iterator[Metric]:
        ordered = sorted(runners.items())
        for metric, help_text in _RUNNER_GAUGES:
            family = GaugeMetricFamily(f"eskit_runner_{metric}", help_text, labels=["runner"])
            for name, stats in ordered:
                family.add_metric([name], getattr(stats, metric))
            yield family
        processed = CounterMetricFamily(
            "eskit_runner_processed", "Events the runner handled or parked.", labels=["runner"]
        )
        retries = CounterMetricFamily(
            "eskit_runner_retries", "Handler retries of the runner.", labels=["runner"]
        )
        state = GaugeMetricFamily(
            "eskit_runner_state", "1 for the runner's current state.", labels=["runner", "state"]
        )
        for name, stats in ordered:
            processed.add_metric([name], stats.processed)
            retries.add_metric([name], stats.retries)
            for each in RunnerState:
                state.add_metric([name, each.value], 1 if stats.state is each else 0)
        yield from (processed, retries, state)

    def _handlers(self, handlers: Iterable[tuple[str, HandlerStatistics]]) -> Iterator[Metric]:
        conflicts: dict[str, int] = {}
        for plugin, stats in handlers:
            conflicts[plugin] = conflicts.get(plugin, 0) + stats.conflicts
        family = CounterMetricFamily(
            "eskit_command_conflicts",
            "Appends retried after a concurrency conflict.",
            labels=["plugin"],
        )
        for plugin, count in sorted(conflicts.items()):
            family.add_metric([plugin], count)
        yield family

    def _locks(self, locks: InstrumentedLocks) -> Iterator[Metric]:
        held = GaugeMetricFamily(
            "eskit_lock_held", "1 for each lease this node holds.", labels=["key", "owner"]
        )
        for lease in locks.held():
            held.add_metric([lease.key, lease.owner], 1)
        stats = locks.statistics()
        yield held
        yield CounterMetricFamily(
            "eskit_lock_acquired", "Leases this node acquired.", value=stats.acquired
        )
        yield CounterMetricFamily(
            "eskit_lock_lost", "Leases this node lost while holding them.", value=stats.lost
        )

    def _bus(self, stats: Any) -> Iterator[Metric]:
        yield CounterMetricFamily(
            "eskit_bus_published", "Publications on the event bus.", value=stats.published
        )
        yield CounterMetricFamily(
            "eskit_bus_dropped",
            "Notifications dropped because a subscriber was full.",
            value=getattr(stats, "dropped", 0),
        )
        yield CounterMetricFamily(
            "eskit_bus_reconnects",
            "Times the bus reconnected to its server (0 for the in-process bus).",
            value=getattr(stats, "reconnects", 0),
        )
        yield GaugeMetricFamily(
            "eskit_bus_subscribers",
            "Open bus subscriptions.",
            value=getattr(stats, "subscribers", 0),
        )

    def _profiler(self, profiler: Profiler) -> Iterator[Metric]:
        seconds = GaugeMetricFamily(
            "eskit_profiler_seconds",
            "Operation duration percentiles over the profiler's current window.",
            labels=["operation", "quantile"],
        )
        degraded = GaugeMetricFamily(
            "eskit_profiler_degraded",
            "1 when the operation is slower (or fails more) than its baseline.",
            labels=["operation"],
        )
        quantiles = [f"{q:g}" for q in profiler.percentiles]
        for name, stats in profiler.statistics().items():
            for quantile, value in zip(quantiles, stats.percentiles.values(), strict=False):
                seconds.add_metric([name, quantile], value)
            degraded.add_metric([name], 1 if stats.degraded else 0)
        yield seconds
        yield degraded
