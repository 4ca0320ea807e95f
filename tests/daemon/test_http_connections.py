"""One HTTP connection's trouble stays with that connection: requests with trailing bytes
(which the hypercorn ingress answered with a 400 while the app answered the request,
racing the close against the send) never take the server down."""

from __future__ import annotations

from pathlib import Path

import trio

from engine.daemon.engine import Engine, open_engine
from tests.daemon.test_engine import config_for, http

# Found by the slow fuzz tier (tests/faults/test_fuzz.py): each of these ended the whole
# HTTP server within 40 tries when hypercorn's own accept loop ran the connections.
TRAILING = [
    b"HEAD /streams/a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
    b"authorization: \xf3\xff\r\n\r\n\xf3\xff",
    b"OPTIONS /commands/bank/Deposit HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
    b"B: \\\xf8c\xfeiS\x96E\r\n\r\ns",
    b"`XyA /queries/bank/balance HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
    b"`XyA: Z\xa4\r\n\r\nZ\xa4",
]


async def _exchange(engine: Engine, raw: bytes) -> bytes:
    host, port = engine.http_urls[0].removeprefix("http://").rsplit(":", 1)
    reply = b""
    stream = await trio.open_tcp_stream(host, int(port))
    async with stream:
        await stream.send_all(raw)
        with trio.fail_after(10):
            try:
                while chunk := await stream.receive_some(65536):
                    reply += chunk
            except trio.BrokenResourceError:
                pass  # reset by the server after its answer
    return reply


async def test_trailing_bytes_never_take_the_server_down(tmp_path: Path) -> None:
    """Each racy request gets a 4xx or a closed connection, 60 times over, and the engine
    still answers health checks and commands afterwards."""
    async with open_engine(config_for(tmp_path)) as engine:
        for raw in TRAILING:
            for _ in range(60):
                reply = await _exchange(engine, raw)
                if reply:
                    assert reply.startswith(b"HTTP/1.1 4"), reply[:200]
                    assert reply.count(b"HTTP/1.1 ") == 1, reply  # the stray bytes: no answer
        status, _ = await http(f"{engine.http_urls[0]}/health/live")
        assert status == 200
        status, body = await http(
            f"{engine.http_urls[0]}/commands/bank/OpenAccount",
            method="POST",
            body={"stream_id": "after-the-race", "data": {"initial_balance": 1}},
        )
        assert status == 200, body


async def test_closing_with_a_keep_alive_connection_open(tmp_path: Path) -> None:
    """Closing the engine with a keep-alive connection open ends promptly (idle
    connections are closed at once, the accept loop stops)."""
    with trio.fail_after(20):
        async with open_engine(config_for(tmp_path)) as engine:
            host, port = engine.http_urls[0].removeprefix("http://").rsplit(":", 1)
            stream = await trio.open_tcp_stream(host, int(port))
            await stream.send_all(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (await stream.receive_some(65536)).startswith(b"HTTP/1.1 200")
        await stream.aclose()
