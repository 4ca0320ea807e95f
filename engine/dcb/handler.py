"""Deciding under a Dynamic Consistency Boundary: read, decide, append with the condition.

A :class:`DecisionProjection` is a small fold over the events one query selects
(``query`` + ``initial_state`` + ``evolve``), as in the dcb.events examples. Several
projections combine with :func:`combine_projections` into one state (a tuple) whose
query is the union of theirs; each part still folds only the events its own query
selects. A :class:`DecisionModel` maps a command to its projection and decides.

:class:`DecisionHandler` runs a model against a :class:`~engine.dcb.base.DcbStore`:
read the projection's query, fold, decide, and append the decided events with
``AppendCondition(query, after=head)``; when another writer appended a matching event
in between, read and decide again (bounded, with jittered exponential backoff).
"""

from __future__ import annotations

import functools
import operator
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Generic, Protocol, TypeVar

import attrs
import trio

from engine.dcb.base import (
    AppendCondition,
    AppendConditionError,
    DcbEvent,
    DcbRetriesExhaustedError,
    DcbStore,
    Query,
    SequencedEvent,
)

__all__ = [
    "ComposedProjection",
    "DecisionHandler",
    "DecisionModel",
    "DecisionProjection",
    "DecisionResult",
    "DecisionStatistics",
    "Projects",
    "combine_projections",
]

S = TypeVar("S")
C = TypeVar("C")
E = TypeVar("E")
S_co = TypeVar("S_co", covariant=True)
E_contra = TypeVar("E_contra", contravariant=True)

#: How many times a command is read, decided and appended before a conflict is given up on.
DEFAULT_MAX_ATTEMPTS = 25
#: First retry delay (seconds); doubles per attempt up to ``DEFAULT_BACKOFF_MAX``, full jitter.
DEFAULT_BACKOFF_BASE = 0.001
DEFAULT_BACKOFF_MAX = 0.1


class Projects(Protocol[S_co, E_contra]):
    """What a decision needs from its projection: a query and a fold."""

    @property
    def query(self) -> Query:
        """The events the state is built from (and the append condition's query)."""
        ...

    def fold(self, events: Iterable[SequencedEvent[E_contra]]) -> S_co:
        """The state built from ``events`` (those the query does not select are skipped)."""
        ...


@attrs.frozen(kw_only=True)
class DecisionProjection(Generic[S, E]):
    """A fold over the events one query selects.

    Args:
        query: The events this state depends on.
        initial_state: Zero-argument callable returning the state before any event.
        evolve: ``evolve(state, event_data) -> state``.

    Example:
        >>> course_subscriptions = DecisionProjection(
        ...     query=Query.of(types=["StudentSubscribed"], tags=["course:c1"]),
        ...     initial_state=lambda: 0,
        ...     evolve=lambda count, event: count + 1,
        ... )
    """

    query: Query
    initial_state: Callable[[], S]
    evolve: Callable[[S, E], S]

    def fold(self, events: Iterable[SequencedEvent[E]]) -> S:
        """Evolve the initial state through the events this projection's query selects."""
        state = self.initial_state()
        matches, evolve = self.query.matches, self.evolve
        for event in events:
            if matches(event.type, event.tags):
                state = evolve(state, event.data)
        return state


@attrs.frozen
class ComposedProjection(Generic[E]):
    """Several projections read together; the state is the tuple of their states."""

    parts: tuple[DecisionProjection[Any, E], ...]

    @property
    def query(self) -> Query:
        """The union of the parts' queries."""
        return functools.reduce(operator.or_, (part.query for part in self.parts))

    def fold(self, events: Iterable[SequencedEvent[E]]) -> tuple[Any, ...]:
        """Each part's state, each folded from the events its own query selects."""
        states = [part.initial_state() for part in self.parts]
        for event in events:
            for index, part in enumerate(self.parts):
                if part.query.matches(event.type, event.tags):
                    states[index] = part.evolve(states[index], event.data)
        return tuple(states)


def combine_projections(*parts: DecisionProjection[Any, E]) -> ComposedProjection[E]:
    """Read several projections with one query; the state is the tuple of their states.

    Raises:
        ValueError: No projection is given.
    """
    if not parts:
        raise ValueError("combine_projections needs at least one projection")
    return ComposedProjection(parts)


@attrs.frozen(kw_only=True)
class DecisionModel(Generic[S, C, E]):
    """How one kind of command is decided under DCB.

    Args:
        projection: ``projection(command)`` returns the projection whose state the
            command is decided on (its query is also the append condition's query).
        decide: ``decide(state, command) -> Sequence[DcbEvent]``; raises
            :class:`~engine.errors.DomainError` to reject the command.
    """

    projection: Callable[[C], Projects[S, E]]
    decide: Callable[[S, C], Sequence[DcbEvent[E]]]


@attrs.frozen
class DecisionResult(Generic[S, E]):
    """What handling a command produced.

    Attributes:
        state: The state the command was decided on.
        events: The appended events (empty when the model decided nothing).
        position: The position of the last appended event, or the head the decision
            was read at when nothing was appended.
        attempts: How many read-decide-append rounds it took.
    """

    state: S
    events: list[DcbEvent[E]]
    position: int
    attempts: int = 1


@attrs.frozen
class DecisionStatistics:
    """Counters of a :class:`DecisionHandler` since it was created.

    Attributes:
        handled: Commands that completed (including those that decided nothing).
        conflicts: Appends whose condition failed and were retried.
    """

    handled: int
    conflicts: int


@attrs.define(kw_only=True)
class DecisionHandler(Generic[S, C, E]):
    """Runs commands against a decision model and a DCB store.

    Args:
        model: The domain logic.
        store: Where the events go.
        max_attempts: How many read-decide-append rounds before
            :class:`~engine.dcb.base.DcbRetriesExhaustedError`.
        backoff_base: First retry delay in seconds (doubles per attempt, full jitter).
        backoff_max: Longest retry delay in seconds.
        random: Source of jitter (seed it for reproducible tests).

    Example:
        >>> handler = DecisionHandler(model=subscribe_student, store=MemoryDcbStore())
        >>> result = await handler.handle(SubscribeStudent("s1", "c1"))
    """

    model: DecisionModel[S, C, E]
    store: DcbStore[E]
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    backoff_base: float = DEFAULT_BACKOFF_BASE
    backoff_max: float = DEFAULT_BACKOFF_MAX
    random: random.Random = attrs.field(factory=random.Random)
    _handled: int = attrs.field(default=0, init=False)
    _conflicts: int = attrs.field(default=0, init=False)

    def __attrs_post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")

    def statistics(self) -> DecisionStatistics:
        """A snapshot of the handler's counters."""
        return DecisionStatistics(handled=self._handled, conflicts=self._conflicts)

    async def handle(
        self, command: C, *, metadata: Mapping[str, str] | None = None
    ) -> DecisionResult[S, E]:
        """Read the command's projection, decide, and append under the DCB condition.

        Args:
            command: The command value.
            metadata: Added to every decided event's metadata (the event's own keys win).

        Returns:
            The state decided on, the appended events and their last position.

        Raises:
            DomainError: The model rejected the command (or any error ``decide`` raised).
            DcbRetriesExhaustedError: Conflicts outlasted ``max_attempts``.
        """
        projection = self.model.projection(command)
        query = projection.query
        conflict: AppendConditionError | None = None
        for attempt in range(1, self.max_attempts + 1):
            events, head = await self.store.read(query)
            state = projection.fold(events)
            decided = list(self.model.decide(state, command))
            if not decided:
                self._handled += 1
                return DecisionResult(state, [], head, attempt)
            if metadata:
                decided = [
                    attrs.evolve(event, metadata={**metadata, **event.metadata})
                    for event in decided
                ]
            condition = AppendCondition(query, after=head)
            try:
                position = await self.store.append(decided, condition)
            except AppendConditionError as exc:
                self._conflicts += 1
                conflict = exc
                if attempt < self.max_attempts:
                    ceiling = min(self.backoff_max, self.backoff_base * 2 ** (attempt - 1))
                    await trio.sleep(self.random.uniform(0, ceiling))
                continue
            self._handled += 1
            return DecisionResult(state, decided, position, attempt)
        assert conflict is not None
        raise DcbRetriesExhaustedError(conflict.condition, conflict.position, self.max_attempts)
