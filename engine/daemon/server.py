"""The HTTP/1.1 server of the engine: Trio listeners, one task per connection
(:mod:`engine.daemon.http1` speaks HTTP on it), limits across connections, shutdown.

* more than ``max_connections`` open connections: 503 and close;
* out of file descriptors (EMFILE): accepting backs off and one warning is logged per
  ``_EMFILE_LOG_INTERVAL`` seconds;
* each connection's deadline (head, body, idle, sending) is checked by one sweeper task.

Shutdown is cancellation: cancelling :func:`serve_http` closes the listeners at once,
closes idle connections, and lets requests in flight finish and be answered (with
``Connection: close``) within ``grace_period`` seconds; then every connection is closed.
"""

from __future__ import annotations

import errno
import functools
import logging
import math
import ssl
from typing import Final

import attrs
import trio

from engine.daemon.http1 import App, Connection, ServerLimits, error_body
from engine.errors import EskitError

__all__ = ["AddressInUseError", "serve_http"]

logger = logging.getLogger("eskit.http.server")

_EMFILE_LOG_INTERVAL: Final = 10.0
_CAPACITY_ERRNOS: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
#: How often connections' deadlines are checked: timeouts fire up to this much late.
_SWEEP: Final = 0.25


class AddressInUseError(EskitError, OSError):
    """The HTTP port is taken by another process; pick another ``[http] port``."""

    code = "address_in_use"

    def __init__(self, address: str) -> None:
        super().__init__(errno.EADDRINUSE, f"address {address} is in use")
        self.address = address

    def __str__(self) -> str:
        return f"address {self.address} is in use (is another engine running? set [http] port)"


@attrs.define(eq=False)
class _Server:
    app: App
    limits: ServerLimits
    ssl_context: ssl.SSLContext | None
    connections: set[Connection] = attrs.field(factory=set)
    closing: bool = False
    _handlers_scope: trio.CancelScope | None = None
    _stopped: trio.Event = attrs.field(factory=trio.Event)
    _refusing: int = 0

    @property
    def tls(self) -> bool:
        return self.ssl_context is not None

    async def hold_connections(
        self, *, task_status: trio.TaskStatus[trio.Nursery] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Own the connections' tasks, shielded: shutdown gives them the grace period."""
        with trio.CancelScope(shield=True) as scope:
            self._handlers_scope = scope
            async with trio.open_nursery() as handlers:
                handlers.start_soon(self._sweep)
                task_status.started(handlers)
                await self._stopped.wait()

    async def _sweep(self) -> None:
        """Cancel the connections whose deadline has passed (checked every ``_SWEEP`` s)."""
        while True:
            if not self._stopped.is_set():
                with trio.move_on_after(_SWEEP):
                    await self._stopped.wait()
            elif self.connections:
                await trio.sleep(_SWEEP)
            else:
                return
            now = trio.current_time()
            for connection in list(self.connections):
                if connection.deadline <= now and connection.scope is not None:
                    connection.scope.cancel()

    def begin_shutdown(self) -> None:
        """Stop taking requests: idle connections close now, the rest within the grace."""
        self.closing = True
        for connection in self.connections:
            if connection.idle and connection.scope is not None:
                connection.scope.cancel()
        if self._handlers_scope is not None:
            self._handlers_scope.deadline = trio.current_time() + self.limits.grace_period
        self._stopped.set()

    async def accept(self, listener: trio.SocketListener, handlers: trio.Nursery) -> None:
        backoff = 0.05
        last_warning = -math.inf
        missed = 0
        while True:
            try:
                stream = await listener.accept()
            except OSError as error:
                if error.errno not in _CAPACITY_ERRNOS:
                    raise
                missed += 1
                now = trio.current_time()
                if now - last_warning >= _EMFILE_LOG_INTERVAL:
                    logger.warning(
                        "cannot accept HTTP connections: %s (%d times since the last warning); "
                        "retrying (raise the open-files limit or lower [http] max_connections)",
                        error.strerror,
                        missed,
                    )
                    last_warning, missed = now, 0
                logger.debug("accept failed (%s); retrying in %.2f s", error.strerror, backoff)
                await trio.sleep(backoff)
                backoff = min(backoff * 2, 1.0)
                continue
            backoff = 0.05
            if len(self.connections) >= self.limits.max_connections:
                handlers.start_soon(self._turn_away, stream)
            else:
                handlers.start_soon(self._serve, stream)

    async def _serve(self, stream: trio.SocketStream) -> None:
        wrapped: trio.abc.Stream = stream
        if self.ssl_context is not None:
            wrapped = trio.SSLStream(
                stream, self.ssl_context, server_side=True, https_compatible=True
            )
        connection = Connection(self, wrapped)
        self.connections.add(connection)
        try:
            await connection.serve()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass  # the client went away (reset, TLS failure): nothing to answer
        except Exception:
            logger.warning("an HTTP connection ended with an error", exc_info=True)
        finally:
            self.connections.discard(connection)
            await trio.aclose_forcefully(wrapped)

    async def _turn_away(self, stream: trio.SocketStream) -> None:
        """Over ``max_connections``: a 503 (plain HTTP only) and close."""
        self._refusing += 1
        try:
            if self.ssl_context is None and self._refusing <= 64:
                body = error_body("too_many_connections", "the server is at its connection limit")
                with trio.move_on_after(1.0):
                    await stream.send_all(
                        b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
                        b"content-length: %d\r\nconnection: close\r\nretry-after: 1\r\n\r\n%s"
                        % (len(body), body)
                    )
        except (trio.BrokenResourceError, OSError):
            pass
        finally:
            self._refusing -= 1
            await trio.aclose_forcefully(stream)


async def _bind(host: str, port: int) -> list[trio.SocketListener]:
    try:
        return await trio.open_tcp_listeners(port, host=host)
    except OSError as error:
        if error.errno == errno.EADDRINUSE:
            shown = f"[{host}]" if ":" in host else host
            raise AddressInUseError(f"{shown}:{port}") from None
        raise


def _url(listener: trio.SocketListener, scheme: str) -> str:
    host, port = listener.socket.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"{scheme}://{shown}:{port}"


async def serve_http(
    app: App,
    host: str,
    port: int,
    *,
    limits: ServerLimits | None = None,
    ssl_context: ssl.SSLContext | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` over HTTP/1.1 (HTTPS with ``ssl_context``) until cancelled.

    Calls ``task_status.started(urls)`` with the bound URLs once listening (``port=0``
    picks a free port; the URL says which; a name such as ``localhost`` binds each of its
    addresses).

    Resource handling:
        Cancellation is the shutdown: the listeners close at once, idle connections
        close, requests in flight are answered within ``limits.grace_period``, then every
        connection is closed.

    Raises:
        AddressInUseError: The port is taken.
    """
    limits = limits or ServerLimits()
    listeners = await _bind(host, port)
    scheme = "https" if ssl_context is not None else "http"
    server = _Server(app, limits, ssl_context)
    async with trio.open_nursery() as lifetime:
        handlers: trio.Nursery = await lifetime.start(server.hold_connections)
        try:
            async with trio.open_nursery() as accepting:
                for listener in listeners:
                    accepting.start_soon(functools.partial(server.accept, listener, handlers))
                task_status.started([_url(listener, scheme) for listener in listeners])
        finally:
            for listener in listeners:
                listener.socket.close()
            server.begin_shutdown()
