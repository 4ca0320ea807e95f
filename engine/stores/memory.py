"""In-memory event, snapshot and checkpoint stores: fakes that pass the full contract.

Use them in tests and prototypes. Without a codec they keep your event objects as they
are (the type name is the class's ``__qualname__``); with a codec every event is encoded
on append and decoded on read, exactly as a database backend would, so that a missing
registration or a broken upcaster shows up in tests that use the memory store.
"""

from __future__ import annotations

import copy
import datetime as dt
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Generic, TypeVar

import attrs
import trio

from engine.codec import Codec
from engine.errors import CheckpointConflictError, IdempotencyConflictError
from engine.events import (
    Event,
    ExpectedVersion,
    NewEvent,
    check_expected_version,
    utc_now,
    validate_stream_id,
)
from engine.stores.base import DEFAULT_MAX_EVENT_BYTES, DEFAULT_READ_LIMIT, Snapshot
from engine.stores.encoding import EncodedNewEvent, decode_event, encode_batch

__all__ = ["MemoryCheckpointStore", "MemorySnapshotStore", "MemoryStore"]

E = TypeVar("E")
S = TypeVar("S")


@attrs.frozen
class _Record:
    stream_id: str
    version: int
    position: int
    type: str
    payload: Any  # the event object, or EncodedNewEvent when a codec is set
    metadata: Mapping[str, str]
    event_id: uuid.UUID
    recorded_at: dt.datetime


@attrs.frozen
class _KeyRecord:
    stream_id: str
    first_position: int
    count: int


@attrs.define
class MemoryStore(Generic[E]):
    """An :class:`~engine.stores.base.EventStore` held in a Python list.

    Args:
        codec: When given, events are encoded on append and decoded on read.
        max_event_bytes: Size limit per encoded event (only checked with a codec).
        now: Wall clock for ``recorded_at``.
    """

    codec: Codec[E] | None = None
    max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES
    now: Callable[[], dt.datetime] = utc_now
    _log: list[_Record] = attrs.field(factory=list, init=False)
    _streams: dict[str, list[int]] = attrs.field(factory=dict, init=False)
    _keys: dict[str, _KeyRecord] = attrs.field(factory=dict, init=False)

    async def append(
        self,
        stream_id: str,
        events: Sequence[NewEvent[E]],
        *,
        expected_version: int | ExpectedVersion = ExpectedVersion.ANY,
        idempotency_key: str | None = None,
    ) -> list[Event[E]]:
        await trio.lowlevel.checkpoint()
        # Everything below runs without a checkpoint, so it is one atomic step in Trio.
        if self.codec is not None:
            payloads: list[Any] = encode_batch(
                self.codec, stream_id, events, max_event_bytes=self.max_event_bytes
            )
        else:
            validate_stream_id(stream_id)
            for event in events:
                if not isinstance(event, NewEvent):
                    raise TypeError(f"append takes NewEvent items, got {type(event).__qualname__}")
            payloads = [event.data for event in events]
        if idempotency_key is not None:
            known = self._keys.get(idempotency_key)
            if known is not None:
                if known.stream_id != stream_id:
                    raise IdempotencyConflictError(idempotency_key, stream_id, known.stream_id)
                return self._events_from(known)
        positions = self._streams.get(stream_id, [])
        version = len(positions)
        check_expected_version(stream_id, expected_version, version)
        recorded_at = self.now()
        first_position = len(self._log) + 1
        for offset, (event, payload) in enumerate(zip(events, payloads, strict=True)):
            type_name = (
                payload.type if isinstance(payload, EncodedNewEvent) else type(payload).__qualname__
            )
            self._log.append(
                _Record(
                    stream_id=stream_id,
                    version=version + offset + 1,
                    position=first_position + offset,
                    type=type_name,
                    payload=payload,
                    metadata=event.metadata,
                    event_id=event.event_id,
                    recorded_at=recorded_at,
                )
            )
        if events:
            self._streams.setdefault(stream_id, []).extend(
                range(first_position, first_position + len(events))
            )
        if idempotency_key is not None:
            self._keys[idempotency_key] = _KeyRecord(stream_id, first_position, len(events))
        return [self._decode(record) for record in self._log[first_position - 1 :]]

    async def load(
        self, stream_id: str, *, after_version: int = 0, limit: int | None = None
    ) -> list[Event[E]]:
        await trio.lowlevel.checkpoint()
        validate_stream_id(stream_id)
        positions = self._streams.get(stream_id, [])[max(after_version, 0) :]
        if limit is not None:
            positions = positions[:limit]
        return [self._decode(self._log[position - 1]) for position in positions]

    async def stream_version(self, stream_id: str) -> int:
        await trio.lowlevel.checkpoint()
        validate_stream_id(stream_id)
        return len(self._streams.get(stream_id, ()))

    async def read_all(
        self, *, after_position: int = 0, limit: int = DEFAULT_READ_LIMIT
    ) -> list[Event[E]]:
        await trio.lowlevel.checkpoint()
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        start = max(after_position, 0)
        return [self._decode(record) for record in self._log[start : start + limit]]

    async def head_position(self) -> int:
        await trio.lowlevel.checkpoint()
        return len(self._log)

    async def find_idempotent(self, idempotency_key: str) -> list[Event[E]] | None:
        await trio.lowlevel.checkpoint()
        known = self._keys.get(idempotency_key)
        return None if known is None else self._events_from(known)

    def _events_from(self, known: _KeyRecord) -> list[Event[E]]:
        start = known.first_position - 1
        return [self._decode(record) for record in self._log[start : start + known.count]]

    def _decode(self, record: _Record) -> Event[E]:
        payload = record.payload
        if isinstance(payload, EncodedNewEvent):
            assert self.codec is not None
            return decode_event(
                self.codec,
                stream_id=record.stream_id,
                version=record.version,
                position=record.position,
                type_name=payload.type,
                schema_version=payload.schema_version,
                data=payload.data,
                metadata=payload.metadata,
                event_id=record.event_id,
                recorded_at=record.recorded_at,
            )
        return Event(
            stream_id=record.stream_id,
            version=record.version,
            position=record.position,
            type=record.type,
            data=payload,
            metadata=record.metadata,
            event_id=record.event_id,
            recorded_at=record.recorded_at,
        )


@attrs.define
class MemorySnapshotStore(Generic[S]):
    """A :class:`~engine.stores.base.SnapshotStore` in a dict.

    Args:
        codec: With ``state_type``, states are encoded on save and decoded on load.
        state_type: The state class, needed to decode.
    """

    codec: Codec[Any] | None = None
    state_type: type[S] | None = None
    _snapshots: dict[str, Snapshot[Any]] = attrs.field(factory=dict, init=False)

    async def save_snapshot(self, snapshot: Snapshot[S]) -> None:
        await trio.lowlevel.checkpoint()
        validate_stream_id(snapshot.stream_id)
        current = self._snapshots.get(snapshot.stream_id)
        if current is not None and current.version > snapshot.version:
            return
        # Without a codec keep a deep copy, so that a state mutated later in memory
        # cannot change the snapshot behind the store's back.
        stored: Snapshot[Any] = attrs.evolve(snapshot, state=copy.deepcopy(snapshot.state))
        if self.codec is not None:
            stored = Snapshot(
                snapshot.stream_id,
                snapshot.version,
                self.codec.encode_value(snapshot.state),
                snapshot.schema,
            )
        self._snapshots[snapshot.stream_id] = stored

    async def load_snapshot(self, stream_id: str) -> Snapshot[S] | None:
        await trio.lowlevel.checkpoint()
        stored = self._snapshots.get(stream_id)
        if stored is None:
            return None
        if self.codec is None:
            return attrs.evolve(stored, state=copy.deepcopy(stored.state))
        if self.state_type is None:
            raise TypeError("MemorySnapshotStore with a codec needs state_type to decode")
        return attrs.evolve(stored, state=self.codec.decode_value(stored.state, self.state_type))


@attrs.define
class MemoryCheckpointStore:
    """A :class:`~engine.stores.base.CheckpointStore` in a dict."""

    _positions: dict[str, int] = attrs.field(factory=dict, init=False)

    async def load_checkpoint(self, name: str) -> int | None:
        await trio.lowlevel.checkpoint()
        return self._positions.get(name)

    async def save_checkpoint(self, name: str, position: int, *, expected: int | None) -> None:
        await trio.lowlevel.checkpoint()
        actual = self._positions.get(name)
        if actual != expected:
            raise CheckpointConflictError(name, expected, actual)
        if position < 0:
            raise ValueError(f"a checkpoint position must be >= 0, got {position}")
        self._positions[name] = position
