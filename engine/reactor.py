"""The automation pattern: an event triggers a command, through a :class:`CommandSender`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Generic, Literal, Protocol, TypeAlias, TypeVar

import attrs

from engine.events import Event

__all__ = ["START_POSITIONS", "CommandSender", "Reactor", "ReactorRegistry", "Start", "reaction_id"]

E = TypeVar("E")

#: Where an automation (or a projection) with no checkpoint yet starts reading the log:
#: ``"beginning"`` (position 0) or ``"end"`` (the log's head when its runner first starts).
Start: TypeAlias = Literal["beginning", "end"]
#: The values of :data:`Start`.
START_POSITIONS: tuple[Start, ...] = ("beginning", "end")


class CommandSender(Protocol):
    """Where automations send commands: a router, a remote engine, or a test recorder."""

    async def __call__(
        self,
        stream_id: str,
        command: Any,
        *,
        command_id: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> Any: ...


@attrs.frozen(kw_only=True)
class Reactor(Generic[E]):
    """An automation: when ``trigger(event.data)`` holds, ``execute(event, send)`` runs.

    Args:
        trigger: A pure predicate on the event data.
        execute: ``async def execute(event, send)``; sends commands with
            ``await send(stream_id, command)``. The registry gives each command a
            deterministic id derived from the reactor name and the event id, so a
            redelivered event re-sends the same command ids and the command handler
            turns them into no-ops (effectively-once under at-least-once delivery).
        start: Where the automation starts when it has no checkpoint yet (the first
            time it runs against a store): ``"beginning"`` reacts to the whole log;
            ``"end"`` reacts only to events stored after its first start (the head
            is saved as its checkpoint at once). Use ``"end"`` for an automation added
            to a system with history, or whose store was filled by copying events
            from another one, so that it does not act on the past again (a fee charged
            twice). Afterwards it always resumes from its checkpoint.
    """

    trigger: Callable[[E], bool]
    execute: Callable[[Event[E], CommandSender], Awaitable[None]]
    start: Start = attrs.field(default="beginning", validator=attrs.validators.in_(START_POSITIONS))


def reaction_id(reactor_name: str, event: Event[Any], index: int) -> str:
    """The command id of the ``index``-th command a reactor sends for ``event``."""
    return f"{reactor_name}:{event.event_id}:{index}"


@attrs.define
class _IdentifyingSender:
    send: CommandSender
    reactor_name: str
    event: Event[Any]
    count: int = 0

    async def __call__(
        self,
        stream_id: str,
        command: Any,
        *,
        command_id: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> Any:
        index = self.count
        self.count += 1
        # The command's events point back at the event that caused them.
        merged = {
            "causation_id": str(self.event.event_id),
            "correlation_id": self.event.metadata.get("correlation_id", str(self.event.event_id)),
            **(metadata or {}),
        }
        return await self.send(
            stream_id,
            command,
            command_id=command_id or reaction_id(self.reactor_name, self.event, index),
            metadata=merged,
        )


@attrs.define
class ReactorRegistry(Generic[E]):
    """Named reactors that run on each event whose data triggers them.

    Register ``registry.handle`` as a handler on an
    :class:`~engine.projection.EventProjector` or give it to an automation runner.

    Args:
        send: Where the reactors' commands go.
    """

    send: CommandSender
    _reactors: dict[str, Reactor[E]] = attrs.field(factory=dict, init=False)

    def register(self, name: str, reactor: Reactor[E]) -> None:
        """Add ``reactor`` under ``name`` (the name is part of its command ids: keep it stable).

        Raises:
            ValueError: ``name`` is taken.
        """
        if name in self._reactors:
            raise ValueError(f"a reactor named {name!r} is registered already")
        self._reactors[name] = reactor

    def names(self) -> list[str]:
        """The registered reactor names."""
        return list(self._reactors)

    async def handle(self, event: Event[E]) -> None:
        """Run every reactor whose trigger accepts ``event.data``, in registration order."""
        for name, reactor in self._reactors.items():
            if not reactor.trigger(event.data):
                continue
            try:
                await reactor.execute(event, _IdentifyingSender(self.send, name, event))
            except Exception as exc:
                exc.add_note(
                    f"in reactor {name!r} at event {event.type} {event.stream_id!r} "
                    f"v{event.version} (position {event.position})"
                )
                raise
