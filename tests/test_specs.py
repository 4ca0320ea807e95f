"""The Given/When/Then DSL reports failures readably and cannot pass by accident."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import pytest
from eskit_bank import AccountOpened, MoneyDeposited
from eskit_bank.plugin import balances

from engine import Decider, DomainError, ProjectionSetup, Reactor, View
from engine.testing import (
    DeciderSpec,
    ProjectionSpec,
    ReactorSpec,
    SentCommand,
    ViewSpec,
    as_events,
)
from engine.testing.sql import SqlProjectionSpec
from tests.conftest import PgTarget


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


# -- scripted command outcomes in ReactorSpec -------------------------------------------


class OutOfStock(DomainError):
    code = "out_of_stock"


@attrs.frozen
class Reserve:
    n: int


@attrs.frozen
class Cancel:
    reason: str


async def _reserve_or_cancel(event: Any, send: Any) -> None:
    try:
        await send("stock", Reserve(event.data.n))
    except OutOfStock as exc:
        await send(event.stream_id, Cancel(str(exc)))


compensating = Reactor(trigger=lambda e: isinstance(e, Ponged), execute=_reserve_or_cancel)


async def test_reactor_spec_scripts_a_rejection_to_test_the_compensation() -> None:
    """A spec can make a command fail, to check the reactor's compensation path."""
    await ReactorSpec(compensating).given(Ponged(1)).then_sends(("stock", Reserve(1)))
    sent = (
        await ReactorSpec(compensating)
        .rejecting(Reserve, OutOfStock("no stock"))
        .given(Ponged(1), Ponged(2))
        .then_sends(
            ("stock", Reserve(1)),
            ("spec-stream", Cancel("no stock")),
            ("stock", Reserve(2)),
            ("spec-stream", Cancel("no stock")),
        )
    )
    assert [type(s.rejected) for s in sent] == [OutOfStock, type(None), OutOfStock, type(None)]
    only_big = ReactorSpec(compensating).rejecting(
        Reserve, lambda command: OutOfStock("too many") if command.n > 1 else None
    )
    await only_big.given(Ponged(1), Ponged(2)).then_sends(
        ("stock", Reserve(1)), ("stock", Reserve(2)), ("spec-stream", Cancel("too many"))
    )


async def test_reactor_spec_reports_a_rejection_the_reactor_does_not_handle() -> None:
    """A rejection the reactor lets through fails then_sends readably, and then_error pins it."""
    rejecting = ReactorSpec(compensating).rejecting(Cancel, DomainError("closed"))
    spec_ = rejecting.rejecting(Reserve, OutOfStock("none"))
    with pytest.raises(AssertionError, match="but it raised DomainError"):
        await spec_.given(Ponged(1)).then_sends(("stock", Reserve(1)))
    sent = await spec_.given(Ponged(1)).then_error("closed")
    assert [s.command for s in sent] == [Reserve(1), Cancel("none")]
    with pytest.raises(AssertionError, match="expected the reactor to fail"):
        await ReactorSpec(compensating).given(Ponged(1)).then_error(DomainError)


# -- ProjectionSpec: async reads, one numbering per spec ----------------------------------


async def test_projection_spec_reads_with_an_async_query() -> None:
    """``read`` may be a coroutine function, such as a plugin's query."""
    seen: list[int] = []

    async def handler(event: Any) -> None:
        seen.append(event.data.n)

    async def read() -> list[int]:
        return list(seen)

    await ProjectionSpec(handler, read).given(Ponged(4)).then([4])
    with pytest.raises(AssertionError, match="read models differ"):
        await ProjectionSpec(handler, read).given(Ponged(5)).then([5])


async def test_events_are_numbered_across_the_steps_of_one_spec() -> None:
    """Positions and versions go on across ``given`` calls of one spec, never restart at 1."""
    seen: list[tuple[int, int]] = []

    async def handler(event: Any) -> None:
        seen.append((event.position, event.version))

    projection = ProjectionSpec(handler, lambda: list(seen))
    await projection.given(Ponged(1), Ponged(2)).then([(1, 1), (2, 2)])
    await projection.given(Ponged(3)).then([(1, 1), (2, 2), (3, 3)])
    assert [(e.position, e.version) for e in as_events([Ponged(1)], after=7)] == [(8, 8)]

    async def execute(event: Any, send: Any) -> None:
        await send("t", Ping(event.position))

    reactor = ReactorSpec(Reactor(trigger=lambda e: True, execute=execute))
    await reactor.given(Ponged(1)).then_sends(("t", Ping(1)))
    await reactor.given(Ponged(1)).then_sends(("t", Ping(2)))


# -- SqlProjectionSpec on real databases -----------------------------------------------


@pytest.fixture(params=["sqlite", "postgres"])
def open_model(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    """Opens the bank's SQL balances on a real SQLite file or PostgreSQL schema."""
    spec_ = SqlProjectionSpec(setup=balances, version=3)
    if request.param == "sqlite":
        return lambda: spec_.open_sqlite(tmp_path / "read-model.db")
    pg: PgTarget = request.getfixturevalue("pg")
    return lambda: spec_.open_postgres(pg.dsn, schema=pg.schema)


async def test_sql_projection_spec_runs_a_read_model_on_a_real_database(open_model: Any) -> None:
    """SqlProjectionSpec feeds a TransactionalProjection in real transactions, then answers
    its queries and raw SQL."""
    async with open_model() as model:
        await model.given(AccountOpened(100), MoneyDeposited(5), stream_id="acc-1")
        fed = await model.given(AccountOpened(7), stream_id="acc-2")
        assert [(e.position, e.version) for e in fed] == [(3, 1)]
        await model.then("balance", {"account": "acc-1", "balance": 105}, account="acc-1")
        await model.then("totals", {"accounts": 2, "total": 112})
        with pytest.raises(AssertionError, match="answers of 'balance' differ"):
            await model.then("balance", {"account": "acc-2", "balance": 8}, account="acc-2")
        rows = await model.fetch("SELECT account, balance FROM bank_balances_v3 ORDER BY account")
        assert rows == [("acc-1", 105), ("acc-2", 7)]


async def test_sql_projection_spec_refuses_a_projection_that_is_not_sql(tmp_path: Path) -> None:
    """A setup whose handler is not a TransactionalProjection is a clear TypeError."""

    def in_memory(context: Any) -> ProjectionSetup:
        async def handle(event: Any) -> None: ...

        return ProjectionSetup(handler=handle)

    with pytest.raises(TypeError, match="runs a TransactionalProjection"):
        async with SqlProjectionSpec(setup=in_memory).open_sqlite(tmp_path / "x.db"):
            pass
