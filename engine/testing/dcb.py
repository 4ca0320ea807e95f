"""Given/When/Then specifications for DCB decision models.

Plain synchronous code, no store and no event loop::

    spec = DecisionSpec(subscribe_student)
    spec.given(
        DcbEvent(CourseDefined("c1", capacity=1), tags=["course:c1"]),
        DcbEvent(StudentSubscribed("s2", "c1"), tags=["student:s2", "course:c1"]),
    ).when(SubscribeStudent("s1", "c1")).then_error("fully booked")

A given event that the decision's query would not select is refused: in a real store
the decision would never read it, so a spec that relies on it would pass for the wrong
reason. Tag it correctly, or leave it out.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Generic, TypeVar

import attrs

from engine.codec import EventRegistry
from engine.dcb.base import DcbEvent, SequencedEvent
from engine.dcb.handler import DecisionModel
from engine.testing.specs import _error_matches, _mismatch

__all__ = ["DecisionSpec"]

S = TypeVar("S")
C = TypeVar("C")
E = TypeVar("E")


@attrs.frozen
class DecisionSpec(Generic[S, C, E]):
    """Specifications for one decision model: ``given(events).when(command).then_...``.

    Args:
        model: The decision model under test.
        registry: Names event types as the store's codec would; without one, a type's
            name is its class's ``__qualname__`` (as in a memory store without a codec).
    """

    model: DecisionModel[S, C, E]
    registry: EventRegistry | None = None

    def given(self, *events: DcbEvent[E]) -> _GivenDecision[S, C, E]:
        """The log's relevant history: tagged events, oldest first (none for a new world)."""
        for event in events:
            if not isinstance(event, DcbEvent):
                raise TypeError(
                    f"given() takes DcbEvent values (data with tags), got {type(event).__qualname__}"
                )
        return _GivenDecision(self, events)

    def _type_name(self, data: Any) -> str:
        if self.registry is None:
            return type(data).__qualname__
        return self.registry.name_of(type(data))

    def _sequenced(self, events: Sequence[DcbEvent[E]]) -> list[SequencedEvent[E]]:
        return [
            SequencedEvent(
                position=index,
                type=self._type_name(event.data),
                data=event.data,
                tags=event.tags,
                metadata=event.metadata,
                event_id=event.event_id,
            )
            for index, event in enumerate(events, start=1)
        ]


@attrs.frozen
class _GivenDecision(Generic[S, C, E]):
    spec: DecisionSpec[S, C, E]
    history: tuple[DcbEvent[E], ...]

    def when(self, command: C) -> _WhenDecision[S, C, E]:
        """The command under test."""
        return _WhenDecision(self.spec, self.history, command)


def _shape(events: Sequence[DcbEvent[Any]]) -> list[tuple[Any, tuple[str, ...], dict[str, str]]]:
    # Event ids are random per decision, so events compare by data, tags and metadata.
    return [(event.data, event.tags, dict(event.metadata)) for event in events]


@attrs.frozen
class _WhenDecision(Generic[S, C, E]):
    spec: DecisionSpec[S, C, E]
    history: tuple[DcbEvent[E], ...]
    command: C

    def _state(self) -> S:
        projection = self.spec.model.projection(self.command)
        query = projection.query
        sequenced = self.spec._sequenced(self.history)
        for event in sequenced:
            if not query.matches(event.type, event.tags):
                raise AssertionError(
                    f"given event {event.position} ({event.type} with tags {list(event.tags)}) "
                    f"would not be selected by the decision's query {query!r}: the decision "
                    "cannot see it in a real store; tag it so the query selects it, or drop it"
                )
        return projection.fold(sequenced)

    def then_expect(self, *expected: DcbEvent[E]) -> list[DcbEvent[E]]:
        """Assert the decided events (data, tags and metadata; none: decides nothing).

        Returns the decided events for further checks.
        """
        state = self._state()
        try:
            actual = list(self.spec.model.decide(state, self.command))
        except Exception as exc:
            raise AssertionError(
                f"expected events {list(expected)!r}, but decide raised {exc!r}"
            ) from exc
        if _shape(actual) != _shape(expected):
            raise _mismatch("events", _shape(expected), _shape(actual))
        return actual

    def then_error(self, expected: str | type[BaseException]) -> BaseException:
        """Assert that ``decide`` raises: an exception type, or a substring of its message
        (case-insensitive). Returns the exception for further checks."""
        state = self._state()
        try:
            actual = list(self.spec.model.decide(state, self.command))
        except Exception as exc:
            if not _error_matches(exc, expected):
                raise AssertionError(
                    f"expected an error matching {expected!r}, but decide raised {exc!r}"
                ) from exc
            return exc
        raise AssertionError(
            f"expected an error matching {expected!r}, but decide returned {actual!r}"
        )

    def then_state(self, expected: S) -> None:
        """Assert the state the command is decided on (folded from the given events)."""
        actual = self._state()
        if actual != expected:
            raise _mismatch("states", expected, actual)
