"""An in-process event bus on bounded Trio memory channels (tier 1: one node)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Generic, TypeVar

import attrs
import trio

from engine.bus.base import DEFAULT_SUBSCRIPTION_BUFFER, Notification
from engine.events import Event

__all__ = [
    "BusStatistics",
    "ChannelEventBus",
    "ChannelSubscription",
    "Subscriber",
    "local_subscription",
]

E = TypeVar("E")


@attrs.frozen
class BusStatistics:
    """Counters of a :class:`ChannelEventBus`.

    Attributes:
        subscribers: Open subscriptions.
        published: Publications made (empty ones not counted).
        dropped: Notifications not delivered because a subscriber's buffer was full.
    """

    subscribers: int
    published: int
    dropped: int


@attrs.define(eq=False)
class Subscriber(Generic[E]):
    """The sending end of one subscriber's bounded buffer (shared by every local fan-out)."""

    send: trio.MemorySendChannel[Notification[E]]
    # The highest position of a dropped publication, until the subscriber is told.
    missed_head: int | None = None
    dropped: int = 0

    def offer(self, events: tuple[Event[E], ...], head: int, *, missed: bool = False) -> bool:
        """Queue a notification without waiting; when the buffer is full, drop it, remember
        the gap (the next notification says ``missed``) and return False."""
        missed = missed or self.missed_head is not None
        try:
            self.send.send_nowait(Notification(events, head, missed=missed))
        except trio.WouldBlock:
            self.missed_head = max(self.missed_head or 0, head)
            self.dropped += 1
            return False
        self.missed_head = None
        return True


@attrs.define(eq=False)
class ChannelSubscription(Generic[E]):
    """One subscriber's bounded buffer of notifications (see :class:`ChannelEventBus`)."""

    _receive: trio.MemoryReceiveChannel[Notification[E]]
    _subscriber: Subscriber[E]

    @property
    def dropped(self) -> int:
        """How many publications this subscription has dropped so far."""
        return self._subscriber.dropped

    def receive_nowait(self) -> Notification[E]:
        try:
            return self._receive.receive_nowait()
        except trio.WouldBlock:
            # The buffer is drained and nothing was published since the drop: report
            # the gap now rather than only with the next publication.
            head = self._subscriber.missed_head
            if head is None:
                raise
            self._subscriber.missed_head = None
            return Notification((), head, missed=True)

    async def receive(self) -> Notification[E]:
        try:
            notification = self.receive_nowait()
        except trio.WouldBlock:
            return await self._receive.receive()
        await trio.lowlevel.checkpoint()
        return notification

    def __aiter__(self) -> AsyncIterator[Notification[E]]:
        return self

    async def __anext__(self) -> Notification[E]:
        return await self.receive()


@asynccontextmanager
async def local_subscription(
    subscribers: set[Subscriber[E]], buffer_size: int
) -> AsyncIterator[ChannelSubscription[E]]:
    """Register a bounded subscriber in ``subscribers`` for the block (every local fan-out
    uses this), and unregister and close it afterwards."""
    if buffer_size < 1:
        raise ValueError(f"buffer_size must be >= 1, got {buffer_size}")
    send, receive = trio.open_memory_channel[Notification[E]](buffer_size)
    subscriber = Subscriber(send)
    subscribers.add(subscriber)
    try:
        await trio.lowlevel.checkpoint()
        yield ChannelSubscription(receive, subscriber)
    finally:
        subscribers.discard(subscriber)
        send.close()
        receive.close()


@attrs.define(eq=False)
class ChannelEventBus(Generic[E]):
    """An :class:`~engine.bus.base.EventBus` inside one process.

    Each subscription gets its own bounded memory channel. ``publish`` puts a
    notification into every buffer without waiting; a full buffer drops it and the
    subscriber's next notification is marked ``missed`` (see
    :class:`~engine.bus.base.Notification`), so a slow subscriber costs publishers
    nothing and catches up from the store.

    Example:
        >>> bus = ChannelEventBus()
        >>> handler = CommandHandler(decider=bank, store=store, after_append=[bus.publish])
        >>> async with bus.subscribe() as notifications:
        ...     async for notification in notifications:
        ...         ...
    """

    _subscribers: set[Subscriber[E]] = attrs.field(factory=set, init=False)
    _published: int = attrs.field(default=0, init=False)
    _dropped: int = attrs.field(default=0, init=False)

    async def publish(self, events: Sequence[Event[E]]) -> None:
        await trio.lowlevel.checkpoint()
        self.publish_nowait(events)

    def publish_nowait(self, events: Sequence[Event[E]]) -> None:
        """:meth:`publish` without the checkpoint (it never blocks)."""
        if not events:
            return
        self._published += 1
        batch = tuple(events)
        head = max(event.position for event in batch)
        for subscriber in self._subscribers:
            if not subscriber.offer(batch, head):
                self._dropped += 1

    @asynccontextmanager
    async def subscribe(
        self, *, buffer_size: int = DEFAULT_SUBSCRIPTION_BUFFER
    ) -> AsyncIterator[ChannelSubscription[E]]:
        async with local_subscription(self._subscribers, buffer_size) as subscription:
            yield subscription

    def statistics(self) -> BusStatistics:
        """A snapshot of the bus's counters."""
        return BusStatistics(
            subscribers=len(self._subscribers), published=self._published, dropped=self._dropped
        )
