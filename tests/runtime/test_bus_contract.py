"""The event bus contract over the in-process channel bus and the NATS bus (a real
nats-server), and what only the NATS bus does: report a reconnect as ``missed``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

from engine.bus.channel import ChannelEventBus
from engine.bus.nats import NATSEventBus, open_nats_event_bus
from engine.testing.bus_contract import BusBackend, EventBusContract, stored_events
from tests.conftest import NatsTarget
from tests.runtime.netfaults import port_of, tcp_proxy


def channel_backend() -> BusBackend:
    """One bus shared by every "client" (a single process has one bus)."""
    shared: ChannelEventBus[Any] = ChannelEventBus()

    @asynccontextmanager
    async def open_bus() -> AsyncIterator[ChannelEventBus[Any]]:
        yield shared

    return BusBackend("channel", open_bus, carries_events=True)


def nats_backend(target: NatsTarget) -> BusBackend:
    """Each client connects anew to the test's namespace, as separate processes would."""

    @asynccontextmanager
    async def open_bus() -> AsyncIterator[NATSEventBus[Any]]:
        async with open_nats_event_bus(target.url, namespace=target.namespace) as bus:
            yield bus

    return BusBackend("nats", open_bus, carries_events=False)


class TestChannelBus(EventBusContract):
    @pytest.fixture
    def bus_backend(self) -> BusBackend:
        return channel_backend()


class TestNatsBus(EventBusContract):
    @pytest.fixture
    def bus_backend(self, nats: NatsTarget) -> BusBackend:
        return nats_backend(nats)


async def test_a_reconnect_is_reported_as_missed(nats: NatsTarget) -> None:
    """When a client's connection drops, its subscribers get a ``missed`` notification
    once it is back (publications made meanwhile are gone), the reconnect is counted,
    publishing meanwhile does not fail, and later publications arrive as usual."""
    with trio.fail_after(60):
        async with (
            tcp_proxy(port_of(nats.url)) as proxy,
            open_nats_event_bus(
                f"nats://127.0.0.1:{proxy.port}",
                namespace=nats.namespace,
                reconnect_time_wait=0.05,
            ) as far,
            open_nats_event_bus(nats.url, namespace=nats.namespace) as near,
            far.subscribe() as subscription,
        ):
            await near.publish(stored_events(1))
            assert (await subscription.receive()).head == 1
            assert proxy.cut() == 1
            await far.publish(stored_events(2))  # while away: buffered or lost, never raised
            gap = await subscription.receive()
            while not gap.missed:
                gap = await subscription.receive()
            assert gap.head >= 1
            assert far.statistics().reconnects == 1
            await near.publish(stored_events(3))
            later = await subscription.receive()
            while later.head < 3:
                later = await subscription.receive()
            assert (later.head, later.missed) == (3, False)
            assert far.statistics().publish_failures == 0
