"""A loopback TCP proxy whose connections a test can cut, to fake a network failure."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

import attrs
import trio


@attrs.define(eq=False)
class Proxy:
    """A running proxy: ``port`` forwards to the target. :meth:`cut` drops every
    connection open now (clients may connect again); :meth:`freeze` stops forwarding
    while keeping the connections open (a partition: nothing arrives, nothing fails)."""

    port: int
    _scopes: list[trio.CancelScope] = attrs.field(factory=list)
    _thawed: trio.Event = attrs.field(factory=trio.Event)

    def __attrs_post_init__(self) -> None:
        self._thawed.set()

    def freeze(self) -> None:
        """Stop forwarding bytes (in both directions) until :meth:`thaw`."""
        if self._thawed.is_set():
            self._thawed = trio.Event()

    def thaw(self) -> None:
        """Forward again (bytes held back meanwhile are delivered)."""
        self._thawed.set()

    def cut(self) -> int:
        """Drop the open connections; returns how many there were."""
        scopes, self._scopes = self._scopes, []
        for scope in scopes:
            scope.cancel()
        return len(scopes)


@asynccontextmanager
async def tcp_proxy(target_port: int, target_host: str = "127.0.0.1") -> AsyncIterator[Proxy]:
    """Forward a free loopback port to the target for the duration of the block."""

    proxy = Proxy(0)

    async def pump(source: trio.SocketStream, sink: trio.SocketStream) -> None:
        try:
            while data := await source.receive_some(65536):
                await proxy._thawed.wait()
                await sink.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # one side reset or closed: this connection is over, the proxy goes on

    async with trio.open_nursery() as nursery:

        async def handle(client: trio.SocketStream) -> None:
            with trio.CancelScope() as scope:
                proxy._scopes.append(scope)
                upstream = await trio.open_tcp_stream(target_host, target_port)
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
