"""What every byte-storing backend does before and after talking to its database.

Backends call :func:`encode_batch` before they open a transaction, so that an invalid
stream id, an unregistered type or an oversized event is refused before anything is
written, and :func:`decode_event` to rebuild an :class:`~engine.events.Event` from a row.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import attrs
import orjson

from engine.codec import Codec, EncodedEvent
from engine.errors import CodecError, EventTooLargeError
from engine.events import Event, NewEvent, validate_stream_id

__all__ = [
    "EncodedNewEvent",
    "build_event",
    "decode_event",
    "decode_metadata",
    "decode_row",
    "encode_batch",
    "encode_body",
    "uuid_from_bytes",
]

E = TypeVar("E")


@attrs.frozen
class EncodedNewEvent:
    """One event of an append, ready to be written."""

    event_id: uuid.UUID
    type: str
    schema_version: int
    data: bytes
    metadata: bytes


def encode_body(
    codec: Codec[E], data: E, metadata: Mapping[str, str], *, max_event_bytes: int, where: str
) -> tuple[EncodedEvent, bytes]:
    """Encode one event's data and metadata, refusing it when together they are over
    ``max_event_bytes``.

    Raises:
        EventTooLargeError: Over the limit (``where`` names the stream or log).
        CodecError: The data cannot be encoded.
    """
    body = codec.encode(data)
    encoded_metadata = orjson.dumps(dict(metadata)) if metadata else b"{}"
    size = len(body.data) + len(encoded_metadata)
    if size > max_event_bytes:
        raise EventTooLargeError(where, body.type, size, max_event_bytes)
    return body, encoded_metadata


def encode_batch(
    codec: Codec[E], stream_id: str, events: Sequence[NewEvent[E]], *, max_event_bytes: int
) -> list[EncodedNewEvent]:
    """Validate and encode an append's events.

    Raises:
        InvalidStreamIdError: The stream id is refused.
        EventTooLargeError: An event's data plus metadata is over ``max_event_bytes``.
        CodecError: An event cannot be encoded (for example its class is not registered).
        TypeError: An item is not a :class:`NewEvent`.
    """
    validate_stream_id(stream_id)
    encoded = []
    for event in events:
        if not isinstance(event, NewEvent):
            raise TypeError(f"append takes NewEvent items, got {type(event).__qualname__}")
        body, metadata = encode_body(
            codec, event.data, event.metadata, max_event_bytes=max_event_bytes, where=stream_id
        )
        encoded.append(
            EncodedNewEvent(event.event_id, body.type, body.schema_version, body.data, metadata)
        )
    return encoded


def decode_metadata(raw: bytes | str | None) -> Mapping[str, str]:
    """Metadata as stored by :func:`encode_batch` back into a dict."""
    if not raw or raw in (b"{}", "{}"):
        return {}
    value = orjson.loads(raw)
    if not isinstance(value, dict):
        raise CodecError(f"stored metadata is not an object: {value!r}")
    return value


_new_object = object.__new__
_set = object.__setattr__
_UNKNOWN = uuid.SafeUUID.unknown


def uuid_from_bytes(raw: bytes) -> uuid.UUID:
    """``uuid.UUID(bytes=raw)`` in a third of the time (it skips the constructor's
    argument parsing; the object is the same). Replay builds one per event."""
    if len(raw) != 16:
        return uuid.UUID(bytes=raw)  # raises the usual ValueError
    value = _new_object(uuid.UUID)
    _set(value, "int", int.from_bytes(raw, "big"))
    _set(value, "is_safe", _UNKNOWN)
    return value


def _event_builder() -> Callable[..., Event[Any]]:
    """``Event(*fields)`` without the attrs constructor's per-field ``__setattr__`` lookups
    (a third of the cost): the slots' own descriptors set the eight fields. The result
    is the same frozen object (``tests/test_codec.py`` compares them)."""
    names = [field.name for field in attrs.fields(Event)]
    assert names == [
        "stream_id",
        "version",
        "position",
        "type",
        "data",
        "metadata",
        "event_id",
        "recorded_at",
    ], names
    s0, s1, s2, s3, s4, s5, s6, s7 = (getattr(Event, name).__set__ for name in names)
    new = object.__new__

    def build(
        stream_id: str,
        version: int,
        position: int,
        type_name: str,
        data: Any,
        metadata: Mapping[str, str],
        event_id: uuid.UUID,
        recorded_at: dt.datetime,
    ) -> Event[Any]:
        event = new(Event)
        s0(event, stream_id)
        s1(event, version)
        s2(event, position)
        s3(event, type_name)
        s4(event, data)
        s5(event, metadata)
        s6(event, event_id)
        s7(event, recorded_at)
        return event

    return build


#: Builds a stored :class:`~engine.events.Event` from its eight fields, in order.
build_event = _event_builder()


def decode_row(
    codec: Codec[E],
    stream_id: str,
    version: int,
    position: int,
    type_name: str,
    schema_version: int,
    data: bytes,
    metadata: bytes | str | None,
    event_id: uuid.UUID | str | bytes,
    recorded_at: dt.datetime,
) -> Event[E]:
    """:func:`decode_event` with positional arguments, for the replay loops (keyword
    passing costs a tenth of an event's decoding)."""
    value: Any = codec.decode(type_name, schema_version, data)
    if type(event_id) is bytes:
        event_id = uuid_from_bytes(event_id)
    elif not isinstance(event_id, uuid.UUID):
        event_id = uuid.UUID(str(event_id))
    return build_event(
        stream_id,
        version,
        position,
        codec.type_name(value),
        value,
        decode_metadata(metadata),
        event_id,
        recorded_at,
    )


def decode_event(
    codec: Codec[E],
    *,
    stream_id: str,
    version: int,
    position: int,
    type_name: str,
    schema_version: int,
    data: bytes,
    metadata: bytes | str | None,
    event_id: uuid.UUID | str | bytes,
    recorded_at: dt.datetime,
) -> Event[E]:
    """Build a stored :class:`Event` from a row's columns (``event_id`` as a UUID, its
    string, or its 16 bytes)."""
    return decode_row(
        codec,
        stream_id,
        version,
        position,
        type_name,
        schema_version,
        data,
        metadata,
        event_id,
        recorded_at,
    )
