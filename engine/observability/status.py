"""What the status page shows: the event model, runner history, recent errors.

* :class:`EventModel`: the loaded plugins' commands, events, projections and automations,
  with the edges their declarations give (a decider's commands emit its events; a
  projection reads its plugin's events) and the edges seen at run time (which events a
  command produced, which events triggered an automation, which commands it sent).
* :class:`RunnerHistory`: every runner's lag and throughput, sampled on Trio's clock
  by :meth:`RunnerHistory.run` (a service the engine starts) and kept for a few minutes.
* :class:`RecentErrors`: a bounded list of the latest failed or rejected commands and
  runner failures, secrets redacted.

The JSON the page polls (``GET /status.json``) is put together by the daemon
(:func:`engine.daemon.presenters.status_document`): observability never imports it.
"""

from __future__ import annotations

import collections
import datetime as dt
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import attrs
import trio

from engine.events import Event, utc_now
from engine.observability.logging import redact_text
from engine.plugin import Plugin
from engine.reactor import CommandSender, Reactor
from engine.runners.base import RunnerStatistics

__all__ = [
    "DEFAULT_HISTORY_SECONDS",
    "DEFAULT_SAMPLE_INTERVAL",
    "ErrorEntry",
    "EventModel",
    "RecentErrors",
    "RunnerHistory",
    "observe_reactor",
]

#: Seconds between two samples of the runners' lag and throughput.
DEFAULT_SAMPLE_INTERVAL = 1.0
#: Seconds of runner history kept (and drawn).
DEFAULT_HISTORY_SECONDS = 300.0


@attrs.frozen(kw_only=True)
class ErrorEntry:
    """One recent error.

    Attributes:
        at: When it was seen (wall clock, UTC).
        source: What failed (``command bank.Deposit``, ``runner bank.balances``).
        kind: ``failed``, ``rejected``, ``runner error`` or ``restart``.
        message: What happened (secrets redacted).
    """

    at: dt.datetime
    source: str
    kind: str
    message: str


@attrs.define(eq=False)
class RecentErrors:
    """The latest ``size`` errors, newest first.

    Args:
        size: How many are kept.
        now: The wall clock for timestamps.
    """

    size: int = 100
    now: Callable[[], dt.datetime] = utc_now
    _entries: collections.deque[ErrorEntry] = attrs.field(init=False)
    total: int = attrs.field(default=0, init=False)

    def __attrs_post_init__(self) -> None:
        self._entries = collections.deque(maxlen=self.size)

    def add(self, source: str, kind: str, message: str) -> None:
        """Keep an error (the oldest one goes when full)."""
        self.total += 1
        self._entries.appendleft(
            ErrorEntry(at=self.now(), source=source, kind=kind, message=redact_text(message))
        )

    def entries(self) -> list[ErrorEntry]:
        """The kept errors, newest first."""
        return list(self._entries)


def _edge(source: str, target: str, kind: str, declared: bool, count: int | None) -> dict[str, Any]:
    return {"from": source, "to": target, "kind": kind, "declared": declared, "count": count}


@attrs.define(eq=False)
class EventModel:
    """The event model of the loaded plugins: declared, then completed by observation.

    Node ids are ``command:<plugin>.<name>``, ``event:<type name>``,
    ``projection:<runner name>`` and ``automation:<runner name>``.
    """

    plugins: list[dict[str, Any]] = attrs.field(factory=list)
    declared: list[tuple[str, str, str]] = attrs.field(factory=list)
    _command_ids: dict[type, str] = attrs.field(factory=dict)
    _emitted: collections.Counter[tuple[str, str]] = attrs.field(
        factory=collections.Counter, init=False
    )
    _triggered: collections.Counter[tuple[str, str]] = attrs.field(
        factory=collections.Counter, init=False
    )
    _sent: collections.Counter[tuple[str, str]] = attrs.field(
        factory=collections.Counter, init=False
    )

    @classmethod
    def from_plugins(cls, plugins: Sequence[Plugin]) -> EventModel:
        """The model the plugins declare."""
        described: list[dict[str, Any]] = []
        declared: list[tuple[str, str, str]] = []
        command_ids: dict[type, str] = {}
        for plugin in plugins:
            deciders = []
            ordered: dict[str, None] = {}  # the deciders' declared order first
            commands = []
            for binding in plugin.commands:
                emits = []
                for event_cls in binding.decider.event_types:
                    try:
                        emits.append(f"event:{plugin.events.name_of(event_cls)}")
                    except Exception:  # a declared type the plugin did not register
                        continue
                ordered.update(dict.fromkeys(emits))
                ids = []
                for name, command_cls in binding.command_names().items():
                    node = f"command:{plugin.name}.{name}"
                    command_ids[command_cls] = node
                    commands.append({"id": node, "name": name})
                    ids.append(node)
                    declared.extend((node, event, "emits") for event in emits)
                deciders.append({"commands": ids, "events": emits})
            ordered.update(dict.fromkeys(f"event:{n}" for n in sorted(plugin.events.names())))
            event_ids = list(ordered)
            projections = [
                {"id": f"projection:{plugin.name}.{p.name}", "name": p.name}
                for p in plugin.projections
            ]
            for projection in projections:
                declared.extend((event, projection["id"], "reads") for event in event_ids)
            automations = [
                {"id": f"automation:{plugin.name}.{name}", "name": name}
                for name in sorted(plugin.reactors)
            ]
            described.append(
                {
                    "name": plugin.name,
                    "description": plugin.description,
                    "commands": commands,
                    "events": [{"id": e, "name": e.removeprefix("event:")} for e in event_ids],
                    "projections": projections,
                    "automations": automations,
                    "deciders": deciders,
                }
            )
        return cls(described, declared, command_ids)

    def command_id(self, command_type: type) -> str:
        """The node id of a command class (its class name when no plugin declares it)."""
        return self._command_ids.get(command_type) or f"command:{command_type.__qualname__}"

    def record_command(self, command_type: type, event_types: Iterable[str]) -> None:
        """A command of ``command_type`` produced events of ``event_types``."""
        node = self.command_id(command_type)
        for name in event_types:
            self._emitted[node, f"event:{name}"] += 1

    def record_trigger(self, event_type: str, automation: str) -> None:
        """An event of ``event_type`` triggered the automation (runner) ``automation``."""
        self._triggered[f"event:{event_type}", f"automation:{automation}"] += 1

    def record_sent(self, automation: str, command_type: type) -> None:
        """The automation ``automation`` sent a command of ``command_type``."""
        self._sent[f"automation:{automation}", self.command_id(command_type)] += 1

    def to_json(self) -> dict[str, Any]:
        """Nodes by plugin and edges (``declared`` and/or observed ``count``)."""
        edges = []
        seen = set()
        for source, target, kind in self.declared:
            seen.add((source, target))
            count = self._emitted.get((source, target)) if kind == "emits" else None
            edges.append(_edge(source, target, kind, True, count))
        for kind, counter in (
            ("emits", self._emitted),
            ("triggers", self._triggered),
            ("sends", self._sent),
        ):
            for (source, target), count in sorted(counter.items()):
                if (source, target) not in seen:
                    edges.append(_edge(source, target, kind, False, count))
        return {"plugins": self.plugins, "edges": edges}


@attrs.define(eq=False)
class _ObservedSender:
    send: CommandSender
    model: EventModel
    automation: str

    async def __call__(
        self,
        stream_id: str,
        command: Any,
        *,
        command_id: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> Any:
        self.model.record_sent(self.automation, type(command))
        return await self.send(stream_id, command, command_id=command_id, metadata=metadata)


def observe_reactor(
    reactor: Reactor[Any], send: CommandSender, model: EventModel, automation: str
) -> tuple[Reactor[Any], CommandSender]:
    """``reactor`` and ``send`` wrapped so that ``model`` learns the automation's edges.

    Returns:
        A reactor that records each event type that triggers it, and a sender that
        records each command type it sends (register both instead of the originals).
    """

    async def execute(event: Event[Any], sender: CommandSender) -> None:
        model.record_trigger(event.type, automation)
        await reactor.execute(event, sender)

    return (
        Reactor(trigger=reactor.trigger, execute=execute),
        _ObservedSender(send, model, automation),
    )


@attrs.define(eq=False)
class _Series:
    samples: collections.deque[tuple[float, int, float]]
    last_time: float
    last_processed: int
    last_failures: int
    last_restarts: int


@attrs.define(eq=False)
class RunnerHistory:
    """Every runner's lag and throughput over the last ``seconds`` seconds.

    Args:
        interval: Seconds between samples.
        seconds: How much history is kept.
        clock: Seconds, monotonic (Trio's clock).
    """

    interval: float = DEFAULT_SAMPLE_INTERVAL
    seconds: float = DEFAULT_HISTORY_SECONDS
    clock: Callable[[], float] = trio.current_time
    _series: dict[str, _Series] = attrs.field(factory=dict, init=False)

    def sample(
        self, runners: Mapping[str, RunnerStatistics], errors: RecentErrors | None = None
    ) -> None:
        """Take one sample of ``runners`` now (and note new runner failures in ``errors``)."""
        now = self.clock()
        length = max(2, round(self.seconds / self.interval) + 1)
        for name, stats in runners.items():
            failures = stats.retries + stats.parked
            series = self._series.get(name)
            if series is None:
                series = self._series[name] = _Series(
                    collections.deque(maxlen=length), now, stats.processed, failures, 0
                )
                throughput = 0.0
            else:
                elapsed = now - series.last_time
                done = stats.processed - series.last_processed
                throughput = done / elapsed if elapsed > 0 else 0.0
            if errors is not None:
                if failures > series.last_failures and stats.last_error:
                    errors.add(f"runner {name}", "runner error", stats.last_error)
                if stats.restarts > series.last_restarts:
                    errors.add(
                        f"runner {name}",
                        "restart",
                        f"restarted ({stats.restarts} time(s)); last handler error: "
                        f"{stats.last_error or 'none'}",
                    )
            series.samples.append((now, stats.lag, throughput))
            series.last_time, series.last_processed = now, stats.processed
            series.last_failures, series.last_restarts = failures, stats.restarts

    async def run(
        self,
        runners: Callable[[], Mapping[str, RunnerStatistics]],
        errors: RecentErrors | None = None,
        *,
        task_status: trio.TaskStatus[RunnerHistory] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Sample ``runners()`` every :attr:`interval` seconds until cancelled."""
        self.sample(runners(), errors)
        task_status.started(self)
        deadline = self.clock()
        while True:
            deadline += self.interval
            await trio.sleep_until(deadline)
            self.sample(runners(), errors)

    def to_json(self) -> dict[str, Any]:
        """``{"interval", "seconds", "runners": {name: {"age", "lag", "throughput"}}}``;
        ``age`` is seconds before now, oldest sample first."""
        now = self.clock()
        series = {}
        for name, each in sorted(self._series.items()):
            samples = list(each.samples)
            series[name] = {
                "age": [round(now - t, 3) for t, _, _ in samples],
                "lag": [lag for _, lag, _ in samples],
                "throughput": [round(rate, 3) for _, _, rate in samples],
            }
        return {"interval": self.interval, "seconds": self.seconds, "runners": series}
