"""Turning events and states into bytes and back: registry, converter, formats, upcasters.

The pieces:

* :class:`EventRegistry` maps type names to classes, explicitly (no decorators, no
  import-time side effects), with a schema version per type and upcasters that lift old
  payloads to the current shape *on read*, so stored events are never rewritten.
* :func:`make_converter` builds a dedicated cattrs converter whose unstructured form is
  plain JSON types (UUIDs, datetimes and decimals as strings), never the global one.
* A :class:`Format` turns those plain values into bytes: :data:`JSON` (stdlib, the
  default), :data:`ORJSON` (fast JSON, same bytes on the wire) and :data:`MSGPACK`
  (binary). Pickle is never used: decoding stored bytes can only ever build the
  registered classes.
* :class:`Codec` puts them together for the stores.
"""

from __future__ import annotations

import base64
import collections.abc
import datetime as dt
import decimal
import json
import typing
import uuid
from collections.abc import Callable
from typing import Any, Generic, Literal, Protocol, TypeVar

import attrs
import cattrs
import msgspec
import orjson

from engine.errors import CodecError, DuplicateEventTypeError, UnknownEventTypeError

__all__ = [
    "JSON",
    "MSGPACK",
    "ORJSON",
    "Codec",
    "EncodedEvent",
    "EventRegistry",
    "Format",
    "Upcaster",
    "explain_structure_error",
    "make_converter",
]

E = TypeVar("E")
T = TypeVar("T")

#: An upcaster turns the unstructured payload of one schema version into the next one.
Upcaster = Callable[[dict[str, Any]], dict[str, Any]]


class Format(Protocol):
    """Bytes <-> plain values (dicts, lists, str, int, float, bool, None)."""

    @property
    def name(self) -> str: ...

    def dumps(self, value: Any) -> bytes: ...

    def loads(self, data: bytes) -> Any: ...


@attrs.frozen
class _JsonFormat:
    name: str = "json"

    def dumps(self, value: Any) -> bytes:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")

    def loads(self, data: bytes) -> Any:
        return json.loads(data)


@attrs.frozen
class _OrjsonFormat:
    name: str = "orjson"

    def dumps(self, value: Any) -> bytes:
        return orjson.dumps(value)

    def loads(self, data: bytes) -> Any:
        return orjson.loads(data)


@attrs.frozen
class _MsgpackFormat:
    name: str = "msgpack"
    _encoder: msgspec.msgpack.Encoder = attrs.field(factory=msgspec.msgpack.Encoder)
    _decoder: msgspec.msgpack.Decoder[Any] = attrs.field(factory=msgspec.msgpack.Decoder)

    def dumps(self, value: Any) -> bytes:
        return self._encoder.encode(value)

    def loads(self, data: bytes) -> Any:
        return self._decoder.decode(data)


#: Standard-library JSON: the default, readable in any SQL console.
JSON: Format = _JsonFormat()
#: orjson: the same JSON, several times faster to encode and decode.
ORJSON: Format = _OrjsonFormat()
#: MessagePack through msgspec: compact binary.
MSGPACK: Format = _MsgpackFormat()


def make_converter(*, forbid_extra_keys: bool = False) -> cattrs.Converter:
    """Build a cattrs converter whose unstructured form is plain JSON types.

    UUIDs, datetimes, dates and decimals become strings, bytes become base64 text,
    enums their values, tuples and sets lists. Structuring is strict about JSON's
    scalar types: an ``int`` field takes integers only (not ``true``, not ``5.7``, not
    ``"5"``), a ``float`` field integers or numbers (not booleans), a ``str`` field
    strings, a ``bool`` field ``true``/``false``; anything else is an error naming the
    field. Each call returns a new converter; the global cattrs converter is never
    touched.

    Args:
        forbid_extra_keys: Refuse unknown keys when structuring (for input from outside,
            such as commands over HTTP; stored events allow them, for forward compatibility).
    """
    converter = cattrs.Converter(
        forbid_extra_keys=forbid_extra_keys,
        # Sets become lists (sorted when their items sort, so equal sets encode alike):
        # JSON has no sets, and orjson refuses them. Tuples become lists too.
        unstruct_collection_overrides={
            collections.abc.Set: _sorted_list,
            collections.abc.MutableSet: _sorted_list,
            set: _sorted_list,
            frozenset: _sorted_list,
            tuple: list,
        },
    )
    # cattrs' default for scalars is ``int(x)``, ``float(x)``, ``str(x)``, ``bool(x)``:
    # 5.7 would become 5, true 1, and "yes" True. A value of the wrong JSON type is
    # refused instead (msgspec, the fast decoding path, refuses the same values).
    converter.register_structure_hook(int, _strict_int)
    converter.register_structure_hook(float, _strict_float)
    converter.register_structure_hook(str, _strict_str)
    converter.register_structure_hook(bool, _strict_bool)
    converter.register_structure_hook_factory(_is_plain_literal, _strict_literal)
    converter.register_unstructure_hook(uuid.UUID, str)
    converter.register_structure_hook(uuid.UUID, lambda value, _: uuid.UUID(str(value)))
    converter.register_unstructure_hook(dt.datetime, dt.datetime.isoformat)
    converter.register_structure_hook(
        dt.datetime, lambda value, _: dt.datetime.fromisoformat(str(value))
    )
    converter.register_unstructure_hook(dt.date, dt.date.isoformat)
    converter.register_structure_hook(dt.date, lambda value, _: dt.date.fromisoformat(str(value)))
    converter.register_unstructure_hook(decimal.Decimal, str)
    converter.register_structure_hook(decimal.Decimal, lambda value, _: decimal.Decimal(str(value)))
    converter.register_unstructure_hook(bytes, lambda value: base64.b64encode(value).decode())
    converter.register_structure_hook(bytes, lambda value, _: base64.b64decode(value))
    return converter


def _sorted_list(values: Any) -> list[Any]:
    items = list(values)
    try:
        return sorted(items)
    except TypeError:
        return items


def _got(value: Any) -> str:
    try:
        shown = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        shown = repr(value)
    if len(shown) > 40:
        shown = shown[:37] + "..."
    return f"got {_JSON_NAMES.get(type(value), type(value).__name__)} {shown}"


_JSON_NAMES: dict[type, str] = {
    bool: "a boolean",
    int: "an integer",
    float: "a number",
    str: "a string",
    list: "a list",
    dict: "an object",
    type(None): "null",
}


def _strict_int(value: Any, _: Any) -> int:
    if type(value) is not int:  # bool is an int subclass: refused too
        raise ValueError(f"expected an integer, {_got(value)}")
    return value


def _strict_float(value: Any, _: Any) -> float:
    if type(value) is float:
        return value
    if type(value) is int:
        return float(value)
    raise ValueError(f"expected a number, {_got(value)}")


def _strict_str(value: Any, _: Any) -> str:
    if type(value) is not str:
        raise ValueError(f"expected a string, {_got(value)}")
    return value


def _strict_bool(value: Any, _: Any) -> bool:
    if type(value) is not bool:
        raise ValueError(f"expected true or false, {_got(value)}")
    return value


def _is_plain_literal(tp: Any) -> bool:
    return typing.get_origin(tp) is Literal and all(
        type(choice) in (str, int, bool, type(None)) for choice in typing.get_args(tp)
    )


def _strict_literal(tp: Any) -> Callable[[Any, Any], Any]:
    # cattrs checks ``value in choices``, where True == 1 == 1.0: compare types too.
    choices = typing.get_args(tp)
    shown = ", ".join(str(choice) for choice in choices)

    def structure(value: Any, _: Any) -> Any:
        for choice in choices:
            if type(value) is type(choice) and value == choice:
                return choice
        raise ValueError(f"must be one of {shown} (got {value!r})")

    return structure


@attrs.frozen
class _Registration:
    cls: type
    name: str
    version: int


@attrs.define
class EventRegistry:
    """Explicit two-way map between event type names and classes, with upcasters.

    Example:
        >>> registry = EventRegistry()
        >>> registry.register(MoneyDeposited)             # name "MoneyDeposited", version 1
        >>> registry.register(AccountOpened, name="bank.AccountOpened", version=2)
        >>> registry.add_upcaster("bank.AccountOpened", 1, lambda d: {**d, "currency": "EUR"})
    """

    _by_name: dict[str, _Registration] = attrs.field(factory=dict, init=False)
    _by_class: dict[type, _Registration] = attrs.field(factory=dict, init=False)
    _upcasters: dict[tuple[str, int], tuple[Upcaster, str | None]] = attrs.field(
        factory=dict, init=False
    )

    def register(self, cls: type[T], *, name: str | None = None, version: int = 1) -> type[T]:
        """Register ``cls`` under ``name`` (its ``__qualname__`` by default).

        Args:
            cls: The event class (attrs class or dataclass).
            name: The stable type name stored with each event. Choose it once: renaming
                later needs an upcaster with ``rename_to``.
            version: The current schema version of the class's payload.

        Returns:
            ``cls`` unchanged.

        Raises:
            DuplicateEventTypeError: ``name`` or ``cls`` is registered already.
            ValueError: ``version`` is below 1 or ``name`` is empty.
        """
        type_name = cls.__qualname__ if name is None else name
        if not type_name:
            raise ValueError("an event type name must not be empty")
        if version < 1:
            raise ValueError(f"schema version must be >= 1, got {version}")
        if type_name in self._by_name:
            raise DuplicateEventTypeError(
                f"the name {type_name!r} is already registered for {self._by_name[type_name].cls!r}"
            )
        if cls in self._by_class:
            raise DuplicateEventTypeError(
                f"{cls!r} is already registered as {self._by_class[cls].name!r}"
            )
        registration = _Registration(cls, type_name, version)
        self._by_name[type_name] = registration
        self._by_class[cls] = registration
        return cls

    def add_upcaster(
        self,
        name: str,
        from_version: int,
        upcaster: Upcaster,
        *,
        rename_to: str | None = None,
    ) -> None:
        """Lift payloads stored as ``name`` at ``from_version`` to ``from_version + 1``.

        Args:
            name: The type name as it was stored.
            from_version: The schema version the upcaster reads.
            upcaster: ``dict -> dict`` on the unstructured payload.
            rename_to: The type's new name, when the type was renamed at this step.

        Raises:
            DuplicateEventTypeError: An upcaster for ``(name, from_version)`` exists.
        """
        key = (name, from_version)
        if key in self._upcasters:
            raise DuplicateEventTypeError(f"an upcaster for {name!r} v{from_version} exists")
        self._upcasters[key] = (upcaster, rename_to)

    def name_of(self, cls: type) -> str:
        """The registered type name of ``cls``."""
        try:
            return self._by_class[cls].name
        except KeyError:
            raise UnknownEventTypeError(cls) from None

    def version_of(self, name: str) -> int:
        """The current schema version of the type registered as ``name``."""
        return self._lookup(name).version

    def class_for(self, name: str) -> type:
        """The class registered as ``name``."""
        return self._lookup(name).cls

    def registration_for(self, cls: type) -> tuple[str, int]:
        """``(name, version)`` of ``cls``: what is stored beside each of its events."""
        try:
            registration = self._by_class[cls]
        except KeyError:
            raise UnknownEventTypeError(cls) from None
        return registration.name, registration.version

    def names(self) -> list[str]:
        """All registered type names, sorted."""
        return sorted(self._by_name)

    def upcast(self, name: str, version: int, payload: Any) -> tuple[str, Any]:
        """Apply upcasters from ``version`` until the registered current version.

        Returns:
            The (possibly renamed) type name and the upcast payload.

        Raises:
            CodecError: A step of the chain has no upcaster, or the stored version is
                newer than the code knows.
        """
        while True:
            step = self._upcasters.get((name, version))
            if step is None:
                break
            upcaster, rename_to = step
            try:
                payload = upcaster(payload)
            except Exception as exc:
                raise CodecError(f"upcaster for {name!r} v{version} failed: {exc!r}") from exc
            name = rename_to or name
            version += 1
        current = self._lookup(name).version
        if version != current:
            direction = "newer" if version > current else "older"
            raise CodecError(
                f"event {name!r} was stored at schema v{version}, {direction} than the "
                f"registered v{current}, and no upcaster covers v{version}"
            )
        return name, payload

    def _lookup(self, name: str) -> _Registration:
        try:
            return self._by_name[name]
        except KeyError:
            raise UnknownEventTypeError(name) from None


@attrs.frozen
class EncodedEvent:
    """An event's data as it is stored: its type name, schema version and payload bytes."""

    type: str
    schema_version: int
    data: bytes


@attrs.define
class Codec(Generic[E]):
    """Encodes events (and snapshot states) for a store, and decodes them with upcasting.

    Decoding has a fast path: with a JSON format and the default converter, an event
    stored at its current schema version is decoded by msgspec straight into its class
    (several times faster than parsing and then structuring with cattrs; replay speed is
    decode speed). The first event of each type is decoded both ways and compared; a
    class for which the two disagree, or which msgspec cannot handle (attrs converters,
    unsupported field types), stays on the cattrs path. A payload msgspec rejects is
    decoded again by cattrs, so errors always read the same.

    Args:
        registry: The event types this codec knows.
        format: The byte format (:data:`JSON` by default).
        converter: A cattrs converter of your own (a fresh :func:`make_converter` by
            default). Custom hooks are honoured on every path: passing a converter turns
            the msgspec fast path off unless ``fast_decode=True``.
        fast_decode: Force the fast path on or off (default: on for JSON formats with the
            default converter).
    """

    registry: EventRegistry
    format: Format = JSON
    converter: cattrs.Converter | None = None
    fast_decode: bool | None = None
    _conv: cattrs.Converter = attrs.field(init=False, repr=False)
    _fast: dict[type, Any] = attrs.field(factory=dict, init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        if self.converter is None:
            self._conv = make_converter()
            if self.fast_decode is None:
                self.fast_decode = True
        else:
            self._conv = self.converter
        if self.format.name not in ("json", "orjson"):
            self.fast_decode = False

    def encode(self, data: E) -> EncodedEvent:
        """Encode one domain event."""
        name, version = self.registry.registration_for(type(data))
        try:
            payload = self.format.dumps(self._conv.unstructure(data))
        except Exception as exc:
            raise CodecError(f"cannot encode event {name!r}: {exc!r}") from exc
        return EncodedEvent(name, version, payload)

    def decode(self, type_name: str, schema_version: int, data: bytes) -> E:
        """Decode one stored event, upcasting it to the current schema first."""
        if self.fast_decode:
            registration = self.registry._by_name.get(type_name)
            if registration is not None and registration.version == schema_version:
                decoder = self._fast.get(registration.cls)
                if decoder is None:
                    decoder = self._probe(registration.cls, type_name, data)
                if decoder is not False:
                    try:
                        return decoder.decode(data)  # type: ignore[no-any-return]  # msgspec decoders return Any
                    except (msgspec.DecodeError, msgspec.ValidationError):
                        pass  # cattrs below gives the error its usual wording
        try:
            raw = self.format.loads(data)
        except Exception as exc:
            raise CodecError(f"cannot parse stored event {type_name!r}: {exc!r}") from exc
        current = self.registry._by_name.get(type_name)
        if current is None or current.version != schema_version:
            type_name, raw = self.registry.upcast(type_name, schema_version, raw)
            current = self.registry._lookup(type_name)
        try:
            return self._conv.structure(raw, current.cls)
        except Exception as exc:
            details = "; ".join(explain_structure_error(exc)) if _is_cattrs(exc) else repr(exc)
            raise CodecError(f"cannot decode stored event {type_name!r}: {details}") from exc

    def _probe(self, cls: type, type_name: str, data: bytes) -> Any:
        """Decide once per class whether msgspec decodes it exactly as cattrs does.

        Returns the msgspec decoder, or False for the cattrs path. A payload that either
        side rejects decides nothing (the next event of the class probes again).
        """
        if attrs.has(cls) and any(field.converter is not None for field in attrs.fields(cls)):
            self._fast[cls] = False  # msgspec does not run attrs converters
            return False
        try:
            candidate: Any = msgspec.json.Decoder(cls)
        except TypeError:
            self._fast[cls] = False  # a field type msgspec cannot decode
            return False
        try:
            fast: Any = candidate.decode(data)
            slow: Any = self._conv.structure(self.format.loads(data), cls)
        except Exception:
            return False
        decoder = candidate if fast == slow and type(fast) is type(slow) else False
        self._fast[cls] = decoder
        return decoder

    def type_name(self, data: E) -> str:
        """The registered type name of a domain event."""
        return self.registry.name_of(type(data))

    def encode_value(self, value: Any) -> bytes:
        """Encode any value the converter can unstructure (snapshot states, checkpoints)."""
        try:
            return self.format.dumps(self._conv.unstructure(value))
        except Exception as exc:
            raise CodecError(f"cannot encode {type(value).__qualname__}: {exc!r}") from exc

    def decode_value(self, data: bytes, cls: type[T]) -> T:
        """Decode bytes made by :meth:`encode_value` into ``cls``."""
        try:
            return self._conv.structure(self.format.loads(data), cls)
        except Exception as exc:
            details = "; ".join(explain_structure_error(exc)) if _is_cattrs(exc) else repr(exc)
            raise CodecError(f"cannot decode {cls.__qualname__}: {details}") from exc


def _format_problem(exc: BaseException, type_: Any) -> str:
    if isinstance(exc, cattrs.ForbiddenExtraKeysError):
        return "unknown key(s) " + ", ".join(sorted(exc.extra_fields))
    if typing.get_origin(type_) is Literal:
        if isinstance(exc, ValueError):
            return str(exc)  # the strict literal hook's own wording
        choices = ", ".join(str(choice) for choice in typing.get_args(type_))
        value = str(exc).split(" not in literal", 1)[0]
        return f"must be one of {choices} (got {value!r})"
    if isinstance(exc, ValueError) and str(exc):
        return str(exc)
    if attrs.has(type_):
        return "expected a table of keys"
    return cattrs.v.format_exception(exc, type_)


def _describe(message: str) -> tuple[str, str]:
    # cattrs says "<problem> @ $.http.port"; we say "http.port: <problem>".
    detail, _, path = message.rpartition(" @ $")
    path = path.lstrip(".")
    if not detail:
        return "", message
    field, sep, rest = detail.partition(": ")
    if sep and field.isidentifier():
        # A validator's "name: problem" completes the path to the key.
        path, detail = (f"{path}.{field}" if path else field), rest
    return path, detail


def explain_structure_error(exc: BaseException, *, path: str = "") -> list[str]:
    """One ``key.path: problem`` line per problem of a cattrs structuring error.

    Validator and hook messages (``ValueError``) are kept as they are; unknown keys,
    literals and wrong types are said plainly.
    """
    if not isinstance(exc, cattrs.BaseValidationError):
        return [f"{path}: {exc}" if path else str(exc)]
    lines = []
    for message in cattrs.transform_error(exc, path="$", format_exception=_format_problem):
        where, detail = _describe(message)
        full = ".".join(part for part in (path, where) if part)
        lines.append(f"{full}: {detail}" if full else detail)
    return lines


def _is_cattrs(exc: Exception) -> bool:
    return isinstance(exc, cattrs.BaseValidationError)
