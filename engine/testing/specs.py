"""Given/When/Then specifications for deciders, views, projections and reactors.

Decider specs are plain synchronous code (no event loop)::

    spec = DeciderSpec(bank)
    spec.given(AccountOpened(100)).when(Withdraw(150)).then_error("insufficient")
    spec.given(AccountOpened(100)).when(Deposit(50)).then_expect(MoneyDeposited(50))

Projection and reactor specs drive async handlers, so they are awaited inside a test.
A failing spec raises :class:`AssertionError` with a readable diff of expected vs actual.
"""

from __future__ import annotations

import copy
import difflib
import inspect
import pprint
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Generic, TypeVar

import attrs

from engine.decider import Decider, View
from engine.events import Event
from engine.reactor import Reactor, ReactorRegistry

__all__ = [
    "DeciderSpec",
    "ProjectionSpec",
    "ReactorSpec",
    "SentCommand",
    "ViewSpec",
    "as_events",
]

S = TypeVar("S")
C = TypeVar("C")
E = TypeVar("E")
R = TypeVar("R")

#: The stream id given events are placed in when they are given as bare data.
SPEC_STREAM_ID = "spec-stream"


def _diff(expected: Any, actual: Any) -> str:
    left = pprint.pformat(expected, width=88).splitlines()
    right = pprint.pformat(actual, width=88).splitlines()
    return "\n".join(difflib.unified_diff(left, right, "expected", "actual", lineterm="", n=3))


def _mismatch(what: str, expected: Any, actual: Any) -> AssertionError:
    return AssertionError(
        f"{what} differ:\n{_diff(expected, actual)}\nexpected: {expected!r}\nactual:   {actual!r}"
    )


@attrs.define
class _Numbering:
    """Positions (global) and versions (per stream) handed to wrapped events: one per
    spec, so events given in several steps of one spec are numbered as one history."""

    position: int = 0
    versions: dict[str, int] = attrs.field(factory=dict)

    def wrap(self, items: Sequence[Any], stream_id: str) -> list[Event[Any]]:
        wrapped: list[Event[Any]] = []
        for item in items:
            if isinstance(item, Event):
                event: Event[Any] = item
            else:
                position = self.position + 1
                event = Event(
                    stream_id=stream_id,
                    version=self.versions.get(stream_id, 0) + 1,
                    position=position,
                    type=type(item).__qualname__,
                    data=item,
                    event_id=uuid.UUID(int=position),
                )
            self.position = max(self.position, event.position)
            self.versions[event.stream_id] = max(
                self.versions.get(event.stream_id, 0), event.version
            )
            wrapped.append(event)
        return wrapped


def as_events(
    items: Sequence[Any], *, stream_id: str = SPEC_STREAM_ID, after: int = 0
) -> list[Event[Any]]:
    """Wrap bare event data in stored-event envelopes.

    Positions (and the versions in ``stream_id``) count on from ``after``: ``after + 1``,
    ``after + 2``, ... Items that are :class:`~engine.events.Event` already are kept as
    they are (and the numbering goes on after them). The specs below number every event
    of one spec as one history, across their ``given`` calls.
    """
    numbering = _Numbering(after, {stream_id: after})
    return numbering.wrap(items, stream_id)


def _error_matches(error: BaseException, expected: str | type[BaseException]) -> bool:
    if isinstance(expected, str):
        return expected.lower() in str(error).lower()
    return isinstance(error, expected)


@attrs.frozen
class DeciderSpec(Generic[S, C, E]):
    """Specifications for one decider: ``given(events).when(command).then_...``."""

    decider: Decider[S, C, E]

    def given(self, *events: E) -> _GivenDecider[S, C, E]:
        """The stream's history (event data, oldest first; none for a new stream)."""
        return _GivenDecider(self.decider, events)


@attrs.frozen
class _GivenDecider(Generic[S, C, E]):
    decider: Decider[S, C, E]
    history: tuple[E, ...]

    def when(self, command: C) -> _WhenDecider[S, C, E]:
        """The command under test."""
        return _WhenDecider(self.decider, self.history, command)

    def then_state(self, expected: S) -> None:
        """Assert the state folded from the history."""
        actual = self.decider.fold(self.history)
        if actual != expected:
            raise _mismatch("states", expected, actual)


@attrs.frozen
class _WhenDecider(Generic[S, C, E]):
    decider: Decider[S, C, E]
    history: tuple[E, ...]
    command: C

    def _run(self) -> list[E]:
        return list(self.decider.decide(self.decider.fold(self.history), self.command))

    def then_expect(self, *expected: E) -> None:
        """Assert that the decider decides exactly ``expected`` (none: decides nothing)."""
        try:
            actual = self._run()
        except Exception as exc:
            raise AssertionError(
                f"expected events {list(expected)!r}, but decide raised {exc!r}"
            ) from exc
        if actual != list(expected):
            raise _mismatch("events", list(expected), actual)

    def then_error(self, expected: str | type[BaseException]) -> BaseException:
        """Assert that ``decide`` raises: an exception type, or a substring of its message
        (case-insensitive). Returns the exception for further checks."""
        try:
            actual = self._run()
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
        """Assert the state after folding the decided events into the history's state."""
        state = self.decider.fold(self.history)
        actual = self.decider.fold(self._run(), state)
        if actual != expected:
            raise _mismatch("states", expected, actual)


@attrs.frozen
class ViewSpec(Generic[R, E]):
    """Specifications for a pure view: ``given(events).then(read_model)``."""

    view: View[R, E]

    def given(self, *events: E) -> _GivenView[R, E]:
        """The events the view reads."""
        return _GivenView(self.view, events)


@attrs.frozen
class _GivenView(Generic[R, E]):
    view: View[R, E]
    events: tuple[E, ...]

    def then(self, expected: R) -> None:
        """Assert the read model folded from the events."""
        actual = self.view.fold(self.events)
        if actual != expected:
            raise _mismatch("read models", expected, actual)


@attrs.frozen
class ProjectionSpec(Generic[R]):
    """Specifications for a projection handler with its own read model.

    Args:
        handler: ``async def handler(event)``, as registered on an EventProjector.
        read: Returns the read model to compare (called after the events were fed); a
            plain function or an ``async`` one (such as a plugin's query).

    Each ``given`` feeds the same handler, so one spec can be driven in steps; the events
    of all the steps are numbered as one history (positions 1, 2, 3, ...).
    """

    handler: Callable[[Event[Any]], Any]
    read: Callable[[], R | Awaitable[R]]
    _numbering: _Numbering = attrs.field(factory=_Numbering, init=False, eq=False, repr=False)

    def given(self, *events: Any) -> _GivenProjection[R]:
        """The events (data or :class:`Event`) the handler is fed, in order."""
        return _GivenProjection(self, self._numbering.wrap(events, SPEC_STREAM_ID))


@attrs.frozen
class _GivenProjection(Generic[R]):
    spec: ProjectionSpec[R]
    events: list[Event[Any]]

    async def then(self, expected: R) -> None:
        """Feed the events, then assert the read model."""
        for event in self.events:
            await self.spec.handler(event)
        actual = self.spec.read()
        if inspect.isawaitable(actual):
            actual = await actual
        if actual != expected:
            raise _mismatch("read models", expected, actual)


@attrs.frozen
class SentCommand:
    """A command a reactor sent, as recorded by :class:`ReactorSpec`.

    ``rejected`` is the error the spec answered it with (see
    :meth:`ReactorSpec.rejecting`), or ``None``; like the id and the metadata it does not
    take part in comparisons.
    """

    stream_id: str
    command: Any
    command_id: str | None = attrs.field(default=None, eq=False)
    metadata: Mapping[str, str] = attrs.field(factory=dict, eq=False)
    rejected: BaseException | None = attrs.field(default=None, eq=False)


#: What a scripted command answers: an exception to raise, or a function of the command
#: that returns one (``None``: accept it).
Outcome = BaseException | Callable[[Any], BaseException | None]


@attrs.define
class _Recorder:
    outcomes: Sequence[tuple[type, Outcome]]
    sent: list[SentCommand] = attrs.field(factory=list)

    async def __call__(
        self,
        stream_id: str,
        command: Any,
        *,
        command_id: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        error: BaseException | None = None
        for command_type, outcome in self.outcomes:
            if isinstance(command, command_type):
                error = outcome if isinstance(outcome, BaseException) else outcome(command)
                break
        self.sent.append(SentCommand(stream_id, command, command_id, dict(metadata or {}), error))
        if error is not None:
            raise copy.copy(error)  # a fresh exception each time: tracebacks do not pile up


@attrs.frozen
class ReactorSpec(Generic[E]):
    """Specifications for a reactor: ``given(event).then_sends(...)``.

    Every command the reactor sends is accepted, unless the spec scripts its outcome with
    :meth:`rejecting` (to test a compensation, or that a rejection is handled)::

        await (
            ReactorSpec(reserve)
            .rejecting(ReserveStock, OutOfStock("no book"))
            .given(OrderSubmitted(...))
            .then_sends(("inventory-book", ReserveStock(...)), ("order-1", CancelOrder(...)))
        )

    Args:
        reactor: The reactor under test.
        name: Its registry name (part of the command ids it sends).

    Each ``given`` numbers its events after those of the previous ones.
    """

    reactor: Reactor[E]
    name: str = "reactor-under-test"
    outcomes: tuple[tuple[type, Outcome], ...] = ()
    _numbering: _Numbering = attrs.field(factory=_Numbering, init=False, eq=False, repr=False)

    def rejecting(self, command_type: type, error: Outcome) -> ReactorSpec[E]:
        """A spec in which every sent command of ``command_type`` raises ``error``.

        Args:
            command_type: The command class (subclasses match too).
            error: The exception the send raises (a copy each time), or a function of the
                command returning the exception to raise, or ``None`` to accept it.

        Returns:
            A new spec; the first matching script wins, in the order they were added.
        """
        return attrs.evolve(self, outcomes=(*self.outcomes, (command_type, error)))

    def given(self, *events: Any) -> _GivenReactor[E]:
        """The events (data or :class:`Event`) delivered to the reactor, in order."""
        return _GivenReactor(self, self._numbering.wrap(events, SPEC_STREAM_ID))


@attrs.frozen
class _GivenReactor(Generic[E]):
    spec: ReactorSpec[E]
    events: list[Event[Any]]

    async def _run(self, recorder: _Recorder) -> None:
        registry: ReactorRegistry[E] = ReactorRegistry(recorder)
        registry.register(self.spec.name, self.spec.reactor)
        for event in self.events:
            await registry.handle(event)

    async def then_sends(self, *expected: tuple[str, Any] | SentCommand) -> list[SentCommand]:
        """Assert the commands sent, each as ``(stream_id, command)``, in order, rejected
        ones included; the reactor must not fail.

        Returns the recorded commands (with their ids, metadata and rejections) for
        further checks.
        """
        recorder = _Recorder(self.spec.outcomes)
        try:
            await self._run(recorder)
        except Exception as exc:
            raise AssertionError(
                f"expected the reactor to send {len(expected)} command(s), but it raised "
                f"{exc!r} after sending {recorder.sent!r}"
            ) from exc
        wanted = [
            item if isinstance(item, SentCommand) else SentCommand(item[0], item[1])
            for item in expected
        ]
        if recorder.sent != wanted:
            raise _mismatch("sent commands", wanted, recorder.sent)
        return recorder.sent

    async def then_sends_nothing(self) -> None:
        """Assert that no command is sent."""
        await self.then_sends()

    async def then_error(self, expected: str | type[BaseException]) -> list[SentCommand]:
        """Assert that the reactor fails (so that its runner retries or parks the event):
        an exception type, or a substring of its message (case-insensitive).

        Returns the commands it sent before failing.
        """
        recorder = _Recorder(self.spec.outcomes)
        try:
            await self._run(recorder)
        except Exception as exc:
            if not _error_matches(exc, expected):
                raise AssertionError(
                    f"expected the reactor to fail with {expected!r}, but it raised {exc!r}"
                ) from exc
            return recorder.sent
        raise AssertionError(
            f"expected the reactor to fail with {expected!r}, but it sent {recorder.sent!r}"
        )
