"""Draw command throughput against concurrency per backend, as a small SVG (no plotting library).

Usage: ``python -m benchmarks.plot results.json benchmarks/concurrency.svg``
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

WIDTH, HEIGHT = 640, 360
LEFT, RIGHT, TOP, BOTTOM = 70, 150, 30, 50
COLOURS = {"memory": "#888888", "sqlite": "#1f77b4", "postgres": "#2ca02c", "nats": "#d62728"}


def curves(results: list[dict[str, Any]]) -> dict[str, list[tuple[int, float]]]:
    """backend -> [(concurrency, commands/s)] from ``command.curve.c<N>`` results."""
    found: dict[str, list[tuple[int, float]]] = {}
    for result in results:
        name = result["name"]
        # The in-memory store is an order of magnitude above the databases; it would
        # flatten their curves, so the plot shows the database backends only.
        if name.startswith("command.curve.c") and result["backend"] != "memory":
            level = int(name.removeprefix("command.curve.c"))
            found.setdefault(result["backend"], []).append((level, float(result["value"])))
    return {backend: sorted(points) for backend, points in found.items()}


def svg(data: dict[str, list[tuple[int, float]]], title: str) -> str:
    """A log-x / linear-y line chart of the curves."""
    levels = sorted({level for points in data.values() for level, _ in points}) or [1]
    top = max((value for points in data.values() for _, value in points), default=1.0) * 1.1
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    span = math.log2(max(levels)) - math.log2(min(levels)) or 1.0

    def x(level: int) -> float:
        return LEFT + (math.log2(level) - math.log2(min(levels))) / span * plot_w

    def y(value: float) -> float:
        return TOP + plot_h - value / top * plot_h

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        'font-family="sans-serif" font-size="12">',
        f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
        f'<text x="{LEFT}" y="18" font-size="14">{title}</text>',
        f'<line x1="{LEFT}" y1="{TOP + plot_h}" x2="{LEFT + plot_w}" y2="{TOP + plot_h}" stroke="black"/>',
        f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{TOP + plot_h}" stroke="black"/>',
    ]
    for level in levels:
        parts.append(
            f'<text x="{x(level):.1f}" y="{TOP + plot_h + 18}" text-anchor="middle">{level}</text>'
        )
    parts.append(
        f'<text x="{LEFT + plot_w / 2}" y="{HEIGHT - 10}" text-anchor="middle">concurrent tasks</text>'
    )
    for i in range(5):
        value = top * i / 4
        parts.append(
            f'<text x="{LEFT - 6}" y="{y(value) + 4:.1f}" text-anchor="end">{value:,.0f}</text>'
        )
        parts.append(
            f'<line x1="{LEFT}" y1="{y(value):.1f}" x2="{LEFT + plot_w}" y2="{y(value):.1f}" '
            'stroke="#eeeeee"/>'
        )
    for row, (backend, points) in enumerate(sorted(data.items())):
        colour = COLOURS.get(backend, "#9467bd")
        path = " ".join(f"{x(level):.1f},{y(value):.1f}" for level, value in points)
        parts.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>')
        for level, value in points:
            parts.append(f'<circle cx="{x(level):.1f}" cy="{y(value):.1f}" r="3" fill="{colour}"/>')
        legend_y = TOP + 10 + row * 18
        parts.append(
            f'<rect x="{WIDTH - RIGHT + 15}" y="{legend_y - 9}" width="12" height="12" fill="{colour}"/>'
        )
        parts.append(f'<text x="{WIDTH - RIGHT + 32}" y="{legend_y + 1}">{backend}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    results = json.loads(Path(argv[0]).read_text())["results"]
    Path(argv[1]).write_text(
        svg(curves(results), "Commands per second against concurrency (database backends)")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
