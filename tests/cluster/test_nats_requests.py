"""The NATS driver's core request/reply and subscription primitives, on a real server."""

from __future__ import annotations

import pytest
import trio

from engine.drivers.nats import NoRespondersError, open_nats
from tests.conftest import NatsTarget


async def test_request_reply_through_a_subscription(nats: NatsTarget) -> None:
    """A subscriber answers requests on the reply subject; the requester gets the answer."""
    async with open_nats(nats.url) as connection, trio.open_nursery() as nursery:
        subject = f"{nats.namespace}.echo"
        async with connection.subscribe(subject) as sub:

            async def serve() -> None:
                async for msg in sub.messages:
                    await connection.send(msg.reply, msg.data.upper(), headers={"n": "1"})

            nursery.start_soon(serve)
            with trio.fail_after(10):
                replies = [await connection.request(subject, b"ping%d" % i) for i in range(3)]
            assert [r.data for r in replies] == [b"PING0", b"PING1", b"PING2"]
            assert replies[0].headers["n"] == "1"
            nursery.cancel_scope.cancel()


async def test_request_without_subscriber_has_no_responders(nats: NatsTarget) -> None:
    """A request nobody listens to fails at once with NoRespondersError."""
    async with open_nats(nats.url) as connection:
        with trio.fail_after(10), pytest.raises(NoRespondersError):
            await connection.request(f"{nats.namespace}.nobody", b"x")
