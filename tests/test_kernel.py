"""The kernel: deciders, combining them, envelopes, expected versions and stream ids."""

from __future__ import annotations

import os
import uuid

import attrs
import pytest

from engine import ConcurrencyError, Decider, DomainError, ExpectedVersion, NewEvent, combine
from engine.errors import InvalidStreamIdError
from engine.events import (
    MAX_STREAM_ID_BYTES,
    check_expected_version,
    new_event_id,
    validate_stream_id,
)


@attrs.frozen
class Add:
    n: int


@attrs.frozen
class Added:
    n: int


@attrs.frozen
class Rename:
    name: str


@attrs.frozen
class Renamed:
    name: str


def _add(total: int, command: Add) -> list[Added]:
    if command.n == 0:
        raise DomainError("adding zero is pointless")
    return [Added(command.n)]


counter = Decider(
    initial_state=lambda: 0,
    decide=_add,
    evolve=lambda total, event: total + event.n,
    command_types=(Add,),
    event_types=(Added,),
)
namer = Decider(
    initial_state=lambda: "",
    decide=lambda name, command: [Renamed(command.name)] if command.name != name else [],
    evolve=lambda name, event: event.name,
    command_types=(Rename,),
    event_types=(Renamed,),
)


def test_fold_starts_from_a_fresh_initial_state() -> None:
    """fold() evolves from initial_state() (or a given state) through the events."""
    assert counter.fold([Added(1), Added(2)]) == 3
    assert counter.fold([Added(1)], 10) == 11
    assert counter.fold([]) == 0


def test_combined_decider_routes_commands_and_events() -> None:
    """A combined decider sends each command to its decider and folds both states."""
    both = combine(counter, namer)
    state = both.initial_state()
    assert state == (0, "")
    events = [*both.decide(state, Add(2)), *both.decide(state, Rename("x"))]
    assert events == [Added(2), Renamed("x")]
    assert both.fold(events) == (2, "x")
    with pytest.raises(DomainError):
        both.decide(state, Add(0))
    with pytest.raises(TypeError, match="no combined decider"):
        both.decide(state, "not a command")


def test_combine_needs_declared_types() -> None:
    """combine() refuses deciders that do not say which types they handle."""
    bare = Decider(initial_state=lambda: 0, decide=lambda s, c: [], evolve=lambda s, e: s)
    with pytest.raises(ValueError, match="declare"):
        combine(counter, bare)
    with pytest.raises(ValueError, match="both deciders handle"):
        combine(counter, counter)


@pytest.mark.parametrize(
    ("expected", "actual", "ok"),
    [
        (ExpectedVersion.ANY, 0, True),
        (ExpectedVersion.ANY, 7, True),
        (ExpectedVersion.NO_STREAM, 0, True),
        (ExpectedVersion.NO_STREAM, 1, False),
        (ExpectedVersion.STREAM_EXISTS, 0, False),
        (ExpectedVersion.STREAM_EXISTS, 3, True),
        (0, 0, True),
        (0, 1, False),
        (3, 3, True),
        (3, 4, False),
    ],
)
def test_expected_version_semantics(expected: int | ExpectedVersion, actual: int, ok: bool) -> None:
    """Each expected version accepts exactly the actual versions it should."""
    if ok:
        check_expected_version("s", expected, actual)
    else:
        with pytest.raises(ConcurrencyError) as info:
            check_expected_version("s", expected, actual)
        assert (info.value.expected, info.value.actual) == (expected, actual)
        assert "s" in str(info.value)


def test_expected_version_rejects_nonsense() -> None:
    """Negative numbers, bools and strings are not versions."""
    with pytest.raises(ValueError, match=">= 0"):
        check_expected_version("s", -1, 0)
    with pytest.raises(TypeError):
        check_expected_version("s", True, 1)
    with pytest.raises(TypeError):
        check_expected_version("s", "3", 3)  # type: ignore[arg-type]


def test_stream_id_limits() -> None:
    """Stream ids up to the byte limit pass unchanged; empty, NUL and longer ones do not."""
    longest = "\u00e9" * (MAX_STREAM_ID_BYTES // 2)
    assert validate_stream_id(longest) is longest
    assert validate_stream_id(" ") == " "
    for bad in ("", "a\x00b", "x" * (MAX_STREAM_ID_BYTES + 1), "\udc80"):
        with pytest.raises(InvalidStreamIdError) as info:
            validate_stream_id(bad)
        assert info.value.code == "invalid_stream_id"
    with pytest.raises(InvalidStreamIdError):
        validate_stream_id(42)  # type: ignore[arg-type]


def test_new_event_metadata_is_checked_and_copied() -> None:
    """Metadata must map str to str and is copied, so later changes do not leak in."""
    source = {"user": "ann"}
    event = NewEvent(Added(1), source)
    source["user"] = "bob"
    assert event.metadata == {"user": "ann"}
    with pytest.raises(TypeError, match="str to str"):
        NewEvent(Added(1), {"n": 1})  # type: ignore[dict-item]
    assert NewEvent(Added(1)).event_id != NewEvent(Added(1)).event_id


def test_new_event_ids_are_random_version_4_uuids() -> None:
    """Event ids come from the OS's random source as RFC 4122 version-4 UUIDs, all
    distinct, also across a fork (the child drops the parent's buffered bytes)."""
    ids = [new_event_id() for _ in range(5_000)]
    assert len(set(ids)) == len(ids)
    assert {(i.version, i.variant) for i in ids} == {(4, uuid.RFC_4122)}
    assert NewEvent(object()).event_id.version == 4
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: send the next id and leave at once
        os.write(write, new_event_id().bytes)
        os._exit(0)
    os.close(write)
    child = uuid.UUID(bytes=os.read(read, 16))
    os.close(read)
    os.waitpid(pid, 0)
    assert child != new_event_id()
    assert child not in ids
