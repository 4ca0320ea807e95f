"""A raw HTTP/1.1 client for the ingress tests: exact bytes out, responses parsed back."""

from __future__ import annotations

import attrs
import trio


@attrs.frozen
class Reply:
    """One parsed response."""

    status: int
    headers: dict[str, str]
    body: bytes


def address(url: str) -> tuple[str, int]:
    """Host and port of an ``http://host:port`` URL."""
    host, port = url.split("://", 1)[1].rsplit(":", 1)
    return host.strip("[]"), int(port)


@attrs.define
class Connection:
    """A client connection that reads responses one at a time."""

    stream: trio.abc.Stream
    buffer: bytes = b""

    @classmethod
    async def open(cls, url: str) -> Connection:
        host, port = address(url)
        return cls(await trio.open_tcp_stream(host, port))

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def _more(self) -> bool:
        try:
            chunk = await self.stream.receive_some(65536)
        except trio.BrokenResourceError:
            return False
        self.buffer += chunk
        return bool(chunk)

    async def reply(self, *, head: bool = False) -> Reply:
        """The next response (``head``: it answers a HEAD, so it has no body)."""
        with trio.fail_after(60):
            while b"\r\n\r\n" not in self.buffer:
                if not await self._more():
                    raise EOFError(f"connection closed; received {self.buffer[:200]!r}")
            raw_head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
            lines = raw_head.decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ", 2)[1])
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            length = 0 if head else int(headers.get("content-length", "0"))
            while len(self.buffer) < length:
                if not await self._more():
                    raise EOFError("connection closed mid-body")
            body, self.buffer = self.buffer[:length], self.buffer[length:]
            return Reply(status, headers, body)

    async def closed(self) -> bool:
        """Whether the server closes the connection (after what it already sent); the
        client side is closed too."""
        with trio.fail_after(60):
            while await self._more():
                pass
        await self.stream.aclose()
        return True

    async def aclose(self) -> None:
        await self.stream.aclose()


def get(path: str, *, host: str = "127.0.0.1", extra: bytes = b"") -> bytes:
    """A GET request's bytes."""
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\n".encode() + extra + b"\r\n"


def post(path: str, body: bytes, *, extra: bytes = b"", host: str = "127.0.0.1") -> bytes:
    """A POST request's bytes with a Content-Length body."""
    return (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n".encode()
        + extra
        + b"\r\n"
        + body
    )
