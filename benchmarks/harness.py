"""Result records, timing, machine facts and the printed table."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs


@attrs.define
class Result:
    """One measured case on one backend, beside its floor and peer from the same run.

    ``value`` is a throughput (``unit`` per second); ``floor`` is the raw driver doing the
    same work, ``peer`` the eventsourcing library doing the equivalent, both in ``unit``
    per second, or ``None`` where none applies.
    """

    name: str
    backend: str
    unit: str
    value: float
    floor: float | None = None
    peer: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    notes: str = ""

    def as_json(self) -> dict[str, Any]:
        return attrs.asdict(self)


class Stopwatch:
    """Collects per-operation latencies and the wall time of a run (``time.perf_counter``)."""

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.started = 0.0
        self.elapsed = 0.0

    def __enter__(self) -> Stopwatch:
        self.started = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.elapsed = time.perf_counter() - self.started

    def rate(self, count: int) -> float:
        return count / self.elapsed if self.elapsed > 0 else float("inf")

    def percentile_ms(self, q: float) -> float | None:
        if not self.latencies:
            return None
        ordered = sorted(self.latencies)
        index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
        return ordered[index] * 1000


def machine() -> dict[str, Any]:
    """Facts about the machine the run happened on."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = next(
                (
                    line.split(":", 1)[1].strip()
                    for line in cpuinfo
                    if line.startswith("model name")
                ),
                platform.processor(),
            )
    except OSError:
        model = platform.processor()
    try:
        with open("/proc/meminfo") as meminfo:
            memory_kb = next(
                int(line.split()[1]) for line in meminfo if line.startswith("MemTotal")
            )
    except (OSError, StopIteration):
        memory_kb = 0
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_gib": round(memory_kb / 1024 / 1024, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.2f}"


def _ratio(value: float, other: float | None) -> str:
    return "-" if not other else f"{value / other:.2f}x"


def table(results: Sequence[Result]) -> str:
    """The results as a Markdown table, with value/floor and value/peer ratios."""
    header = (
        "| case | backend | unit/s | value | floor | vs floor | peer | vs peer | p50 ms | p99 ms |"
    )
    lines = [header, "|" + "---|" * 10]
    for r in results:
        lines.append(
            f"| {r.name} | {r.backend} | {r.unit} | {_fmt(r.value)} | {_fmt(r.floor)} | "
            f"{_ratio(r.value, r.floor)} | {_fmt(r.peer)} | {_ratio(r.value, r.peer)} | "
            f"{_fmt(r.p50_ms)} | {_fmt(r.p99_ms)} |"
        )
    return "\n".join(lines)


def write_json(path: Path, results: Sequence[Result], extra: dict[str, Any]) -> None:
    """Write ``{"machine": ..., "results": [...]}`` to ``path``."""
    payload = {
        "machine": {**machine(), **extra},
        "results": [r.as_json() for r in results],
    }
    path.write_text(json.dumps(payload, indent=2) + "\n")


def median(values: Sequence[float]) -> float:
    return statistics.median(values)
