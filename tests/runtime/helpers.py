"""Shared pieces of the runtime tests: an event type, a codec, a recording handler."""

from __future__ import annotations

from typing import Any

import attrs
import trio

from engine import Codec, Event, EventRegistry, MemoryStore, NewEvent


@attrs.frozen
class Noted:
    n: int


def codec() -> Codec[Any]:
    registry = EventRegistry()
    registry.register(Noted)
    return Codec(registry)


def memory_store() -> MemoryStore[Any]:
    return MemoryStore(codec())


async def append(store: Any, count: int, *, stream_id: str = "s", start: int = 0) -> list[Any]:
    """Append ``count`` events, one append each, numbered from ``start``."""
    stored: list[Any] = []
    for n in range(start, start + count):
        stored += await store.append(stream_id, [NewEvent(Noted(n))])
    return stored


@attrs.define
class Recorder:
    """A per-event handler that records positions and can fail or block on chosen ones."""

    seen: list[int] = attrs.field(factory=list)
    fail: dict[int, int] = attrs.field(factory=dict)  # position -> failures left
    block_at: int | None = None
    blocked: trio.Event = attrs.field(factory=trio.Event)
    times: list[float] = attrs.field(factory=list)

    async def __call__(self, event: Event[Any]) -> None:
        await trio.lowlevel.checkpoint()
        self.times.append(trio.current_time())
        if self.fail.get(event.position, 0) > 0:
            self.fail[event.position] -= 1
            raise ValueError(f"boom at {event.position}")
        if event.position == self.block_at:
            self.blocked.set()
            await trio.sleep_forever()
        self.seen.append(event.position)
