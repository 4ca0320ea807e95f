"""A loopback TCP proxy whose connections a test can cut, to fake a network failure."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

import attrs
import trio


@attrs.define(eq=False)
class Proxy:
    """A running proxy: ``port`` forwards to the target; :meth:`cut` drops every
    connection open now (clients may connect again)."""

    port: int
    _scopes: list[trio.CancelScope] = attrs.field(factory=list)

    def cut(self) -> int:
        """Drop the open connections; returns how many there were."""
        scopes, self._scopes = self._scopes, []
        for scope in scopes:
            scope.cancel()
        return len(scopes)


@asynccontextmanager
async def tcp_proxy(target_port: int) -> AsyncIterator[Proxy]:
    """Forward a free loopback port to ``target_port`` for the duration of the block."""

    async def pump(source: trio.SocketStream, sink: trio.SocketStream) -> None:
        while data := await source.receive_some(65536):
            await sink.send_all(data)

    async with trio.open_nursery() as nursery:
        proxy = Proxy(0)

        async def handle(client: trio.SocketStream) -> None:
            with trio.CancelScope() as scope:
                proxy._scopes.append(scope)
                upstream = await trio.open_tcp_stream("127.0.0.1", target_port)
                async with client, upstream, trio.open_nursery() as pumps:
                    pumps.start_soon(pump, client, upstream)
                    pumps.start_soon(pump, upstream, client)

        listeners = await nursery.start(partial(trio.serve_tcp, handle, 0, host="127.0.0.1"))
        proxy.port = listeners[0].socket.getsockname()[1]
        yield proxy
        nursery.cancel_scope.cancel()


def port_of(url: str) -> int:
    """The port of a ``nats://host:port`` URL."""
    return int(url.rsplit(":", 1)[1])
