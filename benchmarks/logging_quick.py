"""What the per-command log line costs: commands/s with and without it.

The engine's command path as the engine builds it (a CommandHandler with the logging
middleware) on the memory store (the worst case: nothing else costs) and on SQLite
(the default backend), 64 concurrent tasks; logging configured as ``eskit run`` does,
writing to a file, in three settings: ``quiet`` (level WARNING: no line per command),
``default`` (level INFO, ``[logging] access_log = false``, the default) and ``access``
(level INFO with the access log on: one line per command). The settings take turns;
the median of each is reported, with its cost against ``quiet``.

``line`` times the log call path alone instead (steadier than whole commands on a shared
machine): the access-log check with the access log off (the default), and one access-log
line in text and in JSON, written to /dev/null.

Not a test: the machine is shared and noisy, so compare the ratio of one run.
Run: .venv/bin/python -m benchmarks.logging_quick [text|json|line] [rounds]
"""

from __future__ import annotations

import logging
import statistics
import sys
import tempfile
import timeit
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from benchmarks.domain import Account, Deposit, Deposited, account
from benchmarks.harness import Stopwatch
from engine import CommandHandler, EventRegistry
from engine.codec import ORJSON, Codec
from engine.observability.commands import command_middleware
from engine.observability.logging import configure_logging
from engine.stores.memory import MemoryStore
from engine.stores.sqlite import open_sqlite_store

TASKS, PER_TASK = 64, 200
#: Setting -> (level, access log).
MODES = {"quiet": ("WARNING", False), "default": ("INFO", False), "access": ("INFO", True)}


def _codec() -> Codec[Any]:
    registry = EventRegistry()
    registry.register(Deposited, name="bench.Deposited")
    return Codec(registry, format=ORJSON)


@asynccontextmanager
async def _memory(folder: Path) -> AsyncIterator[Any]:
    await trio.lowlevel.checkpoint()
    yield MemoryStore(_codec())


@asynccontextmanager
async def _sqlite(folder: Path) -> AsyncIterator[Any]:
    async with open_sqlite_store(folder / "events.db", _codec()) as store:
        yield store


async def _rate(store: Any, run: int) -> float:
    handler: CommandHandler[Account, Deposit, Deposited] = CommandHandler(
        decider=account,
        store=store,
        middleware=[command_middleware(plugin="bench", node_id="bench-node")],
    )

    async def worker(index: int) -> None:
        for _ in range(PER_TASK):
            await handler.handle(f"run-{run}-{index}", Deposit(1))

    watch = Stopwatch()
    with watch:
        async with trio.open_nursery() as nursery:
            for index in range(TASKS):
                nursery.start_soon(worker, index)
    return watch.rate(TASKS * PER_TASK)


def _line_costs() -> None:
    """Microseconds per call of the log path, best of 5."""
    log = logging.getLogger("eskit.commands")
    root = logging.getLogger()

    def line() -> None:
        log.info(
            "command %s on %r -> %d event(s), v%d%s in %.2f ms",
            *("Deposit", "acc-12", 1, 7, "", 0.52),
            extra={
                "stream_id": "acc-12",
                "command_type": "Deposit",
                "command_id": None,
                "node_id": "bench-node",
                "plugin": "bank",
                "outcome": "handled",
                "events": 1,
                "version": 7,
                "duplicate": False,
                "duration_ms": 0.52,
            },
        )

    def best(fn: Callable[[], object], number: int) -> float:
        return min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e6

    with open("/dev/null", "w", encoding="utf-8") as sink:
        for label, json_format, access in (
            ("access log off (the default): the check", False, False),
            ("access log on, text line", False, True),
            ("access log on, JSON line", True, True),
        ):
            handler = configure_logging(
                json_format=json_format,
                level="INFO",
                stream=sink,
                environ={},
                access_log=access,
                lean_records=True,
            )
            try:
                cost = (
                    best(lambda: log.isEnabledFor(logging.INFO), 1_000_000)
                    if not access
                    else best(line, 50_000)
                )
            finally:
                root.removeHandler(handler)
            print(f"{label:<44} {cost:8.3f} us per command", flush=True)


def main(argv: list[str]) -> None:
    """Print commands/s per logging setting and backend, and what the log line costs."""
    if argv and argv[0] == "line":
        _line_costs()
        return
    json_format = (argv[0] if argv else "text") == "json"
    rounds = int(argv[1]) if len(argv) > 1 else 5
    backends: dict[str, Callable[[Path], AbstractAsyncContextManager[Any]]] = {
        "memory": _memory,
        "sqlite": _sqlite,
    }
    root = logging.getLogger()
    with tempfile.TemporaryDirectory() as tmp:
        log_file = (Path(tmp) / "eskit.log").open("w", encoding="utf-8")
        try:
            for name, opener in backends.items():
                rates: dict[str, list[float]] = {mode: [] for mode in MODES}

                async def measure(
                    level: str, run: int, opener: Any = opener, name: str = name
                ) -> float:
                    folder = Path(tmp) / f"{name}-{run}"
                    folder.mkdir()
                    async with opener(folder) as store:
                        return await _rate(store, run)

                run = 0
                for _ in range(rounds):
                    for mode, (level, access) in MODES.items():
                        handler = configure_logging(
                            json_format=json_format,
                            level=level,
                            stream=log_file,
                            environ={},
                            access_log=access,
                            lean_records=True,
                        )
                        try:
                            rates[mode].append(trio.run(measure, level, run))
                        finally:
                            root.removeHandler(handler)
                        run += 1
                medians = {mode: statistics.median(rates[mode]) for mode in MODES}
                quiet = medians["quiet"]
                shown = ", ".join(
                    f"{mode} {rate:,.0f}/s ({(1 - rate / quiet) * 100:+.1f}%)"
                    for mode, rate in medians.items()
                    if mode != "quiet"
                )
                print(
                    f"{name:<7} {'json' if json_format else 'text'}: quiet {quiet:,.0f} "
                    f"commands/s; {shown} (cost vs quiet; median of {rounds}, "
                    f"{TASKS} x {PER_TASK} commands)",
                    flush=True,
                )
        finally:
            log_file.close()


if __name__ == "__main__":
    main(sys.argv[1:])
