"""Event envelopes and expected-version semantics (the kernel: plain values, no I/O)."""

from __future__ import annotations

import datetime as dt
import enum
import os
import threading
import uuid
from collections.abc import Mapping
from typing import Generic, TypeVar

import attrs

from engine.errors import ConcurrencyError, InvalidStreamIdError

__all__ = [
    "MAX_STREAM_ID_BYTES",
    "Event",
    "ExpectedVersion",
    "NewEvent",
    "check_expected_version",
    "new_event_id",
    "utc_now",
    "validate_stream_id",
]

E = TypeVar("E")
E_co = TypeVar("E_co", covariant=True)

#: The longest stream id any store accepts, in UTF-8 bytes. Longer ids are refused
#: with :class:`InvalidStreamIdError` rather than truncated or hashed.
MAX_STREAM_ID_BYTES = 512


def utc_now() -> dt.datetime:
    """Return the current wall-clock time in UTC (the one place events get a timestamp)."""
    return dt.datetime.now(dt.UTC)


_ID_BUFFER_BYTES = 16 * 256
_VERSION_4 = (0x4000 << 64) | (0x8000 << 48)
_VERSION_MASK = ~((0xF000 << 64) | (0xC000 << 48))


class _RandomIds:
    """Version-4 UUIDs from the OS's random source, 256 per system call.

    ``uuid.uuid4()`` makes one ``getrandom`` call per id, and that call lets go of the
    GIL: with a writer thread busy in the same process, getting it back can take a
    switch interval, once per event. The buffer is dropped in a forked child, so parent
    and child never hand out the same bytes.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._buffer = b""
        self._offset = 0
        os.register_at_fork(after_in_child=self._forget)

    def _forget(self) -> None:
        self._lock = threading.Lock()
        self._buffer, self._offset = b"", 0

    def __call__(self) -> uuid.UUID:
        with self._lock:
            offset = self._offset
            if offset >= len(self._buffer):
                self._buffer, offset = os.urandom(_ID_BUFFER_BYTES), 0
            self._offset = offset + 16
            raw = self._buffer[offset : offset + 16]
        value = object.__new__(uuid.UUID)
        object.__setattr__(value, "int", int.from_bytes(raw, "big") & _VERSION_MASK | _VERSION_4)
        object.__setattr__(value, "is_safe", uuid.SafeUUID.unknown)
        return value


#: A new random (version 4) event id; what ``uuid.uuid4()`` gives, cheaper per id.
new_event_id = _RandomIds()


def _frozen_metadata(value: Mapping[str, str] | None) -> Mapping[str, str]:
    if not value:
        return {}
    for key, item in value.items():
        if not isinstance(key, str) or not isinstance(item, str):
            raise TypeError(f"metadata must map str to str, got {key!r}: {item!r}")
    return dict(value)


@attrs.frozen
class NewEvent(Generic[E_co]):
    """An event to append: the data plus what the store records beside it.

    Args:
        data: The domain event (an attrs class or dataclass instance).
        metadata: Free-form string pairs stored with the event (correlation ids, user ids...).
        event_id: A unique id; stores use it to recognise a retried append.
    """

    data: E_co
    metadata: Mapping[str, str] = attrs.field(factory=dict, converter=_frozen_metadata)
    event_id: uuid.UUID = attrs.field(factory=new_event_id)


@attrs.frozen
class Event(Generic[E_co]):
    """A stored event: the data with its place in its stream and in the global log.

    Attributes:
        stream_id: The stream the event belongs to.
        version: 1-based position within the stream.
        position: Global position in the store, strictly increasing in commit order.
        type: The registered type name the event was stored under.
        data: The domain event.
        metadata: String pairs stored with the event.
        event_id: The event's unique id.
        recorded_at: When the store recorded the event (UTC).
    """

    stream_id: str
    version: int
    position: int
    type: str
    data: E_co
    metadata: Mapping[str, str] = attrs.field(factory=dict)
    event_id: uuid.UUID = attrs.field(factory=new_event_id)
    recorded_at: dt.datetime = attrs.field(factory=utc_now)


class ExpectedVersion(enum.Enum):
    """The markers ``append`` accepts besides an exact version.

    An exact version is a plain ``int``: ``0`` means the same as ``NO_STREAM``.
    """

    #: Append whatever the stream's version is.
    ANY = "any"
    #: The stream must not exist yet.
    NO_STREAM = "no_stream"
    #: The stream must exist (have at least one event).
    STREAM_EXISTS = "stream_exists"

    def __str__(self) -> str:
        return self.value


def check_expected_version(stream_id: str, expected: int | ExpectedVersion, actual: int) -> None:
    """Raise :class:`ConcurrencyError` unless ``actual`` satisfies ``expected``.

    Args:
        stream_id: The stream being appended to (for the error).
        expected: An exact version (``0`` = no stream) or an :class:`ExpectedVersion` marker.
        actual: The stream's current version (``0`` when it has no events).

    Raises:
        ConcurrencyError: ``actual`` does not satisfy ``expected``.
        ValueError: ``expected`` is a negative number or not a version at all.
    """
    if isinstance(expected, ExpectedVersion):
        ok = (
            expected is ExpectedVersion.ANY
            or (expected is ExpectedVersion.NO_STREAM and actual == 0)
            or (expected is ExpectedVersion.STREAM_EXISTS and actual > 0)
        )
    elif isinstance(expected, int) and not isinstance(expected, bool):
        if expected < 0:
            raise ValueError(f"expected_version must be >= 0, got {expected}")
        ok = expected == actual
    else:
        raise TypeError(f"expected_version must be an int or an ExpectedVersion, got {expected!r}")
    if not ok:
        raise ConcurrencyError(stream_id, expected, actual)


def validate_stream_id(stream_id: str) -> str:
    """Check that a store can keep ``stream_id`` verbatim, and return it unchanged.

    Every store accepts any non-empty Unicode string of at most
    :data:`MAX_STREAM_ID_BYTES` UTF-8 bytes without a NUL character, and stores it
    byte for byte: no trimming, no normalisation, no case folding. Ids that look like
    wildcards (``*``, ``>``, ``a.*``) or SQL are plain names, never patterns.

    Raises:
        InvalidStreamIdError: The id is empty, not a string, too long, contains NUL,
            or cannot be encoded as UTF-8 (lone surrogates).
    """
    if not isinstance(stream_id, str):
        raise InvalidStreamIdError(repr(stream_id), "a stream id must be a str")
    if not stream_id:
        raise InvalidStreamIdError(stream_id, "a stream id must not be empty")
    if "\x00" in stream_id:
        raise InvalidStreamIdError(stream_id, "a stream id must not contain NUL")
    try:
        size = len(stream_id.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidStreamIdError(
            stream_id.encode("utf-8", "backslashreplace").decode("ascii"),
            "a stream id must be valid Unicode (no lone surrogates)",
        ) from None
    if size > MAX_STREAM_ID_BYTES:
        raise InvalidStreamIdError(
            stream_id, f"a stream id must be at most {MAX_STREAM_ID_BYTES} UTF-8 bytes, got {size}"
        )
    return stream_id
