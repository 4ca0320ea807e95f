"""A small keep-alive HTTP/1.1 JSON client on Trio (h11), for driving engine processes.

The stdlib client in a thread costs a thread hop and a new connection per request; the
cluster tests send thousands of commands, so each worker keeps one connection per node.
"""

from __future__ import annotations

import json
import urllib.parse
from typing import Any

import attrs
import h11
import trio

#: Seconds one request may take before the client gives up on it.
REQUEST_TIMEOUT = 30.0


class NodeDown(ConnectionError):
    """The node did not take the request (refused, or the connection broke)."""


@attrs.define(eq=False)
class HttpConnection:
    """One keep-alive connection to ``base_url`` (``http://host:port``), reopened on demand."""

    base_url: str
    _stream: trio.SocketStream | None = None
    _conn: h11.Connection | None = None

    async def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """Send one request; return the status and the parsed JSON body.

        Raises:
            NodeDown: The connection could not be made or broke before the answer.
        """
        url = urllib.parse.urlsplit(self.base_url)
        payload = b"" if body is None else json.dumps(body).encode()
        try:
            with trio.fail_after(REQUEST_TIMEOUT):
                if self._stream is None or self._conn is None:
                    self._stream = await trio.open_tcp_stream(url.hostname or "", url.port or 80)
                    self._conn = h11.Connection(h11.CLIENT)
                conn, stream = self._conn, self._stream
                headers = [("host", url.netloc), ("content-length", str(len(payload)))]
                if body is not None:
                    headers.append(("content-type", "application/json"))
                data = conn.send(h11.Request(method=method, target=path, headers=headers))
                data += conn.send(h11.Data(data=payload)) if payload else b""
                data += conn.send(h11.EndOfMessage())
                await stream.send_all(data)
                status = 0
                chunks: list[bytes] = []
                while True:
                    event = conn.next_event()
                    if event is h11.NEED_DATA:
                        received = await stream.receive_some(65536)
                        conn.receive_data(received)
                        continue
                    if isinstance(event, h11.Response):
                        status = event.status_code
                    elif isinstance(event, h11.Data):
                        chunks.append(bytes(event.data))
                    elif isinstance(event, h11.EndOfMessage):
                        break
                    elif isinstance(event, h11.ConnectionClosed):
                        raise NodeDown(f"{self.base_url} closed the connection")
                if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                    await self.aclose()
                else:
                    conn.start_next_cycle()
        except (OSError, trio.BrokenResourceError, h11.RemoteProtocolError) as exc:
            await self.aclose()
            raise NodeDown(f"{self.base_url}: {exc!r}") from None
        except BaseException:
            await self.aclose()
            raise
        text = b"".join(chunks)
        return status, json.loads(text) if text else None

    async def aclose(self) -> None:
        """Close the connection (the next request opens a new one)."""
        stream, self._stream, self._conn = self._stream, None, None
        if stream is not None:
            with trio.move_on_after(1, shield=True):
                await stream.aclose()
