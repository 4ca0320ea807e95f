"""The event bus port: a wake-up and fan-out signal for stored events.

The store stays the source of truth. A bus tells subscribers that events were stored so
that they read the store now instead of at their next poll; it never carries the only
copy of an event. A subscriber that falls behind is not allowed to slow publishers down:
its publications are dropped and it is told so (:attr:`Notification.missed`), so it
catches up from the store (``read_all`` after the last position it handled).

Publish after every append with the command handler's hook::

    handler = CommandHandler(decider=..., store=store, after_append=[bus.publish])
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Generic, Protocol, TypeVar

import attrs

from engine.events import Event

__all__ = ["DEFAULT_SUBSCRIPTION_BUFFER", "EventBus", "Notification", "Subscription"]

E = TypeVar("E")

#: How many publications a subscription buffers before it starts dropping them.
DEFAULT_SUBSCRIPTION_BUFFER = 64


@attrs.frozen
class Notification(Generic[E]):
    """What a subscriber receives: events were stored up to ``head``.

    Attributes:
        events: The events of one publication (one append), in position order. Empty
            when the notification only reports that publications were dropped.
        head: The highest position this notification knows to be stored.
        missed: Publications before this one were dropped because the subscriber was
            slow: read the store after your last position to fill the gap.
    """

    events: tuple[Event[E], ...]
    head: int
    missed: bool = False


class Subscription(Protocol[E]):
    """A subscriber's end of the bus: a bounded stream of :class:`Notification` s."""

    async def receive(self) -> Notification[E]:
        """Wait for the next notification."""
        ...

    def receive_nowait(self) -> Notification[E]:
        """The next notification if one is waiting.

        Raises:
            trio.WouldBlock: Nothing is waiting.
        """
        ...

    def __aiter__(self) -> AsyncIterator[Notification[E]]: ...


class EventBus(Protocol[E]):
    """Fans notifications of stored events out to every current subscriber."""

    async def publish(self, events: Sequence[Event[E]]) -> None:
        """Tell every subscriber that ``events`` were stored.

        Never waits for a slow subscriber (its notification is dropped and it is told
        so). Publishing an empty sequence does nothing. The signature matches
        :attr:`CommandHandler.after_append <engine.handler.CommandHandler.after_append>`.
        """
        ...

    def subscribe(
        self, *, buffer_size: int = DEFAULT_SUBSCRIPTION_BUFFER
    ) -> AbstractAsyncContextManager[Subscription[E]]:
        """Receive the publications made while the ``async with`` block is open.

        Args:
            buffer_size: How many notifications may wait before later ones are dropped
                (and the next one delivered is marked ``missed``).
        """
        ...
