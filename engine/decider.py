"""Deciders and views: the pure core of the three Event Modeling patterns.

A :class:`Decider` is the *state change* pattern as three pure functions::

    decide(state, command) -> events      # raise DomainError to reject
    evolve(state, event) -> state
    initial_state() -> state

A :class:`View` is the *state view* pattern as a pure fold of events into a read model.
Neither does I/O or needs an event loop: test them with :mod:`engine.testing`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Generic, TypeVar

import attrs

__all__ = ["Decider", "View", "combine"]

S = TypeVar("S")
C = TypeVar("C")
E = TypeVar("E")
S2 = TypeVar("S2")
C2 = TypeVar("C2")
E2 = TypeVar("E2")
R = TypeVar("R")


def _types(value: Iterable[type]) -> tuple[type, ...]:
    return tuple(value)


@attrs.frozen(kw_only=True)
class Decider(Generic[S, C, E]):
    """The decider pattern: how commands become events and events become state.

    Args:
        initial_state: Zero-argument callable returning the state of a stream with no
            events (called afresh for every load, so a mutable state is never shared).
        decide: ``decide(state, command) -> Sequence[event]``; raises
            :class:`~engine.errors.DomainError` to reject the command.
        evolve: ``evolve(state, event) -> state``; must not fail for an event that
            ``decide`` produced. Prefer returning a new (frozen) state to mutating.
        command_types: The command classes this decider handles. Optional; used by
            :func:`combine` and by the engine to route commands.
        event_types: The event classes this decider produces and folds. Optional; used by
            :func:`combine` and by the engine to register event types.

    Example:
        >>> counter = Decider(
        ...     initial_state=lambda: 0,
        ...     decide=lambda state, by: [by] if by > 0 else [],
        ...     evolve=lambda state, by: state + by,
        ... )
        >>> counter.fold([1, 2, 3])
        6
    """

    initial_state: Callable[[], S]
    decide: Callable[[S, C], Sequence[E]]
    evolve: Callable[[S, E], S]
    command_types: tuple[type, ...] = attrs.field(default=(), converter=_types)
    event_types: tuple[type, ...] = attrs.field(default=(), converter=_types)

    def fold(self, events: Iterable[E], state: S | None = None) -> S:
        """Evolve ``state`` (the initial state when ``None``) through ``events``."""
        current = self.initial_state() if state is None else state
        evolve = self.evolve
        for event in events:
            current = evolve(current, event)
        return current

    def handles_command(self, command: object) -> bool:
        """Whether ``command`` is one of :attr:`command_types` (always true when none are declared)."""
        return not self.command_types or isinstance(command, self.command_types)

    def handles_event(self, event: object) -> bool:
        """Whether ``event`` is one of :attr:`event_types` (always true when none are declared)."""
        return not self.event_types or isinstance(event, self.event_types)


@attrs.frozen(kw_only=True)
class View(Generic[R, E]):
    """The state view pattern as a pure fold: events in, read model out.

    Args:
        initial_state: Zero-argument callable returning the empty read model.
        evolve: ``evolve(read_model, event) -> read_model``.
        event_types: The event classes the view reads (optional, documentation and routing).
    """

    initial_state: Callable[[], R]
    evolve: Callable[[R, E], R]
    event_types: tuple[type, ...] = attrs.field(default=(), converter=_types)

    def fold(self, events: Iterable[E], state: R | None = None) -> R:
        """Evolve ``state`` (the initial read model when ``None``) through ``events``."""
        current = self.initial_state() if state is None else state
        for event in events:
            current = self.evolve(current, event)
        return current


def combine(
    left: Decider[S, C, E], right: Decider[S2, C2, E2]
) -> Decider[tuple[S, S2], C | C2, E | E2]:
    """Combine two deciders into one whose state is the pair of their states.

    A command goes to the decider whose ``command_types`` include it; an event is folded
    by every decider whose ``event_types`` include it. Both deciders must declare their
    types so that routing never guesses.

    Raises:
        ValueError: A decider does not declare its types, or both claim a command type.
    """
    for name, decider in (("left", left), ("right", right)):
        if not decider.command_types or not decider.event_types:
            raise ValueError(
                f"combine() needs the {name} decider to declare command_types and event_types"
            )
    shared = set(left.command_types) & set(right.command_types)
    if shared:
        names = ", ".join(sorted(t.__qualname__ for t in shared))
        raise ValueError(f"both deciders handle the command types {names}")

    def initial_state() -> tuple[S, S2]:
        return (left.initial_state(), right.initial_state())

    def decide(state: tuple[S, S2], command: C | C2) -> Sequence[E | E2]:
        if isinstance(command, left.command_types):
            return list(left.decide(state[0], command))  # type: ignore[arg-type]  # narrowed by isinstance above
        if isinstance(command, right.command_types):
            return list(right.decide(state[1], command))  # type: ignore[arg-type]  # narrowed by isinstance above
        raise TypeError(f"no combined decider handles the command {type(command).__qualname__}")

    def evolve(state: tuple[S, S2], event: E | E2) -> tuple[S, S2]:
        first, second = state
        if isinstance(event, left.event_types):
            first = left.evolve(first, event)  # type: ignore[arg-type]  # narrowed by isinstance above
        if isinstance(event, right.event_types):
            second = right.evolve(second, event)  # type: ignore[arg-type]  # narrowed by isinstance above
        return (first, second)

    return Decider(
        initial_state=initial_state,
        decide=decide,
        evolve=evolve,
        command_types=left.command_types + right.command_types,
        event_types=tuple(dict.fromkeys(left.event_types + right.event_types)),
    )
