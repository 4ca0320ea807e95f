"""The codec: explicit registration, formats, the converter and upcasting on read."""

from __future__ import annotations

import copy
import datetime as dt
import decimal
import enum
import json
import pickle
import uuid
from typing import Any, Literal

import attrs
import cattrs
import hypothesis
import pytest

from engine import (
    JSON,
    MSGPACK,
    ORJSON,
    Codec,
    CodecError,
    EventRegistry,
    MemoryStore,
    NewEvent,
    make_converter,
)
from engine.codec import explain_structure_error
from engine.codec_types import type_problems
from engine.errors import DuplicateEventTypeError, UnknownEventTypeError
from engine.events import Event
from engine.stores.encoding import build_event, uuid_from_bytes


class Colour(enum.Enum):
    RED = "red"
    BLUE = "blue"


@attrs.frozen
class Rich:
    when: dt.datetime
    day: dt.date
    price: decimal.Decimal
    id: uuid.UUID
    colour: Colour
    blob: bytes
    tags: tuple[str, ...]
    nested: dict[str, list[int]]
    maybe: int | None = None


@attrs.frozen
class PriceSetV2:
    amount: int
    currency: str


@attrs.frozen
class PriceChanged:
    amount: int
    currency: str
    reason: str


def rich() -> Rich:
    return Rich(
        when=dt.datetime(2026, 11, 27, 12, 30, tzinfo=dt.UTC),
        day=dt.date(2026, 1, 2),
        price=decimal.Decimal("19.99"),
        id=uuid.UUID(int=7),
        colour=Colour.BLUE,
        blob=b"\x00\xff binary",
        tags=("a", "\u00fc"),
        nested={"k": [1, 2]},
    )


@pytest.mark.parametrize("fmt", [JSON, ORJSON, MSGPACK], ids=lambda f: f.name)
def test_round_trip_in_every_format(fmt: object) -> None:
    """Dates, decimals, UUIDs, enums, bytes, tuples and nesting survive each format."""
    registry = EventRegistry()
    registry.register(Rich)
    codec: Codec[Rich] = Codec(registry, format=fmt)  # type: ignore[arg-type]
    encoded = codec.encode(rich())
    assert encoded.type == "Rich"
    assert encoded.schema_version == 1
    assert codec.decode(encoded.type, 1, encoded.data) == rich()


def test_json_and_orjson_write_compatible_bytes() -> None:
    """Events written with stdlib JSON are read by orjson and the other way round."""
    registry = EventRegistry()
    registry.register(Rich)
    slow: Codec[Rich] = Codec(registry, format=JSON)
    fast: Codec[Rich] = Codec(registry, format=ORJSON)
    assert fast.decode("Rich", 1, slow.encode(rich()).data) == rich()
    assert slow.decode("Rich", 1, fast.encode(rich()).data) == rich()


def test_registration_is_explicit_and_unique() -> None:
    """A name or class registers once; unknown names and classes give clear errors."""
    registry = EventRegistry()
    registry.register(Rich, name="shop.Rich")
    with pytest.raises(DuplicateEventTypeError, match=r"shop\.Rich"):
        registry.register(PriceChanged, name="shop.Rich")
    with pytest.raises(DuplicateEventTypeError, match="already registered"):
        registry.register(Rich, name="other")
    with pytest.raises(UnknownEventTypeError, match="nope"):
        registry.class_for("nope")
    with pytest.raises(UnknownEventTypeError, match="not registered"):
        Codec(registry).encode(PriceChanged(1, "EUR", "x"))
    with pytest.raises(ValueError, match="version"):
        registry.register(PriceChanged, version=0)
    assert registry.names() == ["shop.Rich"]


async def test_v1_event_is_read_as_v2_through_an_upcaster() -> None:
    """An event stored under schema v1 is read back as the v2 class; the stored bytes
    are never rewritten."""
    old = EventRegistry()

    @attrs.frozen
    class PriceSet:
        amount: int

    old.register(PriceSet, name="PriceSet", version=1)
    store: MemoryStore[object] = MemoryStore(Codec(old))
    await store.append("p", [NewEvent(PriceSet(100))])

    new = EventRegistry()
    new.register(PriceSetV2, name="PriceSet", version=2)
    new.add_upcaster("PriceSet", 1, lambda payload: {**payload, "currency": "EUR"})
    store.codec = Codec(new)
    [event] = await store.load("p")
    assert event.data == PriceSetV2(100, "EUR")
    assert event.type == "PriceSet"


def test_upcasters_chain_and_rename() -> None:
    """Upcasters run step by step and may rename the type on the way."""
    registry = EventRegistry()
    registry.register(PriceChanged, name="PriceChanged", version=3)
    registry.add_upcaster(
        "PriceSet", 1, lambda p: {**p, "currency": "EUR"}, rename_to="PriceChanged"
    )
    registry.add_upcaster("PriceChanged", 2, lambda p: {**p, "reason": "migrated"})
    codec: Codec[PriceChanged] = Codec(registry)
    assert codec.decode("PriceSet", 1, b'{"amount": 5}') == PriceChanged(5, "EUR", "migrated")
    assert codec.decode("PriceChanged", 2, b'{"amount": 5, "currency": "USD"}') == PriceChanged(
        5, "USD", "migrated"
    )


def test_missing_upcaster_and_future_versions_are_errors() -> None:
    """A stored version with no path to the current one fails loudly, naming both."""
    registry = EventRegistry()
    registry.register(PriceChanged, name="PriceChanged", version=3)
    codec: Codec[PriceChanged] = Codec(registry)
    with pytest.raises(CodecError, match="v1"):
        codec.decode("PriceChanged", 1, b"{}")
    with pytest.raises(CodecError, match="newer"):
        codec.decode("PriceChanged", 9, b"{}")
    registry.add_upcaster("PriceChanged", 1, lambda p: 1 / 0)  # type: ignore[arg-type, return-value]
    with pytest.raises(CodecError, match="upcaster"):
        codec.decode("PriceChanged", 1, b"{}")


def test_bad_payloads_raise_codec_errors() -> None:
    """Corrupt bytes and wrong shapes become CodecError naming the type, never a crash."""
    registry = EventRegistry()
    registry.register(PriceChanged)
    codec: Codec[PriceChanged] = Codec(registry)
    with pytest.raises(CodecError, match="parse"):
        codec.decode("PriceChanged", 1, b"{not json")
    with pytest.raises(CodecError, match="PriceChanged"):
        codec.decode("PriceChanged", 1, b'{"amount": "lots"}')


def test_pickle_payloads_are_never_unpickled() -> None:
    """A pickle in the store is just invalid data: decoding fails without running it."""
    registry = EventRegistry()
    registry.register(PriceChanged)
    payload = pickle.dumps(PriceChanged(1, "EUR", "x"))
    for fmt in (JSON, ORJSON, MSGPACK):
        with pytest.raises(CodecError):
            Codec(registry, format=fmt).decode("PriceChanged", 1, payload)


def test_values_for_snapshots() -> None:
    """encode_value/decode_value carry snapshot states of any structured class."""
    codec: Codec[object] = Codec(EventRegistry(), format=ORJSON)
    assert codec.decode_value(codec.encode_value(rich()), Rich) == rich()
    with pytest.raises(CodecError, match="Rich"):
        codec.decode_value(b'{"when": 1}', Rich)


@attrs.frozen
class Converted:
    amount: int = attrs.field(converter=abs)


@attrs.frozen
class Plain:
    amount: int
    tags: tuple[str, ...] = ()


def test_fast_path_is_used_only_where_it_agrees_with_cattrs() -> None:
    """msgspec decodes plain classes; classes with attrs converters stay on cattrs, and a
    bad first payload does not switch the fast path off."""
    registry = EventRegistry()
    registry.register(Converted)
    registry.register(Plain)
    codec: Codec[object] = Codec(registry)
    with pytest.raises(CodecError):
        codec.decode("Plain", 1, b'{"amount": "x"}')
    assert Plain not in codec._fast
    assert codec.decode("Plain", 1, b'{"amount": 1, "tags": ["a"]}') == Plain(1, ("a",))
    assert codec._fast[Plain] is not False
    assert codec.decode("Converted", 1, b'{"amount": -3}') == Converted(3)
    assert codec._fast[Converted] is False
    with pytest.raises(CodecError, match="Plain"):
        codec.decode("Plain", 1, b'{"amount": "not a number"}')


def test_custom_converter_turns_the_fast_path_off() -> None:
    """A user converter's hooks are honoured: the fast path is off unless asked for."""
    registry = EventRegistry()
    registry.register(Plain)
    converter = make_converter()
    converter.register_structure_hook(Plain, lambda value, _: Plain(value["amount"] * 10))
    codec: Codec[object] = Codec(registry, converter=converter)
    assert codec.decode("Plain", 1, b'{"amount": 1}') == Plain(10)
    assert not codec.fast_decode
    assert not Codec(registry, format=MSGPACK).fast_decode


@hypothesis.given(hypothesis.strategies.binary(min_size=16, max_size=16))
def test_uuid_from_bytes_is_the_uuid_constructor(raw: bytes) -> None:
    """The replay loops' UUID shortcut builds exactly what ``uuid.UUID(bytes=...)`` does."""
    fast, slow = uuid_from_bytes(raw), uuid.UUID(bytes=raw)
    assert fast == slow
    assert hash(fast) == hash(slow)
    assert (str(fast), fast.bytes, fast.version, fast.is_safe) == (
        str(slow),
        slow.bytes,
        slow.version,
        slow.is_safe,
    )
    assert copy.deepcopy(fast) == slow


def test_uuid_from_bytes_refuses_other_lengths() -> None:
    """A stored id of the wrong length is an error, never a silently different UUID."""
    with pytest.raises(ValueError, match="16"):
        uuid_from_bytes(b"\x01" * 15)


def test_build_event_is_the_event_constructor() -> None:
    """The replay loops' event builder makes the same frozen, hashable event as
    ``Event(...)``."""
    fields = ("s", 3, 7, "t", {"x": 1}, {"k": "v"}, uuid.uuid4(), dt.datetime.now(dt.UTC))
    built, constructed = build_event(*fields), Event(*fields)
    assert built == constructed
    assert repr(built) == repr(constructed)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        built.version = 4  # type: ignore[misc]


@attrs.frozen
class Typed:
    count: int
    ratio: float
    label: str
    flag: bool
    counts: list[int] = attrs.field(factory=list)
    level: Literal[1, 2] = 1


@pytest.mark.parametrize(
    ("payload", "problem"),
    [
        ({"count": 5.7}, "count: expected an integer, got a number 5.7"),
        ({"count": 5.0}, "count: expected an integer, got a number 5.0"),
        ({"count": True}, "count: expected an integer, got a boolean true"),
        ({"count": "5"}, 'count: expected an integer, got a string "5"'),
        ({"ratio": False}, "ratio: expected a number, got a boolean false"),
        ({"ratio": "0.5"}, 'ratio: expected a number, got a string "0.5"'),
        ({"label": 3}, "label: expected a string, got an integer 3"),
        ({"flag": 1}, "flag: expected true or false, got an integer 1"),
        ({"flag": "false"}, 'flag: expected true or false, got a string "false"'),
        ({"counts": [1, 2.5]}, "counts[1]: expected an integer, got a number 2.5"),
        ({"level": True}, "level: must be one of 1, 2 (got True)"),
        ({"level": 2.0}, "level: must be one of 1, 2 (got 2.0)"),
        ({"level": 3}, "level: must be one of 1, 2 (got 3)"),
    ],
)
def test_structuring_never_coerces_scalars(payload: dict[str, Any], problem: str) -> None:
    """A value of the wrong JSON type is refused naming the field, never converted."""
    good = {"count": 1, "ratio": 0.5, "label": "x", "flag": True}
    converter = make_converter(forbid_extra_keys=True)
    with pytest.raises(cattrs.BaseValidationError) as info:
        converter.structure({**good, **payload}, Typed)
    assert explain_structure_error(info.value, path="data") == [f"data.{problem}"]


def good_typed() -> dict[str, Any]:
    return {"count": 1, "ratio": 0.5, "label": "x", "flag": True}


def test_structuring_takes_the_right_types() -> None:
    """Integers, numbers (an integer for a float field), strings and booleans go through."""
    converter = make_converter()
    value = converter.structure(
        {"count": 3, "ratio": 2, "label": "x", "flag": False, "counts": [1, 2]}, Typed
    )
    assert value == Typed(3, 2.0, "x", False, [1, 2])
    assert converter.structure({**good_typed(), "level": 2}, Typed).level == 2
    assert type(value.ratio) is float


def test_stored_events_of_the_wrong_type_are_refused_on_every_path() -> None:
    """A stored payload with a float in an int field fails on the fast and the cattrs path."""
    registry = EventRegistry()
    registry.register(Typed)
    for fast in (True, False):
        codec: Codec[Typed] = Codec(registry, fast_decode=fast)
        with pytest.raises(CodecError, match="count"):
            codec.decode("Typed", 1, b'{"count": 5.7, "ratio": 1, "label": "x", "flag": true}')


class Shelf(enum.Enum):
    TOP = "top"
    LOW = "low"


@attrs.frozen
class Library:
    loans: frozenset[str] = frozenset()
    members: set[uuid.UUID] = attrs.field(factory=set)
    shelves: tuple[Shelf, ...] = ()
    opened: dt.datetime | None = None
    fines: dict[str, decimal.Decimal] = attrs.field(factory=dict)
    history: list[tuple[str, int]] = attrs.field(factory=list)


def library() -> Library:
    member = uuid.UUID("12345678-1234-5678-1234-567812345678")
    return Library(
        loans=frozenset({"copy-2", "copy-1"}),
        members={member},
        shelves=(Shelf.TOP, Shelf.LOW),
        opened=dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.UTC),
        fines={"ann": decimal.Decimal("1.50")},
        history=[("copy-1", 3)],
    )


@pytest.mark.parametrize("fmt", [JSON, ORJSON, MSGPACK], ids=lambda f: f.name)
def test_a_state_with_sets_enums_and_dates_round_trips(fmt: Any) -> None:
    """Sets, frozensets, tuples, enums, datetimes, decimals and UUIDs in a state survive a
    snapshot's encode and decode in every format."""
    codec: Codec[object] = Codec(EventRegistry(), format=fmt)
    assert codec.decode_value(codec.encode_value(library()), Library) == library()


def test_sets_unstructure_to_sorted_lists_and_scalars_to_strings() -> None:
    """The plain form of a state is JSON: sets as sorted lists, the rest as strings."""
    plain = make_converter().unstructure(library())
    assert plain == {
        "loans": ["copy-1", "copy-2"],
        "members": ["12345678-1234-5678-1234-567812345678"],
        "shelves": ["top", "low"],
        "opened": "2024-05-01T12:00:00+00:00",
        "fines": {"ann": "1.50"},
        "history": [["copy-1", 3]],
    }
    assert json.loads(json.dumps(plain)) == plain


class Opaque:
    """A class the codec knows nothing about."""


@attrs.frozen
class Nested:
    thing: Opaque


@attrs.frozen
class Troubled:
    fine: int
    by_number: dict[int, str]
    nested: Nested
    maybe: Opaque | None = None


def test_type_problems_name_each_field_without_an_instance() -> None:
    """Unencodable field types are found from the class alone, each named by its path."""
    problems = type_problems(Troubled)
    assert [line.split(":")[0] for line in problems] == ["by_number", "nested.thing", "maybe"]
    assert "use str keys" in problems[0]
    assert "Opaque is not a type the codec can encode" in problems[1]
    assert type_problems(Library) == []
    assert type_problems(Rich) == []
