"""A reply that never comes in time: the client's read timeout counts as a lost answer,
and the command is sent again with the same id and acts once."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import attrs
import pytest
import trio

from engine.client import AsyncClient, OutcomeUnknownError, RetryPolicy
from engine.daemon.engine import open_engine
from tests.daemon.test_engine import config_for


@attrs.define(eq=False)
class StallProxy:
    """Forwards loopback TCP; once armed, holds back the next reply until released."""

    port: int = 0
    stalled: int = 0
    armed: bool = False
    release: trio.Event = attrs.field(factory=trio.Event)


@asynccontextmanager
async def stall_proxy(target_port: int) -> AsyncIterator[StallProxy]:
    """Forward a free port to ``target_port`` for the block."""
    proxy = StallProxy()

    async def pump(source: trio.SocketStream, sink: trio.SocketStream, *, reply: bool) -> None:
        while data := await source.receive_some(65536):
            if reply and proxy.armed:
                proxy.armed = False
                proxy.stalled += 1
                await proxy.release.wait()  # the reply is late: the client gave up on it
            await sink.send_all(data)

    async def handle(client: trio.SocketStream) -> None:
        try:
            server = await trio.open_tcp_stream("127.0.0.1", target_port)
            async with client, server, trio.open_nursery() as pumps:
                pumps.start_soon(partial(pump, client, server, reply=False))
                await pump(server, client, reply=True)
                pumps.cancel_scope.cancel()
        except* (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass  # either side went away

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, handle, 0, host="127.0.0.1"))
        proxy.port = int(listeners[0].socket.getsockname()[1])
        try:
            yield proxy
        finally:
            proxy.release.set()
            nursery.cancel_scope.cancel()


async def test_a_timed_out_command_is_resent_with_its_id_and_acts_once(tmp_path: Path) -> None:
    """The first attempt's reply is held past the client's timeout; the resend answers duplicate."""
    with trio.fail_after(60):
        async with (
            open_engine(config_for(tmp_path)) as engine,
            stall_proxy(int(engine.http_urls[0].rsplit(":", 1)[1])) as proxy,
            AsyncClient(f"http://127.0.0.1:{proxy.port}", timeout=1.0) as client,
        ):
            await client.send("bank", "OpenAccount", {"initial_balance": 10}, stream_id="acc")
            proxy.armed = True
            result = await client.send("bank", "Deposit", {"amount": 5}, stream_id="acc")
            assert proxy.stalled == 1
            assert result.duplicate is True
            assert result.state == {"exists": True, "balance": 15}
            assert [e.version for e in await client.stream("acc")] == [1, 2]


async def test_without_retries_a_timeout_is_an_unknown_outcome(tmp_path: Path) -> None:
    """With one attempt, a reply that does not come in time is an unknown outcome naming the id."""
    with trio.fail_after(60):
        async with (
            open_engine(config_for(tmp_path)) as engine,
            stall_proxy(int(engine.http_urls[0].rsplit(":", 1)[1])) as proxy,
            AsyncClient(
                f"http://127.0.0.1:{proxy.port}", timeout=1.0, retry=RetryPolicy(attempts=1)
            ) as client,
        ):
            await client.send("bank", "OpenAccount", {"initial_balance": 10}, stream_id="acc")
            proxy.armed = True
            with pytest.raises(OutcomeUnknownError) as unknown:
                await client.send(
                    "bank", "Deposit", {"amount": 5}, stream_id="acc", command_id="dep-1"
                )
            assert unknown.value.command_id == "dep-1"
            assert unknown.value.status == 0
            again = await client.send(
                "bank", "Deposit", {"amount": 5}, stream_id="acc", command_id="dep-1"
            )
            assert again.duplicate is True
            assert [e.version for e in await client.stream("acc")] == [1, 2]
