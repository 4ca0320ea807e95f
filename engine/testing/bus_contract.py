"""The contract every event bus passes.

Use it for a bus of your own: subclass :class:`EventBusContract` in a test module and
provide a ``bus_backend`` fixture that returns a :class:`BusBackend`::

    class TestMyBus(EventBusContract):
        @pytest.fixture
        def bus_backend(self):
            return BusBackend(name="mine", open_bus=..., carries_events=False)

``open_bus()`` opens one more client on the *same* bus (another node, for a distributed
bus; an in-process bus may hand out one shared instance). Publications are built here
from plain :class:`~engine.events.Event` values: a bus never reads the store.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

import attrs
import pytest
import trio

from engine.bus.base import EventBus, Notification, Subscription
from engine.events import Event

__all__ = ["BusBackend", "EventBusContract", "stored_events"]

#: Seconds any single contract test may take before it counts as hung.
HANG_GUARD = 60


@attrs.frozen
class BusBackend:
    """How the contract opens a bus.

    Attributes:
        name: For test ids and messages.
        open_bus: ``open_bus()`` opens a client on the backend's shared bus.
        carries_events: Whether notifications carry the published events (an
            in-process bus can; a bus between processes sends positions only).
    """

    name: str
    open_bus: Callable[[], AbstractAsyncContextManager[EventBus[Any]]]
    carries_events: bool


def stored_events(first: int, count: int = 1, *, stream_id: str = "s") -> list[Event[Any]]:
    """``count`` events as a store would return them, at positions ``first``, ``first + 1``..."""
    return [
        Event(stream_id, position, position, "contract.Note", {"n": position})
        for position in range(first, first + count)
    ]


async def _receive(subscription: Subscription[Any]) -> Notification[Any]:
    with trio.fail_after(HANG_GUARD):
        return await subscription.receive()


class EventBusContract:
    """The behaviour every :class:`~engine.bus.base.EventBus` shares."""

    async def test_every_subscriber_of_every_client_gets_each_publication(
        self, bus_backend: BusBackend
    ) -> None:
        """Subscribers on the publishing client and on another client all receive every
        publication, in order, with its head position, and no ``missed`` flag."""
        async with (
            bus_backend.open_bus() as here,
            bus_backend.open_bus() as there,
            here.subscribe() as local,
            here.subscribe() as second,
            there.subscribe() as remote,
        ):
            published: list[Sequence[Event[Any]]] = [
                stored_events(1),
                stored_events(2, 3),
                stored_events(5),
            ]
            for events in published:
                await here.publish(events)
            for subscription in (local, second, remote):
                received = [await _receive(subscription) for _ in published]
                assert [n.head for n in received] == [1, 4, 5]
                assert not any(n.missed for n in received)
                if bus_backend.carries_events:
                    assert [list(n.events) for n in received] == published
                with pytest.raises(trio.WouldBlock):
                    subscription.receive_nowait()

    async def test_an_empty_publication_is_not_sent(self, bus_backend: BusBackend) -> None:
        """Publishing no events notifies nobody: the next notification is the next
        non-empty publication."""
        async with bus_backend.open_bus() as bus, bus.subscribe() as subscription:
            await bus.publish([])
            await bus.publish(stored_events(7))
            notification = await _receive(subscription)
            assert (notification.head, notification.missed) == (7, False)

    async def test_a_closed_subscription_does_not_disturb_the_others(
        self, bus_backend: BusBackend
    ) -> None:
        """Leaving a subscription stops its deliveries and nothing else."""
        async with bus_backend.open_bus() as bus, bus.subscribe() as staying:
            async with bus.subscribe() as leaving:
                await bus.publish(stored_events(1))
                assert (await _receive(leaving)).head == 1
            await bus.publish(stored_events(2))
            assert [(await _receive(staying)).head for _ in range(2)] == [1, 2]

    async def test_a_slow_subscriber_never_blocks_and_learns_of_the_gap(
        self, bus_backend: BusBackend
    ) -> None:
        """A subscriber that does not read never holds up the publisher or a fast
        subscriber; once it reads, it is told (``missed``) that notifications were
        dropped, learns the latest head, and later publications reach it normally."""
        total = 40
        async with (
            bus_backend.open_bus() as bus,
            bus.subscribe(buffer_size=2) as slow,
            bus.subscribe(buffer_size=total) as fast,
        ):
            with trio.fail_after(HANG_GUARD):
                for position in range(1, total + 1):
                    await bus.publish(stored_events(position))
            heads = [(await _receive(fast)).head for _ in range(total)]
            assert heads == list(range(1, total + 1))

            # Everything the fast subscriber got was offered to the slow one too.
            received: list[Notification[Any]] = []
            while not received or received[-1].head < total:
                received.append(await _receive(slow))
            assert any(n.missed for n in received)
            assert len(received) < total
            positions = [n.head for n in received]
            assert positions == sorted(positions)
            with pytest.raises(trio.WouldBlock):
                slow.receive_nowait()

            await bus.publish(stored_events(total + 1))
            after = await _receive(slow)
            assert (after.head, after.missed) == (total + 1, False)
            assert (await _receive(fast)).head == total + 1

    async def test_many_subscribers_each_get_their_own_buffer(
        self, bus_backend: BusBackend
    ) -> None:
        """Ten subscribers with buffers of one: each keeps the first publication and is
        told of the rest as a gap, independently of the others."""
        async with bus_backend.open_bus() as bus, trio.open_nursery() as nursery:
            done = trio.Event()
            heads: list[list[int]] = []
            missed: list[bool] = []
            ready = trio.Semaphore(0)

            async def subscriber() -> None:
                async with bus.subscribe(buffer_size=1) as subscription:
                    ready.release()
                    await done.wait()
                    mine = [await _receive(subscription)]
                    while mine[-1].head < 3:
                        mine.append(await _receive(subscription))
                    heads.append([n.head for n in mine])
                    missed.append(any(n.missed for n in mine))

            for _ in range(10):
                nursery.start_soon(subscriber)
            for _ in range(10):
                await ready.acquire()
            for position in (1, 2, 3):
                await bus.publish(stored_events(position))
            # A publication of our own, received by a subscriber of our own, marks the
            # point where every earlier one has been offered to everybody.
            async with bus.subscribe() as marker:
                await bus.publish(stored_events(4))
                while (await _receive(marker)).head < 4:
                    pass
            done.set()
        assert len(heads) == 10
        assert all(h[0] == 1 and h[-1] >= 3 for h in heads), heads
        assert all(missed)
