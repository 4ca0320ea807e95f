"""The Given/When/Then DSL reports failures readably and cannot pass by accident."""

from __future__ import annotations

import attrs
import pytest

from engine import Decider, DomainError, Reactor, View
from engine.testing import DeciderSpec, ProjectionSpec, ReactorSpec, SentCommand, ViewSpec


@attrs.frozen
class Ping:
    n: int


@attrs.frozen
class Ponged:
    n: int


def _decide(state: int, command: Ping) -> list[Ponged]:
    if command.n < 0:
        raise DomainError("negative ping")
    return [Ponged(command.n)]


ponger = Decider(initial_state=lambda: 0, decide=_decide, evolve=lambda s, e: s + e.n)
spec = DeciderSpec(ponger)


def test_then_expect_passes_and_fails_with_a_diff() -> None:
    """A wrong expectation raises AssertionError showing expected and actual events."""
    spec.given(Ponged(1)).when(Ping(2)).then_expect(Ponged(2))
    with pytest.raises(AssertionError) as info:
        spec.given().when(Ping(2)).then_expect(Ponged(3))
    message = str(info.value)
    assert "events differ" in message
    assert "-[Ponged(n=3)]" in message
    assert "+[Ponged(n=2)]" in message


def test_then_expect_reports_an_unexpected_error() -> None:
    """If decide raises where events were expected, the spec says so."""
    with pytest.raises(AssertionError, match="decide raised DomainError"):
        spec.given().when(Ping(-1)).then_expect(Ponged(-1))


def test_then_error_matches_type_or_text() -> None:
    """then_error accepts an exception type or a case-insensitive substring."""
    spec.given().when(Ping(-1)).then_error(DomainError)
    spec.given().when(Ping(-1)).then_error("NEGATIVE")
    with pytest.raises(AssertionError, match="but decide raised"):
        spec.given().when(Ping(-1)).then_error("positive")
    with pytest.raises(AssertionError, match="but decide returned"):
        spec.given().when(Ping(1)).then_error("negative")


def test_then_state() -> None:
    """then_state checks the folded state before or after the command."""
    spec.given(Ponged(1), Ponged(2)).then_state(3)
    spec.given(Ponged(1)).when(Ping(4)).then_state(5)
    with pytest.raises(AssertionError, match="states differ"):
        spec.given(Ponged(1)).then_state(2)


def test_view_spec_fails_on_a_wrong_read_model() -> None:
    """ViewSpec compares the folded read model."""
    counter = View(initial_state=lambda: 0, evolve=lambda s, e: s + 1)
    ViewSpec(counter).given(Ponged(1), Ponged(1)).then(2)
    with pytest.raises(AssertionError, match="read models differ"):
        ViewSpec(counter).given(Ponged(1)).then(2)


async def test_projection_spec_fails_on_a_wrong_read_model() -> None:
    """ProjectionSpec feeds the handler and compares its read model."""
    seen: list[int] = []

    async def handler(event: object) -> None:
        seen.append(event.version)  # type: ignore[attr-defined]

    await ProjectionSpec(handler, lambda: list(seen)).given(Ponged(1), Ponged(2)).then([1, 2])
    with pytest.raises(AssertionError, match="read models differ"):
        await ProjectionSpec(handler, lambda: list(seen)).given(Ponged(1)).then([])


async def test_reactor_spec_records_ids_and_fails_on_mismatch() -> None:
    """ReactorSpec records commands with deterministic ids and reports a mismatch."""

    async def execute(event: object, send: object) -> None:
        await send("target", Ping(event.data.n))  # type: ignore[attr-defined, operator]

    reactor = Reactor(trigger=lambda e: e.n > 0, execute=execute)
    sent = (
        await ReactorSpec(reactor, name="r")
        .given(Ponged(1), Ponged(0))
        .then_sends(("target", Ping(1)))
    )
    assert sent[0].command_id is not None
    assert sent[0].command_id.startswith("r:")
    assert sent[0].metadata["causation_id"] == sent[0].command_id.split(":")[1]
    with pytest.raises(AssertionError, match="sent commands differ"):
        await ReactorSpec(reactor).given(Ponged(2)).then_sends(SentCommand("target", Ping(3)))
    with pytest.raises(AssertionError):
        await ReactorSpec(reactor).given(Ponged(2)).then_sends_nothing()
