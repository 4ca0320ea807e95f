"""DCB values, the decision handler, the Given/When/Then DSL and the oracle's validator."""

from __future__ import annotations

import uuid
from typing import Any

import attrs
import pytest
import trio

from engine.dcb.base import (
    AppendCondition,
    AppendConditionError,
    DcbEvent,
    DcbRetriesExhaustedError,
    DuplicateEventIdError,
    Query,
    QueryItem,
    ReadResult,
    SequencedEvent,
)
from engine.dcb.handler import (
    DecisionHandler,
    DecisionModel,
    DecisionProjection,
    combine_projections,
)
from engine.dcb.memory import MemoryDcbStore
from engine.errors import DomainError, EskitError
from engine.testing.dcb import DecisionSpec
from engine.testing.dcb_oracle import AppendRecord, validate


@attrs.frozen
class Added:
    n: int


@attrs.frozen
class Noise:
    n: int


@attrs.frozen
class Add:
    counter: str
    n: int


def counter(name: str) -> DecisionProjection[int, Any]:
    return DecisionProjection(
        query=Query.of(types=["Added"], tags=[f"counter:{name}"]),
        initial_state=lambda: 0,
        evolve=lambda total, event: total + event.n,
    )


def _add(total: int, command: Add) -> list[DcbEvent[Any]]:
    if command.n < 0:
        raise DomainError("negative")
    if command.n == 0:
        return []
    return [DcbEvent(Added(command.n), [f"counter:{command.counter}"], {"total": str(total)})]


adder: DecisionModel[int, Add, Any] = DecisionModel(
    projection=lambda command: counter(command.counter), decide=_add
)


# -- values -------------------------------------------------------------------------------


def test_query_item_matching() -> None:
    """Types are OR, tags are AND, and an item without types matches any type."""
    item = QueryItem(["A", "B"], ["x", "y"])
    assert item.matches("A", ["x", "y", "z"])
    assert item.matches("B", {"y", "x"})
    assert not item.matches("C", ["x", "y"])
    assert not item.matches("A", ["x"])
    assert QueryItem(tags=["x"]).matches("Anything", ["x"])
    assert QueryItem(types=["A"]).matches("A", [])


def test_query_items_are_normalised_and_validated() -> None:
    """Names are sorted and unique; empty items, bare strings and bad names are refused."""
    assert QueryItem(["B", "A", "B"], ["y", "x"]) == QueryItem(["A", "B"], ["x", "y"])
    assert DcbEvent(1, ["b", "a", "a"]).tags == ("a", "b")
    with pytest.raises(ValueError, match=r"Query\.all"):
        QueryItem()
    with pytest.raises(TypeError, match="collection"):
        QueryItem(tags="course:c1")
    with pytest.raises(TypeError, match="collection"):
        DcbEvent(1, "course:c1")
    for bad in ("", "nul\x00", "x" * 513, "\ud800"):
        with pytest.raises(ValueError, match="a tag must"):
            DcbEvent(1, [bad])
    with pytest.raises(TypeError):
        QueryItem(tags=[1])  # type: ignore[list-item]  # the point of the test
    with pytest.raises(TypeError):
        Query([Query.all()])  # type: ignore[list-item]  # the point of the test


def test_query_union_and_all() -> None:
    """``|`` joins items; anything joined with ``Query.all()`` is all."""
    a, b = Query.of(tags=["a"]), Query.of(types=["T"])
    assert (a | b).items == (*a.items, *b.items)
    assert (a | a) == a
    assert (a | Query.all()).matches_all
    assert Query.all().matches("X", [])
    assert not Query([]).items


def test_errors_are_structured() -> None:
    """The DCB errors carry their data, a code and a readable message."""
    condition = AppendCondition(Query.of(tags=["x"]), after=4)
    error = AppendConditionError(condition, 7)
    assert isinstance(error, EskitError)
    assert error.code == "append_condition_failed"
    assert (
        str(error)
        == "an event matching the append condition exists after position 4 (at position 7)"
    )
    exhausted = DcbRetriesExhaustedError(condition, None, attempts=3)
    assert isinstance(exhausted, AppendConditionError)
    assert "after 3 attempts" in str(exhausted)
    ids = [uuid.UUID(int=n) for n in range(5)]
    duplicate = DuplicateEventIdError(ids)
    assert isinstance(duplicate, ValueError)
    assert "and 2 more" in str(duplicate)


def test_read_result_unpacks() -> None:
    """A read result unpacks as ``events, head``."""
    events, head = ReadResult([], 3)
    assert (events, head) == ([], 3)


# -- the decision handler -------------------------------------------------------------


@attrs.define
class InterferingStore(MemoryDcbStore[Any]):
    """A memory store that appends a conflicting event after the first ``interfere`` reads."""

    interfere: int = 1

    async def read(
        self, query: Query | None = None, *, after: int | None = None, limit: int | None = None
    ) -> ReadResult[Any]:
        result = await super().read(query, after=after, limit=limit)
        if self.interfere > 0:
            self.interfere -= 1
            await self.append([DcbEvent(Added(100), ["counter:c"])])
        return result


async def test_handler_decides_and_appends_with_the_condition() -> None:
    """The handler folds the projection, decides, appends and reports the position."""
    store: MemoryDcbStore[Any] = MemoryDcbStore()
    handler = DecisionHandler(model=adder, store=store)
    await store.append([DcbEvent(Noise(1), ["counter:c"])])
    first = await handler.handle(Add("c", 2))
    second = await handler.handle(Add("c", 3), metadata={"user": "ann", "total": "ignored"})
    events, _ = await store.read(Query.of(types=["Added"]))
    assert (first.state, first.position, first.attempts) == (0, 2, 1)
    assert (second.state, second.position) == (2, 3)
    assert [dict(e.metadata) for e in events] == [{"total": "0"}, {"total": "2", "user": "ann"}]
    assert handler.statistics().handled == 2


async def test_handler_retries_after_a_conflict(autojump_clock: trio.testing.MockClock) -> None:
    """A matching event appended between read and append makes the handler decide again."""
    store = InterferingStore(interfere=2)
    handler = DecisionHandler(model=adder, store=store)
    result = await handler.handle(Add("c", 1))
    assert result.attempts == 3
    assert result.state == 200
    assert handler.statistics().conflicts == 2


async def test_handler_gives_up_after_max_attempts(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Conflicts on every attempt end in DcbRetriesExhaustedError after max_attempts."""
    store = InterferingStore(interfere=1000)
    handler = DecisionHandler(model=adder, store=store, max_attempts=4)
    with pytest.raises(DcbRetriesExhaustedError) as info:
        await handler.handle(Add("c", 1))
    assert info.value.attempts == 4
    assert info.value.condition.fail_if_events_match == counter("c").query
    assert await store.head() == 4


async def test_handler_appends_nothing_for_an_empty_decision() -> None:
    """A decision with no events appends nothing and reports the head it read at."""
    store: MemoryDcbStore[Any] = MemoryDcbStore()
    await store.append([DcbEvent(Noise(1))])
    result = await DecisionHandler(model=adder, store=store).handle(Add("c", 0))
    assert (result.events, result.position) == ([], 1)
    with pytest.raises(DomainError):
        await DecisionHandler(model=adder, store=store).handle(Add("c", -1))
    assert await store.head() == 1


def test_handler_needs_an_attempt() -> None:
    """max_attempts below one is refused."""
    with pytest.raises(ValueError, match="max_attempts"):
        DecisionHandler(model=adder, store=MemoryDcbStore(), max_attempts=0)


def test_combined_projections_fold_their_own_events() -> None:
    """Each part of a combined projection sees only the events its query selects."""
    both = combine_projections(counter("a"), counter("b"))
    events = [
        SequencedEvent(1, "Added", Added(1), ("counter:a",)),
        SequencedEvent(2, "Added", Added(10), ("counter:b",)),
        SequencedEvent(3, "Added", Added(100), ("counter:a", "counter:b")),
        SequencedEvent(4, "Noise", Noise(1000), ("counter:a",)),
    ]
    assert both.fold(events) == (101, 110)
    assert both.query == counter("a").query | counter("b").query
    with pytest.raises(ValueError, match="at least one"):
        combine_projections()


# -- the Given/When/Then DSL ----------------------------------------------------------


spec = DecisionSpec(adder)


def test_spec_reports_a_wrong_expectation_with_a_diff() -> None:
    """A wrong expectation raises AssertionError showing expected and actual events."""
    added = DcbEvent(Added(2), ["counter:c"], {"total": "0"})
    spec.given().when(Add("c", 2)).then_expect(added)
    with pytest.raises(AssertionError, match="events differ"):
        spec.given().when(Add("c", 3)).then_expect(added)
    with pytest.raises(AssertionError, match="events differ"):
        spec.given().when(Add("c", 2)).then_expect(DcbEvent(Added(2), ["counter:x"]))
    with pytest.raises(AssertionError, match="decide raised DomainError"):
        spec.given().when(Add("c", -1)).then_expect(added)


def test_spec_then_error_and_then_state() -> None:
    """then_error matches a type or text; then_state checks the folded state."""
    spec.given().when(Add("c", -1)).then_error(DomainError)
    spec.given().when(Add("c", -1)).then_error("NEGATIVE")
    with pytest.raises(AssertionError, match="but decide returned"):
        spec.given().when(Add("c", 1)).then_error("negative")
    with pytest.raises(AssertionError, match="but decide raised"):
        spec.given().when(Add("c", -1)).then_error("positive")
    history = [DcbEvent(Added(2), ["counter:c"]), DcbEvent(Added(5), ["counter:c", "x"])]
    spec.given(*history).when(Add("c", 1)).then_state(7)
    with pytest.raises(AssertionError, match="states differ"):
        spec.given(*history).when(Add("c", 1)).then_state(8)


def test_spec_refuses_unselected_and_untagged_given_events() -> None:
    """Given events the query would not select, or bare data, are refused."""
    with pytest.raises(AssertionError, match="would not be selected"):
        spec.given(DcbEvent(Added(2), ["counter:other"])).when(Add("c", 1)).then_state(0)
    with pytest.raises(AssertionError, match="would not be selected"):
        spec.given(DcbEvent(Noise(2), ["counter:c"])).when(Add("c", 1)).then_state(0)
    with pytest.raises(TypeError, match="DcbEvent"):
        spec.given(Added(2))  # type: ignore[arg-type]  # the point of the test


# -- the oracle's validator -----------------------------------------------------------


def _log(*rows: tuple[int, str, tuple[str, ...], int]) -> list[SequencedEvent[Any]]:
    return [
        SequencedEvent(position, type_name, None, tags, event_id=uuid.UUID(int=key))
        for position, type_name, tags, key in rows
    ]


def _record(
    keys: list[int], tags: tuple[str, ...], after: int | None, position: int | None
) -> AppendRecord:
    return AppendRecord(
        worker=0,
        attempt=len(keys),
        event_ids=tuple(str(uuid.UUID(int=key)) for key in keys),
        items=(((), tags),),
        after=after,
        position=position,
    )


def test_validator_accepts_a_clean_history() -> None:
    """A log that matches its records has no violations."""
    log = _log((1, "A", ("x",), 1), (2, "A", ("y",), 2), (4, "A", ("x",), 3))
    records = [
        _record([1], ("x",), None, 1),
        _record([2], ("x",), 1, 2),
        _record([3], ("x",), 2, 4),
        _record([9], ("x",), 2, None),
    ]
    report = validate(log, records)
    assert report.violations == []
    assert (report.accepted, report.rejected, report.events) == (3, 1, 3)


def test_validator_finds_every_kind_of_violation() -> None:
    """Broken conditions, torn or lost batches, spurious rejections and junk are reported."""
    log = _log(
        (1, "A", ("x",), 1),
        (2, "A", ("x",), 2),
        (3, "A", (), 3),
        (5, "A", (), 4),
        (5, "A", (), 5),
        (6, "A", (), 6),
    )
    records = [
        _record([1], ("x",), None, 1),
        _record([2], ("x",), None, 2),  # condition broken: event 1 matches
        _record([3, 6], ("z",), None, 6),  # torn: events 3 and 6 are not adjacent
        _record([4], ("z",), None, None),  # rejected yet stored, and nothing matches z
        _record([7], ("z",), None, 9),  # accepted but missing
    ]
    report = validate(log, records)
    text = "\n".join(report.violations)
    assert "matched its condition" in text
    assert "not adjacent" in text
    assert "rejected, but 1 of its events are stored" in text
    assert "nothing matches its query" in text
    assert "some of its events are missing" in text
    assert "position 5 follows 5" in text
    assert "has no accepted append" in text
    assert "violations" in report.summary()
