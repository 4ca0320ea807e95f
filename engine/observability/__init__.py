"""Observability: a profiler, instrumented stores, structured logs, metrics, a status page.

* :mod:`engine.observability.profiler`: rolling-window percentiles per operation and
  degradation detection (:class:`Profiler`), on Trio's clock.
* :mod:`engine.observability.instrumented`: :class:`InstrumentedStore` (any event store,
  every call profiled, counted and logged) and :class:`InstrumentedLocks`.
* :mod:`engine.observability.logging`: :class:`JsonFormatter`, :func:`configure_logging`,
  secret redaction.
* :mod:`engine.observability.commands`: :func:`command_middleware` (logs, counts, maps).
* :mod:`engine.observability.metrics`: :class:`EngineMetrics`, a per-engine Prometheus
  registry.
* :mod:`engine.observability.status` and :mod:`engine.observability.page`: the status
  page (``GET /status``) and its JSON (``GET /status.json``).
"""

from __future__ import annotations

from engine.observability.commands import command_middleware
from engine.observability.instrumented import (
    InstrumentedCheckpointStore,
    InstrumentedLocks,
    InstrumentedSnapshotStore,
    InstrumentedStore,
)
from engine.observability.logging import JsonFormatter, configure_logging, redact_text
from engine.observability.metrics import EngineMetrics, MetricSources
from engine.observability.profiler import Degradation, OperationStatistics, Profiler

__all__ = [
    "Degradation",
    "EngineMetrics",
    "InstrumentedCheckpointStore",
    "InstrumentedLocks",
    "InstrumentedSnapshotStore",
    "InstrumentedStore",
    "JsonFormatter",
    "MetricSources",
    "OperationStatistics",
    "Profiler",
    "command_middleware",
    "configure_logging",
    "redact_text",
]
