"""An in-memory DCB store: a fake that passes the full DCB contract.

Without a codec it keeps your event objects as they are (the type name is the class's
``__qualname__``); with a codec every event is encoded on append and decoded on read,
exactly as a database backend would.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Generic, TypeVar

import attrs
import trio

from engine.codec import Codec
from engine.dcb.base import (
    DEFAULT_FOLLOW_BATCH,
    AppendCondition,
    AppendConditionError,
    DcbEvent,
    DuplicateEventIdError,
    Query,
    ReadResult,
    SequencedEvent,
)
from engine.dcb.encoding import EncodedDcbEvent, check_batch, decode_event, encode_events
from engine.dcb.follow import follow
from engine.events import utc_now
from engine.stores.base import DEFAULT_MAX_EVENT_BYTES

__all__ = ["MemoryDcbStore"]

E = TypeVar("E")


@attrs.frozen
class _Record:
    position: int
    type: str
    payload: Any  # the event object, or EncodedDcbEvent when a codec is set
    tags: tuple[str, ...]
    tag_set: frozenset[str]
    metadata: Mapping[str, str]
    event_id: uuid.UUID
    recorded_at: dt.datetime


@attrs.define
class MemoryDcbStore(Generic[E]):
    """A :class:`~engine.dcb.base.DcbStore` held in a Python list.

    Args:
        codec: When given, events are encoded on append and decoded on read.
        max_event_bytes: Size limit per encoded event (only checked with a codec).
        now: Wall clock for ``recorded_at``.
    """

    codec: Codec[E] | None = None
    max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES
    now: Callable[[], dt.datetime] = utc_now
    _log: list[_Record] = attrs.field(factory=list, init=False)
    _ids: dict[uuid.UUID, int] = attrs.field(factory=dict, init=False)
    _appended: trio.Event = attrs.field(factory=trio.Event, init=False)

    async def read(
        self, query: Query | None = None, *, after: int | None = None, limit: int | None = None
    ) -> ReadResult[E]:
        await trio.lowlevel.checkpoint()
        if limit is not None and limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        head = len(self._log)
        events: list[SequencedEvent[E]] = []
        for record in self._log[max(after or 0, 0) :]:
            if query is None or query.matches(record.type, record.tag_set):
                events.append(self._decode(record))
                if limit is not None and len(events) == limit:
                    return ReadResult(events, record.position)
        return ReadResult(events, head)

    async def append(
        self, events: Sequence[DcbEvent[E]], condition: AppendCondition | None = None
    ) -> int:
        await trio.lowlevel.checkpoint()
        # Everything below runs without a checkpoint, so it is one atomic step in Trio.
        if self.codec is not None:
            payloads: list[Any] = encode_events(
                self.codec, events, max_event_bytes=self.max_event_bytes
            )
        else:
            check_batch(events)
            payloads = [event.data for event in events]
        known = [self._ids[event.event_id] for event in events if event.event_id in self._ids]
        if known:
            if len(known) != len(events):
                raise DuplicateEventIdError(
                    [event.event_id for event in events if event.event_id in self._ids]
                )
            return max(known)
        if condition is not None:
            conflict = self._first_match(condition.fail_if_events_match, condition.after or 0)
            if conflict is not None:
                raise AppendConditionError(condition, conflict)
        recorded_at = self.now()
        for event, payload in zip(events, payloads, strict=True):
            position = len(self._log) + 1
            type_name = (
                payload.type if isinstance(payload, EncodedDcbEvent) else type(payload).__qualname__
            )
            self._log.append(
                _Record(
                    position=position,
                    type=type_name,
                    payload=payload,
                    tags=event.tags,
                    tag_set=frozenset(event.tags),
                    metadata=event.metadata,
                    event_id=event.event_id,
                    recorded_at=recorded_at,
                )
            )
            self._ids[event.event_id] = position
        self._appended.set()
        self._appended = trio.Event()
        return len(self._log)

    async def head(self) -> int:
        await trio.lowlevel.checkpoint()
        return len(self._log)

    async def wait_for_append(self, after: int) -> None:
        if len(self._log) > after:
            await trio.lowlevel.checkpoint()
            return
        await self._appended.wait()

    def subscribe(
        self,
        query: Query | None = None,
        *,
        after: int = 0,
        batch_size: int = DEFAULT_FOLLOW_BATCH,
    ) -> AbstractAsyncContextManager[trio.abc.ReceiveChannel[SequencedEvent[E]]]:
        return follow(self, query, after=after, batch_size=batch_size)

    def _first_match(self, query: Query, after: int) -> int | None:
        for record in self._log[max(after, 0) :]:
            if query.matches(record.type, record.tag_set):
                return record.position
        return None

    def _decode(self, record: _Record) -> SequencedEvent[E]:
        payload = record.payload
        if isinstance(payload, EncodedDcbEvent):
            assert self.codec is not None
            return decode_event(
                self.codec,
                position=record.position,
                type_name=payload.type,
                schema_version=payload.schema_version,
                data=payload.data,
                metadata=payload.metadata,
                tags=record.tags,
                event_id=record.event_id,
                recorded_at=record.recorded_at,
            )
        return SequencedEvent(
            position=record.position,
            type=record.type,
            data=payload,
            tags=record.tags,
            metadata=record.metadata,
            event_id=record.event_id,
            recorded_at=record.recorded_at,
        )
