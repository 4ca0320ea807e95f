"""A test plugin whose commands succeed, get rejected, fail, or poison its read model."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs

from engine import (
    CommandBinding,
    Decider,
    DomainError,
    Event,
    EventRegistry,
    Plugin,
    ProjectionContext,
    ProjectionDefinition,
    ProjectionSetup,
)


@attrs.frozen
class Ping:
    """Stores a Pinged event."""


@attrs.frozen
class Poison:
    """Stores a Poisoned event, which the read model cannot handle (it gets parked)."""


@attrs.frozen
class Refuse:
    """Rejected by the decider (a domain error)."""


@attrs.frozen
class Explode:
    """Fails in the decider with an error that is not the domain's."""


@attrs.frozen
class Pinged:
    """A ping happened."""


@attrs.frozen
class Poisoned:
    """An event the read model fails on."""


class Refused(DomainError):
    code = "refused"


def _decide(state: int, command: Any) -> Sequence[Any]:
    match command:
        case Ping():
            return [Pinged()]
        case Poison():
            return [Poisoned()]
        case Refuse():
            raise Refused("the probe refuses")
        case _:
            raise RuntimeError("the probe exploded (password=hunter2)")


probe_decider: Decider[int, Any, Any] = Decider(
    initial_state=lambda: 0,
    decide=_decide,
    evolve=lambda state, event: state + 1,
    command_types=(Ping, Poison, Refuse, Explode),
    event_types=(Pinged, Poisoned),
)


def _registry() -> EventRegistry:
    registry = EventRegistry()
    registry.register(Pinged, name="probe.Pinged")
    registry.register(Poisoned, name="probe.Poisoned")
    return registry


def _pings(context: ProjectionContext) -> ProjectionSetup:
    async def handle(event: Event[Any]) -> None:
        if isinstance(event.data, Poisoned):
            raise ValueError("cannot digest a poisoned event")

    return ProjectionSetup(handler=handle)


plugin = Plugin(
    name="probe",
    description="Test commands that succeed, get rejected, fail or poison a read model.",
    events=_registry(),
    commands=[CommandBinding(decider=probe_decider)],
    projections=[ProjectionDefinition(name="pings", setup=_pings)],
)
