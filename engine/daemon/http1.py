"""HTTP/1.1 on one connection, on llhttp (the C parser behind Node.js, through httptools).

A :class:`Connection` reads, feeds the parser, and answers the requests it completes in
order (keep-alive and pipelining: responses always in request order). Request bodies are
read whole (Content-Length or chunked) up to a limit, then handed to the app, an async
callable ``app(request) -> response``. :mod:`engine.daemon.server` accepts connections
and runs one of these per connection.

What it refuses, and how (the app never sees these):

* malformed requests, request smuggling (Content-Length with Transfer-Encoding, duplicate
  or conflicting Content-Length), a request target that is not a path: 400 and close;
* a transfer coding other than ``chunked``: 501; an HTTP version other than 1.0/1.1: 505;
* an ``Upgrade`` (websocket, h2c): 400 ``upgrade_not_supported``;
* a request target over ``max_url_bytes``: 414; more than ``max_headers`` header lines or
  a head over ``max_header_bytes``: 431; a body over ``max_body_bytes``: 413 (from the
  declared length, before reading it, or as soon as a chunked body passes it);
* ``Expect: 100-continue`` is answered with ``100 Continue`` (or the 413), other
  expectations with 417;
* a head not received within ``header_timeout`` or a body not within ``body_timeout``
  (slowloris, a client stalling mid-body): 408 and close; an idle keep-alive connection
  is closed after ``keep_alive_timeout``; a client that does not read its response within
  ``send_timeout`` is disconnected.

Bytes after a request on a connection that must close (HTTP/1.0, ``Connection: close``)
are ignored: the request is answered with the app's response, then the connection closes.
"""

from __future__ import annotations

import collections
import email.utils
import logging
import math
import os
import time
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any, Final, Protocol

import attrs
import httptools
import orjson
import trio

__all__ = ["App", "Connection", "Host", "Request", "Response", "ServerLimits", "error_body"]

logger = logging.getLogger("eskit.http.server")

_CHUNK: Final = 65536
#: After answering on a connection that closes, read (and drop) what the client still
#: sends for this long, so closing with unread bytes does not reset the connection
#: before the client has read the answer.
_LINGER: Final = 2.0
_LINGER_BYTES: Final = 1024 * 1024


@attrs.frozen(kw_only=True)
class ServerLimits:
    """What one client may ask of the server. Sizes in bytes, times in seconds."""

    max_connections: int = 1000
    max_url_bytes: int = 8 * 1024
    max_header_bytes: int = 64 * 1024
    max_headers: int = 100
    max_body_bytes: int = 1024 * 1024
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    keep_alive_timeout: float = 5.0
    send_timeout: float = 30.0
    grace_period: float = 10.0


@attrs.define
class Request:
    """One request as the app sees it.

    ``path`` and ``query`` are the raw bytes of the request target (not percent-decoded);
    header names are lowercase, values as sent.
    """

    method: str
    path: bytes
    query: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes = b""
    http_version: str = "1.1"
    keep_alive: bool = True
    tls: bool = False

    def header(self, name: bytes) -> bytes | None:
        """The first value of header ``name`` (lowercase), or ``None``."""
        for key, value in self.headers:
            if key == name:
                return value
        return None


@attrs.frozen
class Response:
    """What the app answers: a status, a body and its type, extra headers."""

    status: int
    body: bytes = b""
    content_type: bytes = b"application/json"
    headers: tuple[tuple[bytes, bytes], ...] = ()


App = Callable[[Request], Awaitable[Response]]


class Host(Protocol):
    """What a connection needs from its server."""

    app: App
    limits: ServerLimits
    closing: bool

    @property
    def tls(self) -> bool: ...


def error_body(code: str, message: str, **extra: Any) -> bytes:
    """The JSON error body every refusal carries."""
    return orjson.dumps({"error": {"code": code, "message": message, **extra}})


class _Refusal(Exception):
    """The server answers the request itself and closes the connection."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


_UPGRADE: Final = _Refusal(400, "upgrade_not_supported", "protocol upgrades are not supported")


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


_STATUS_LINES: Final = {s: b"HTTP/1.1 %d %s\r\n" % (s, _reason(s)) for s in range(100, 600)}
_NO_BODY_STATUSES: Final = frozenset({204, 304})


class _Date:
    """The ``Date`` header, formatted once per second (it is a wall-clock header)."""

    second = -1
    value = b""

    @classmethod
    def header(cls) -> bytes:
        now = int(time.time())
        if now != cls.second:
            cls.value = b"date: " + email.utils.formatdate(now, usegmt=True).encode() + b"\r\n"
            cls.second = now
        return cls.value


_IDLE, _HEAD, _BODY = 0, 1, 2


class Connection:
    """One client connection: the parser's callbacks and the task that serves it."""

    def __init__(self, server: Host, stream: trio.abc.Stream) -> None:
        self.server = server
        self.limits = server.limits
        self.stream = stream
        self.parser = httptools.HttpRequestParser(self)
        self.ready: collections.deque[Request | _Refusal] = collections.deque()
        self.refusal: _Refusal | None = None
        self.phase = _IDLE
        self.scope: trio.CancelScope | None = None
        self.deadline = math.inf
        self.idle = False
        self.finished = False
        self.continue_due = False
        self.tls = server.tls
        # Plain TCP: responses are written straight to the socket when it takes them.
        self.fd = stream.socket.fileno() if isinstance(stream, trio.SocketStream) else -1
        self._reset()

    def _reset(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_bytes = 0
        self.body: list[bytes] = []
        self.body_bytes = 0
        self.head_fed = 0

    # -- parser callbacks (they run inside feed_data; errors go to self.refusal) -----

    def _refuse(self, status: int, code: str, message: str) -> None:
        self.refusal = _Refusal(status, code, message)
        raise self.refusal

    def on_message_begin(self) -> None:
        self._reset()
        self.phase = _HEAD

    def on_url(self, url: bytes) -> None:
        self.url += url
        if len(self.url) > self.limits.max_url_bytes:
            self._refuse(
                414, "url_too_long", f"request target over {self.limits.max_url_bytes} bytes"
            )

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))
        self.head_bytes += len(name) + len(value) + 4
        if len(self.headers) > self.limits.max_headers:
            self._refuse(431, "headers_too_large", f"more than {self.limits.max_headers} headers")
        if self.head_bytes + len(self.url) > self.limits.max_header_bytes:
            self._refuse(
                431, "headers_too_large", f"headers over {self.limits.max_header_bytes} bytes"
            )

    def on_headers_complete(self) -> None:
        self.phase = _BODY
        version = self.parser.get_http_version()
        if version not in ("1.1", "1.0"):
            self._refuse(505, "http_version_not_supported", "HTTP/1.1 or HTTP/1.0 only")
        length = expect = None
        codings: list[bytes] = []
        hosts = 0
        for name, value in self.headers:
            if name == b"host":
                hosts += 1
            elif name == b"content-length":
                length = int(value)  # llhttp has checked it is one valid number
            elif name == b"transfer-encoding":
                codings.append(value.strip().lower())
            elif name == b"expect":
                expect = value.strip().lower()
        if hosts > 1 or (hosts == 0 and version == "1.1"):
            self._refuse(400, "bad_request", "an HTTP/1.1 request needs exactly one Host header")
        if codings and codings != [b"chunked"]:
            self._refuse(501, "unsupported_transfer_encoding", "only chunked is supported")
        if length is not None and length > self.limits.max_body_bytes:
            self._refuse(413, "too_large", f"body over {self.limits.max_body_bytes} bytes")
        if expect is not None:
            if expect != b"100-continue":
                self._refuse(417, "expectation_failed", "only 100-continue can be expected")
            self.continue_due = version == "1.1"

    def on_body(self, body: bytes) -> None:
        self.body_bytes += len(body)
        if self.body_bytes > self.limits.max_body_bytes:
            self._refuse(413, "too_large", f"body over {self.limits.max_body_bytes} bytes")
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.phase = _IDLE
        self.continue_due = False
        parser = self.parser
        if parser.should_upgrade():
            self.ready.append(_UPGRADE)
            return
        target = self.url
        if target[:1] != b"/":
            parsed = None
            if target[:7].lower() == b"http://" or target[:8].lower() == b"https://":
                try:
                    parsed = httptools.parse_url(target)
                except httptools.HttpParserInvalidURLError:
                    parsed = None
            if parsed is None or not parsed.path:
                self.ready.append(_Refusal(400, "bad_request", "the target must be a path"))
                return
            path, query = parsed.path, parsed.query or b""
        else:
            path, _, query = target.partition(b"?")
            path = path.partition(b"#")[0]
        self.ready.append(
            Request(
                parser.get_method().decode("ascii"),
                path,
                query,
                self.headers,
                b"".join(self.body),
                parser.get_http_version(),
                parser.should_keep_alive(),
                self.tls,
            )
        )

    # -- the connection's task ---------------------------------------------------------

    async def serve(self) -> None:
        """Serve requests until the connection closes.

        One cancel scope per connection; its deadline is a plain number that moves with
        the phase (idle, head, body, sending; none while the app runs) and the server's
        sweeper cancels the scope once it has passed (a scope deadline per wait costs
        more than the rest of a small request). When it fires, the phase says what
        happened: a slow head or body gets a 408, the rest just closes.
        """
        with trio.CancelScope() as scope:
            self.scope = scope
            self.deadline = trio.current_time() + self.limits.header_timeout
            await self._loop()
        self.scope = None
        if scope.cancelled_caught and not self.finished and self.phase != _IDLE:
            self.finished = True
            what = "headers" if self.phase == _HEAD else "body"
            await self._send_refusal(
                _Refusal(408, "request_timeout", f"the request's {what} came too slowly")
            )

    async def _loop(self) -> None:
        limits = self.limits
        stream = self.stream
        waiting = -1  # the phase whose deadline the scope holds
        while True:
            while self.ready:
                item = self.ready.popleft()
                if isinstance(item, _Refusal):
                    await self._send_refusal(item)
                    return
                self.deadline = math.inf  # the app takes the time it needs
                if not await self._answer(item):
                    return
                self.deadline = trio.current_time() + limits.keep_alive_timeout
                waiting = _IDLE
            if self.refusal is not None:
                await self._send_refusal(self.refusal)
                return
            if self.server.closing and self.phase == _IDLE:
                return
            if self.continue_due:
                self.continue_due = False
                await self._send(b"HTTP/1.1 100 Continue\r\n\r\n")
                waiting = -1
            if self.phase != waiting:
                # The phase changed in the feed just done, so "now" is when it began.
                waiting = self.phase
                if waiting == _HEAD:
                    self.deadline = trio.current_time() + limits.header_timeout
                elif waiting == _BODY:
                    self.deadline = trio.current_time() + limits.body_timeout
            self.idle = self.phase == _IDLE
            data = await stream.receive_some(_CHUNK)
            self.idle = False
            if not data:
                return  # the client closed: a request it had not finished is dropped
            self._feed(data)

    def _feed(self, data: bytes | bytearray) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # The bytes after an upgrade belong to another protocol: answer and close.
            last = self.ready[-1] if self.ready else None
            if not (isinstance(last, _Refusal) and last.code == _UPGRADE.code):
                self.ready.append(_UPGRADE)
        except httptools.HttpParserCallbackError:
            pass  # self.refusal says what (set by the callback that raised)
        except httptools.HttpParserError as error:
            self.refusal = _Refusal(400, "bad_request", f"malformed request: {error}")
        else:
            if self.phase == _HEAD:
                # llhttp buffers a header it has not finished; bound what one head may
                # hold (the exact limit applies to each completed header line).
                self.head_fed += len(data)
                if self.head_fed > self.limits.max_header_bytes + _CHUNK:
                    self.refusal = _Refusal(431, "headers_too_large", "headers over the limit")

    async def _answer(self, request: Request) -> bool:
        """Run the app and send its response; ``False`` when the connection must close."""
        try:
            response = await self.server.app(request)
        except Exception:
            logger.exception("the app failed on %s %r", request.method, request.path)
            response = Response(500, error_body("internal_error", "internal error"))
        keep_alive = request.keep_alive and not self.server.closing
        status = response.status
        parts = [_STATUS_LINES.get(status) or b"HTTP/1.1 %d \r\n" % status, _Date.header()]
        for name, value in response.headers:
            parts += [name, b": ", value, b"\r\n"]
        if status not in _NO_BODY_STATUSES:
            parts += [
                b"content-type: ",
                response.content_type,
                b"\r\ncontent-length: ",
                str(len(response.body)).encode(),
                b"\r\n",
            ]
        if not keep_alive:
            parts.append(b"connection: close\r\n")
        elif request.http_version == "1.0":
            parts.append(b"connection: keep-alive\r\n")
        parts.append(b"\r\n")
        if request.method != "HEAD" and status not in _NO_BODY_STATUSES:
            parts.append(response.body)
        await self._send(b"".join(parts))
        if not keep_alive:
            await self._linger()
        return keep_alive

    async def _send_refusal(self, refusal: _Refusal) -> None:
        self.finished = True
        body = error_body(refusal.code, refusal.message)
        with trio.move_on_after(self.limits.send_timeout):
            await self._send(
                b"".join(
                    [
                        _STATUS_LINES.get(refusal.status) or b"HTTP/1.1 400 \r\n",
                        _Date.header(),
                        b"content-type: application/json\r\ncontent-length: ",
                        str(len(body)).encode(),
                        b"\r\nconnection: close\r\n\r\n",
                        body,
                    ]
                )
            )
        await self._linger()

    async def _send(self, data: bytes) -> None:
        """Write ``data``: at once when the socket takes it all (the usual case), else
        waiting at most ``send_timeout`` for a client that does not read."""
        if self.fd >= 0:
            try:
                sent = os.write(self.fd, data)
            except BlockingIOError:
                sent = 0
            if sent == len(data):
                return
            data = data[sent:]
        self.deadline = trio.current_time() + self.limits.send_timeout
        await self.stream.send_all(data)

    async def _linger(self) -> None:
        """Half-close, then drop what the client still sends, so that the answer is read
        before the connection is closed (closing with unread bytes resets it)."""
        self.finished = True
        if not isinstance(self.stream, trio.SocketStream):
            return
        with trio.move_on_after(_LINGER):
            await self.stream.send_eof()
            dropped = 0
            while dropped < _LINGER_BYTES:
                chunk = await self.stream.receive_some(_CHUNK)
                if not chunk:
                    return
                dropped += len(chunk)
