"""An in-memory DCB store: a fake that passes the full DCB contract.

Without a codec it keeps your event objects as they are (the type name is the class's
``__qualname__``); with a codec every event is encoded on append and decoded on read,
exactly as a database backend would.
"""

from __future__ import annotations

import bisect
import datetime as dt
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import attrs
import trio

from engine.codec import Codec
from engine.dcb.base import (
    AppendCondition,
    AppendConditionError,
    DcbEvent,
    DuplicateEventIdError,
    Query,
    ReadResult,
    SequencedEvent,
)
from engine.dcb.encoding import EncodedDcbEvent, check_batch, decode_event, encode_events
from engine.dcb.follow import Following
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
class MemoryDcbStore(Following[E]):
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
    _by_tag: dict[str, list[int]] = attrs.field(factory=dict, init=False)
    _by_type: dict[str, list[int]] = attrs.field(factory=dict, init=False)
    _appended: trio.Event = attrs.field(factory=trio.Event, init=False)

    async def read(
        self, query: Query | None = None, *, after: int | None = None, limit: int | None = None
    ) -> ReadResult[E]:
        await trio.lowlevel.checkpoint()
        if limit is not None and limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        head = len(self._log)
        positions = self._matching(query, max(after or 0, 0))
        if limit is not None and len(positions) >= limit:
            positions = positions[:limit]
            head = positions[-1]
        return ReadResult([self._decode(self._log[p - 1]) for p in positions], head)

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
            self._by_type.setdefault(type_name, []).append(position)
            for tag in event.tags:
                self._by_tag.setdefault(tag, []).append(position)
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

    def _first_match(self, query: Query, after: int) -> int | None:
        positions = self._matching(query, after)
        return positions[0] if positions else None

    def _matching(self, query: Query | None, after: int) -> list[int]:
        """Positions above ``after`` of the events matching ``query``, ascending."""
        if query is None or query.matches_all:
            return list(range(after + 1, len(self._log) + 1))
        found: set[int] = set()
        for item in query.items:
            if item.tags:
                # Walk the shortest tag's positions; check the rest on the record.
                shortest = min((self._by_tag.get(tag, []) for tag in item.tags), key=len)
                for position in shortest[bisect.bisect_right(shortest, after) :]:
                    record = self._log[position - 1]
                    if item.matches(record.type, record.tag_set):
                        found.add(position)
            else:
                for type_name in item.types:
                    positions = self._by_type.get(type_name, [])
                    found.update(positions[bisect.bisect_right(positions, after) :])
        return sorted(found)

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
