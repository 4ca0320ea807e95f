"""What every byte-storing DCB backend does before and after talking to its database.

Backends call :func:`encode_events` before they open a transaction, so that an empty
batch, an unregistered type or an oversized event is refused before anything is written,
and :func:`decode_event` to rebuild a :class:`~engine.dcb.base.SequencedEvent` from a row.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from typing import Any, TypeVar

import attrs

from engine.codec import Codec
from engine.dcb.base import DcbEvent, SequencedEvent
from engine.stores.encoding import decode_metadata, encode_body

__all__ = ["DCB_LOG_NAME", "EncodedDcbEvent", "check_batch", "decode_event", "encode_events"]

E = TypeVar("E")

#: The name size errors give as the "stream" of a DCB event (the log has no streams).
DCB_LOG_NAME = "dcb"


@attrs.frozen
class EncodedDcbEvent:
    """One event of an append, ready to be written."""

    event_id: uuid.UUID
    type: str
    schema_version: int
    data: bytes
    metadata: bytes
    tags: tuple[str, ...]


def check_batch(events: Sequence[DcbEvent[Any]]) -> None:
    """Refuse an empty batch, items that are not :class:`DcbEvent`, and repeated ids.

    Raises:
        ValueError: The batch is empty or names one event id twice.
        TypeError: An item is not a :class:`DcbEvent`.
    """
    if isinstance(events, DcbEvent):
        raise TypeError("append takes a sequence of DcbEvent, not a single DcbEvent")
    if not events:
        raise ValueError("append needs at least one event")
    for event in events:
        if not isinstance(event, DcbEvent):
            raise TypeError(f"append takes DcbEvent items, got {type(event).__qualname__}")
    if len({event.event_id for event in events}) != len(events):
        raise ValueError("an append names the same event id twice")


def encode_events(
    codec: Codec[E], events: Sequence[DcbEvent[E]], *, max_event_bytes: int
) -> list[EncodedDcbEvent]:
    """Validate and encode an append's events.

    Raises:
        ValueError: The batch is empty or repeats an event id.
        EventTooLargeError: An event's data plus metadata is over ``max_event_bytes``.
        CodecError: An event cannot be encoded (for example its class is not registered).
        TypeError: An item is not a :class:`DcbEvent`.
    """
    check_batch(events)
    encoded = []
    for event in events:
        body, metadata = encode_body(
            codec, event.data, event.metadata, max_event_bytes=max_event_bytes, where=DCB_LOG_NAME
        )
        encoded.append(
            EncodedDcbEvent(
                event.event_id, body.type, body.schema_version, body.data, metadata, event.tags
            )
        )
    return encoded


def decode_event(
    codec: Codec[E],
    *,
    position: int,
    type_name: str,
    schema_version: int,
    data: bytes,
    metadata: bytes | str | None,
    tags: Sequence[str],
    event_id: uuid.UUID | str,
    recorded_at: dt.datetime,
) -> SequencedEvent[E]:
    """Build a stored :class:`SequencedEvent` from a row's columns."""
    value: Any = codec.decode(type_name, schema_version, data)
    return SequencedEvent(
        position=position,
        type=codec.type_name(value),
        data=value,
        tags=tuple(tags),
        metadata=decode_metadata(metadata),
        event_id=event_id if isinstance(event_id, uuid.UUID) else uuid.UUID(event_id),
        recorded_at=recorded_at,
    )
