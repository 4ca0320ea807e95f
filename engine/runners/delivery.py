"""How each handler shape applies events and keeps its checkpoint (runner internals)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Generic, Protocol, TypeVar

import attrs
import trio

from engine.events import Event
from engine.runners.base import BatchProjection, Handler, TransactionalProjection
from engine.stores.base import CheckpointStore

__all__ = ["CheckpointedSink", "Sink", "Track", "TransactionalSink", "make_sink"]

E = TypeVar("E")


class Sink(Protocol[E]):
    """How one handler shape applies events and keeps its checkpoint."""

    #: Whether a whole batch is tried in one call before falling back to single events.
    batched: bool

    async def load(self, key: str) -> int | None: ...

    async def save(self, key: str, position: int, *, expected: int | None) -> None: ...

    async def apply(self, track: Track[E], events: Sequence[Event[E]]) -> None: ...

    async def skip(self, track: Track[E], event: Event[E]) -> None: ...

    async def finish(self, track: Track[E]) -> None: ...


@attrs.define(eq=False)
class Track(Generic[E]):
    """One handler's progress under one checkpoint name."""

    key: str
    sink: Sink[E]
    # The position of the last event done with; may run ahead of ``stored`` inside a batch.
    checkpoint: int = 0
    # The value in the checkpoint store: the compare-and-set's expected value.
    stored: int | None = None


@attrs.define(eq=False)
class CheckpointedSink(Generic[E]):
    """At-least-once: the handler runs, then the checkpoint is saved once per batch."""

    handler: Handler[E]
    checkpoints: CheckpointStore
    batched: bool

    async def load(self, key: str) -> int | None:
        return await self.checkpoints.load_checkpoint(key)

    async def save(self, key: str, position: int, *, expected: int | None) -> None:
        await self.checkpoints.save_checkpoint(key, position, expected=expected)

    async def apply(self, track: Track[E], events: Sequence[Event[E]]) -> None:
        if isinstance(self.handler, BatchProjection):
            await self.handler.handle(events)
        else:
            assert callable(self.handler)
            for event in events:
                await self.handler(event)

    async def skip(self, track: Track[E], event: Event[E]) -> None:
        await trio.lowlevel.checkpoint()

    async def finish(self, track: Track[E]) -> None:
        if track.checkpoint != track.stored:
            await self.save(track.key, track.checkpoint, expected=track.stored)
            track.stored = track.checkpoint


@attrs.define(eq=False)
class TransactionalSink(Generic[E]):
    """Exactly-once: each batch's writes and checkpoint commit in one transaction."""

    projection: TransactionalProjection[E, Any]
    batched: bool = True

    async def load(self, key: str) -> int | None:
        async with self.projection.store.transaction() as transaction:
            position: int | None = await transaction.load_checkpoint(key)
        return position

    async def save(self, key: str, position: int, *, expected: int | None) -> None:
        async with self.projection.store.transaction() as transaction:
            await transaction.save_checkpoint(key, position, expected=expected)

    async def apply(self, track: Track[E], events: Sequence[Event[E]]) -> None:
        position = events[-1].position
        async with self.projection.store.transaction() as transaction:
            await self.projection.handle(events, transaction)
            await transaction.save_checkpoint(track.key, position, expected=track.stored)
        track.stored = position

    async def skip(self, track: Track[E], event: Event[E]) -> None:
        await self.save(track.key, event.position, expected=track.stored)
        track.stored = event.position

    async def finish(self, track: Track[E]) -> None:
        await trio.lowlevel.checkpoint()


def make_sink(handler: Handler[E], checkpoints: CheckpointStore | None, name: str) -> Sink[E]:
    """The sink for ``handler``'s shape.

    Raises:
        ValueError: A checkpointed handler without a checkpoint store.
        TypeError: ``handler`` is not a handler.
    """
    if isinstance(handler, TransactionalProjection):
        return TransactionalSink(handler)
    if checkpoints is None:
        raise ValueError(
            f"runner {name!r} needs a checkpoint store (only a "
            "TransactionalProjection keeps its checkpoint itself)"
        )
    if isinstance(handler, BatchProjection):
        return CheckpointedSink(handler, checkpoints, batched=True)
    if not callable(handler):
        raise TypeError(f"not an event handler: {handler!r}")
    return CheckpointedSink(handler, checkpoints, batched=False)
