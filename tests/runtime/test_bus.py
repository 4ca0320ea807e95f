"""The in-process event bus: fan-out, bounded buffers, gap reporting, the publish hook."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from engine import CommandHandler, Decider, MemoryStore
from engine.bus.channel import ChannelEventBus
from tests.runtime.helpers import Noted, append, codec, memory_store


async def test_publish_fans_out_to_every_subscriber_in_order() -> None:
    """Each subscriber receives every publication, in order, with its head position."""
    store = memory_store()
    bus: ChannelEventBus[Any] = ChannelEventBus()
    async with bus.subscribe() as first, bus.subscribe() as second:
        events = await append(store, 3)
        for event in events:
            await bus.publish([event])
        await bus.publish([])
        for subscription in (first, second):
            heads = [(await subscription.receive()).head for _ in range(3)]
            assert heads == [1, 2, 3]
            with pytest.raises(trio.WouldBlock):
                subscription.receive_nowait()
        assert bus.statistics().subscribers == 2
    assert bus.statistics().subscribers == 0
    assert bus.statistics().published == 3
    await bus.publish(events)  # nobody listens: nothing to do, nothing fails


async def test_a_slow_subscriber_never_blocks_the_publisher_and_learns_of_the_gap() -> None:
    """A full buffer drops publications; the subscriber is told it missed some, both when
    a later publication fits and when its buffer drains with nothing new."""
    store = memory_store()
    bus: ChannelEventBus[Any] = ChannelEventBus()
    events = await append(store, 6)
    async with bus.subscribe(buffer_size=2) as slow, bus.subscribe(buffer_size=10) as fast:
        for event in events[:4]:
            bus.publish_nowait([event])  # never waits
        assert slow.dropped == 2
        assert bus.statistics().dropped == 2
        first, second = slow.receive_nowait(), slow.receive_nowait()
        assert [(n.head, n.missed) for n in (first, second)] == [(1, False), (2, False)]
        gap = await slow.receive()
        assert (gap.events, gap.head, gap.missed) == ((), 4, True)
        with pytest.raises(trio.WouldBlock):
            slow.receive_nowait()

        bus.publish_nowait([events[4]])
        bus.publish_nowait([events[4]])
        bus.publish_nowait([events[5]])  # dropped
        assert slow.receive_nowait().missed is False
        slow.receive_nowait()
        bus.publish_nowait([events[5]])  # fits again: carries the flag
        after_gap = slow.receive_nowait()
        assert (after_gap.head, after_gap.missed) == (6, True)
        heads = []
        async for notification in fast:
            heads.append(notification.head)
            if len(heads) == 7:
                break
        assert heads == [1, 2, 3, 4, 5, 5, 6]
        assert fast.dropped == 0
    with pytest.raises(ValueError, match="buffer_size"):
        async with bus.subscribe(buffer_size=0):
            pass


async def test_publish_is_a_command_handler_hook() -> None:
    """``CommandHandler(after_append=[bus.publish])`` publishes each append's events."""
    adder: Decider[int, int, Noted] = Decider(
        initial_state=lambda: 0,
        decide=lambda state, command: [Noted(command)],
        evolve=lambda state, event: state + event.n,
    )
    bus: ChannelEventBus[Any] = ChannelEventBus()
    store: MemoryStore[Any] = MemoryStore(codec())
    handler = CommandHandler(decider=adder, store=store, after_append=[bus.publish])
    async with bus.subscribe() as subscription:
        await handler.handle("a", 5)
        notification = await subscription.receive()
    assert [event.data for event in notification.events] == [Noted(5)]
    assert notification.head == 1
