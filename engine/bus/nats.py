"""An event bus on core NATS (tiers 2/3: the nodes of a cluster wake each other up).

Each publication is one small core NATS message on ``<namespace>.bus``: the first and
last positions of the append, as JSON (``[first, last]``), never the events themselves.
The store is the source of truth; the message only says "read the store now". So a
:class:`~engine.bus.base.Notification` from this bus has no ``events``, only ``head``.

Each bus client holds one NATS subscription and fans it out to its local subscribers,
each with its own bounded buffer, as :class:`~engine.bus.channel.ChannelEventBus` does:
a slow subscriber drops notifications (and is told ``missed``), and never slows down
the publishers or the other subscribers. Core NATS is at-most-once, so every way a
notification can vanish is reported as ``missed`` too:

* a reconnect (whatever was published while the client was away is gone): every
  subscriber gets a ``missed`` notification as soon as the client is back;
* the client's own inbound buffer overflowing (the Trio side fell behind).

Publishing never raises for a connection problem: a notification that cannot be sent
is counted (``publish_failures``) and dropped, because subscribers also poll the store.
"""

from __future__ import annotations

import collections
import functools
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, Generic, TypeVar

import attrs
import orjson
import trio

from engine.bus.base import DEFAULT_SUBSCRIPTION_BUFFER
from engine.bus.channel import ChannelSubscription, Subscriber, local_subscription
from engine.drivers.nats import NatsConnection, NatsStatistics, Subscription, open_nats
from engine.drivers.nats_vocabulary import check_namespace
from engine.events import Event
from engine.groups import unwrap_lone_errors

__all__ = [
    "DEFAULT_BUS_NAMESPACE",
    "DEFAULT_INBOX_SIZE",
    "NATSBusStatistics",
    "NATSEventBus",
    "NATSSubscription",
    "bus_subject",
    "open_nats_event_bus",
]

E = TypeVar("E")

logger = logging.getLogger("eskit.bus")

DEFAULT_BUS_NAMESPACE = "eskit"
#: Messages the client's one NATS subscription buffers before the Trio side reads them.
DEFAULT_INBOX_SIZE = 1024


def bus_subject(namespace: str) -> str:
    """The subject the bus of ``namespace`` publishes on."""
    return f"{check_namespace(namespace)}.bus"


@attrs.frozen
class NATSBusStatistics:
    """Counters of a :class:`NATSEventBus` client.

    Attributes:
        subscribers: Open local subscriptions.
        published: Publications sent (empty ones not counted).
        publish_failures: Publications that could not be sent (connection problems).
        received: Notifications received from NATS (this client's own included).
        dropped: Notifications not delivered because a local subscriber's buffer was full.
        reconnects: Reconnects seen; each one marked every subscriber ``missed``.
        overflows: Times the client's inbound buffer overflowed (each one marked every
            subscriber ``missed``).
        malformed: Messages on the bus subject that were not notifications (ignored).
    """

    subscribers: int
    published: int
    publish_failures: int
    received: int
    dropped: int
    reconnects: int
    overflows: int
    malformed: int


#: One local subscriber's bounded buffer: the same as the in-process bus's.
NATSSubscription = ChannelSubscription


@attrs.define(eq=False)
class NATSEventBus(Generic[E]):
    """An :class:`~engine.bus.base.EventBus` across processes, on core NATS.

    Get one from :func:`open_nats_event_bus`; see the module documentation.

    Example:
        >>> async with open_nats_event_bus(connection, namespace="shop") as bus:
        ...     handler = CommandHandler(decider=..., store=store, after_append=[bus.publish])
        ...     async with bus.subscribe() as notifications:
        ...         async for notification in notifications:
        ...             ...  # read the store after your checkpoint
    """

    _connection: NatsConnection
    subject: str
    _subscribers: set[Subscriber[E]] = attrs.field(factory=set, init=False)
    _head: int = attrs.field(default=0, init=False)
    _counts: collections.Counter[str] = attrs.field(factory=collections.Counter, init=False)

    async def publish(self, events: Sequence[Event[E]]) -> None:
        """Tell every subscriber of every client that ``events`` were stored.

        Sends one message (the positions only) and returns; never waits for a
        subscriber. A connection problem is logged and counted, not raised.
        """
        if not events:
            await trio.lowlevel.checkpoint()
            return
        positions = [event.position for event in events]
        payload = orjson.dumps([min(positions), max(positions)])
        try:
            await self._connection.send(self.subject, payload)
        except (ConnectionError, TimeoutError) as exc:
            self._counts["publish_failures"] += 1
            logger.warning("bus notification not sent (subscribers will poll): %s", exc)
            return
        self._counts["published"] += 1

    @asynccontextmanager
    async def subscribe(
        self, *, buffer_size: int = DEFAULT_SUBSCRIPTION_BUFFER
    ) -> AsyncIterator[NATSSubscription[E]]:
        """Receive the notifications that arrive while the block is open.

        Args:
            buffer_size: How many notifications may wait before later ones are dropped
                (and the next one delivered is marked ``missed``).
        """
        async with local_subscription(self._subscribers, buffer_size) as subscription:
            yield subscription

    def statistics(self) -> NATSBusStatistics:
        """A snapshot of the client's counters."""
        counts = self._counts
        return NATSBusStatistics(
            subscribers=len(self._subscribers),
            published=counts["published"],
            publish_failures=counts["publish_failures"],
            received=counts["received"],
            dropped=counts["dropped"],
            reconnects=counts["reconnects"],
            overflows=counts["overflows"],
            malformed=counts["malformed"],
        )

    # -- fan-out ---------------------------------------------------------------------

    def _offer(self, subscriber: Subscriber[E], head: int, *, missed: bool) -> None:
        if not subscriber.offer((), head, missed=missed):
            self._counts["dropped"] += 1

    def _deliver(self, head: int) -> None:
        self._head = max(self._head, head)
        for subscriber in self._subscribers:
            self._offer(subscriber, head, missed=False)

    def _gap(self, reason: str) -> None:
        self._counts[reason] += 1
        logger.info("bus notifications may have been lost (%s); subscribers catch up", reason)
        for subscriber in self._subscribers:
            self._offer(subscriber, self._head, missed=True)

    async def _pump(self, inbox: Subscription) -> None:
        """Fan the client's NATS subscription out to the local subscribers."""
        overflowed = inbox.dropped
        async for msg in inbox.messages:
            if inbox.dropped != overflowed:
                overflowed = inbox.dropped
                self._gap("overflows")
            try:
                _, last = orjson.loads(msg.data)
                head = int(last)
            except (orjson.JSONDecodeError, TypeError, ValueError):
                self._counts["malformed"] += 1
                continue
            self._counts["received"] += 1
            self._deliver(head)

    async def _watch_reconnects(self) -> None:
        seen = self._connection.statistics().reconnects
        while True:
            current = await self._connection.wait_statistics(
                functools.partial(_reconnected_since, seen)
            )
            seen = current.reconnects
            self._gap("reconnects")


def _reconnected_since(seen: int, stats: NatsStatistics) -> bool:
    return stats.reconnects > seen and stats.connected


@unwrap_lone_errors
@asynccontextmanager
async def open_nats_event_bus(
    url_or_connection: str | NatsConnection,
    *,
    namespace: str = DEFAULT_BUS_NAMESPACE,
    inbox_size: int = DEFAULT_INBOX_SIZE,
    **connect_options: Any,
) -> AsyncIterator[NATSEventBus[Any]]:
    """Open a bus client on ``<namespace>.bus``.

    Args:
        url_or_connection: A NATS URL (the bus opens and closes its own connection) or
            an open :class:`~engine.drivers.nats.NatsConnection` to share.
        namespace: Clients of one namespace hear each other.
        inbox_size: Messages the client's NATS subscription buffers for the Trio side.
        **connect_options: Passed to :func:`~engine.drivers.nats.open_nats` with a URL.

    Resource handling:
        The NATS subscription is in effect at the server when this returns (so a
        publication made afterwards by any client reaches this one). Owns a nursery
        with the fan-out task and a reconnect watcher; both end, and the
        subscription is removed, on exit.
    """
    subject = bus_subject(namespace)
    async with AsyncExitStack() as stack:
        if isinstance(url_or_connection, str):
            connection = await stack.enter_async_context(
                open_nats(url_or_connection, **connect_options)
            )
        else:
            connection = url_or_connection
        bus: NATSEventBus[Any] = NATSEventBus(connection, subject)
        inbox = await stack.enter_async_context(
            connection.subscribe(subject, buffer_size=inbox_size)
        )
        await connection.flush()
        nursery = await stack.enter_async_context(trio.open_nursery())
        stack.callback(nursery.cancel_scope.cancel)
        nursery.start_soon(bus._pump, inbox)
        nursery.start_soon(bus._watch_reconnects)
        yield bus
