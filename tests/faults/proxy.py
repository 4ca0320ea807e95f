"""A loopback TCP proxy (trio) that makes commits ambiguous.

Once :meth:`CutProxy.arm` is called, the proxy forwards the client's next bytes to the
server and then, at the first reply bytes from the server, drops them and closes the
connection: the request left, the reply never came, and the client cannot know whether
its write was stored.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

import attrs
import trio


@attrs.define(eq=False)
class CutProxy:
    """A running proxy on ``port``; ``cuts`` counts the replies it dropped."""

    port: int = 0
    cuts: int = 0
    _armed: bool = False
    _sent: bool = False
    _scopes: set[trio.CancelScope] = attrs.field(factory=set)

    def arm(self) -> None:
        """Cut the connection that carries the next request, before its reply."""
        self._armed, self._sent = True, False

    def disarm(self) -> None:
        """Forward everything again (a request that saw no reply yet is left alone)."""
        self._armed = False

    def _cut(self) -> None:
        self._armed = False
        self.cuts += 1
        for scope in self._scopes:
            scope.cancel()
        self._scopes.clear()


@asynccontextmanager
async def cut_proxy(target_port: int) -> AsyncIterator[CutProxy]:
    """Forward a free loopback port to ``target_port`` for the duration of the block."""
    proxy = CutProxy()

    async def upward(client: trio.SocketStream, server: trio.SocketStream) -> None:
        while data := await client.receive_some(65536):
            await server.send_all(data)
            if proxy._armed:
                proxy._sent = True

    async def downward(server: trio.SocketStream, client: trio.SocketStream) -> None:
        while data := await server.receive_some(65536):
            if proxy._armed and proxy._sent:
                proxy._cut()
                return
            await client.send_all(data)

    async def handle(client: trio.SocketStream) -> None:
        with trio.CancelScope() as scope:
            proxy._scopes.add(scope)
            try:
                server = await trio.open_tcp_stream("127.0.0.1", target_port)
                async with client, server, trio.open_nursery() as pumps:
                    pumps.start_soon(upward, client, server)
                    await downward(server, client)
                    pumps.cancel_scope.cancel()
            except* (trio.BrokenResourceError, OSError):
                pass  # either side went away: this connection is over, like a real network
            finally:
                proxy._scopes.discard(scope)
        # Closing without a shutdown handshake: the client sees a reset or EOF at once.
        await trio.aclose_forcefully(client)

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, handle, 0, host="127.0.0.1"))
        proxy.port = int(listeners[0].socket.getsockname()[1])
        try:
            yield proxy
        finally:
            nursery.cancel_scope.cancel()
