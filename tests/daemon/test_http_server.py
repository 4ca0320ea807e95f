"""The HTTP/1.1 server in front of the engine, spoken to in raw bytes: keep-alive,
pipelining, chunked bodies, 100-continue, HEAD, HTTP/1.0, request smuggling, limits and
timeouts, and an executed command always answered with its own response."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
import trio.testing

from engine.daemon.engine import Engine, open_engine
from tests.daemon.rawhttp import Connection, get, post
from tests.daemon.test_engine import config_for


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[Engine]:
    async with open_engine(config_for(tmp_path, http={"max_body_bytes": 4096})) as running:
        yield running


def _open(stream_id: str, balance: int = 1) -> bytes:
    return json.dumps({"stream_id": stream_id, "data": {"initial_balance": balance}}).encode()


async def _stored(engine: Engine, stream_id: str) -> int:
    return len(await engine.store.load(stream_id))


async def test_keep_alive_serves_many_requests_on_one_connection(engine: Engine) -> None:
    """Three requests one after the other on one connection are each answered; it stays open."""
    conn = await Connection.open(engine.http_urls[0])
    for _ in range(3):
        await conn.send(get("/health/live"))
        reply = await conn.reply()
        assert (reply.status, reply.headers.get("connection")) == (200, None)
    await conn.aclose()


async def test_pipelined_requests_are_answered_in_order(engine: Engine) -> None:
    """Requests sent in one write are answered in the order they were sent."""
    conn = await Connection.open(engine.http_urls[0])
    await conn.send(
        post("/commands/bank/OpenAccount", _open("pipe-1"))
        + get("/streams/pipe-1")
        + get("/nope")
        + post("/commands/bank/Deposit", b'{"stream_id": "pipe-1", "data": {"amount": 5}}')
        + get("/streams/pipe-1")
    )
    replies = [await conn.reply() for _ in range(5)]
    assert [r.status for r in replies] == [200, 200, 404, 200, 200]
    assert len(json.loads(replies[1].body)["events"]) == 1
    assert len(json.loads(replies[4].body)["events"]) == 2
    await conn.aclose()


async def test_chunked_request_body(engine: Engine) -> None:
    """A command sent with Transfer-Encoding: chunked, in several chunks, is executed."""
    body = _open("chunked-1")
    conn = await Connection.open(engine.http_urls[0])
    await conn.send(
        b"POST /commands/bank/OpenAccount HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    for piece in (body[:10], body[10:]):
        await conn.send(b"%x\r\n%s\r\n" % (len(piece), piece))
    await conn.send(b"0\r\n\r\n")
    assert (await conn.reply()).status == 200
    assert await _stored(engine, "chunked-1") == 1
    await conn.aclose()


async def test_chunked_body_over_the_limit_is_refused(engine: Engine) -> None:
    """A chunked body growing past max_body_bytes gets 413 and the connection closes."""
    conn = await Connection.open(engine.http_urls[0])
    await conn.send(
        b"POST /commands/bank/OpenAccount HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n" + b"1000\r\n" + b"x" * 4096 + b"\r\n1\r\nx\r\n"
    )
    reply = await conn.reply()
    assert (reply.status, reply.headers["connection"]) == (413, "close")
    assert await conn.closed()


async def test_expect_100_continue(engine: Engine) -> None:
    """A client that expects 100-continue gets it before sending its body, then the answer."""
    body = _open("continue-1")
    conn = await Connection.open(engine.http_urls[0])
    await conn.send(
        b"POST /commands/bank/OpenAccount HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\nExpect: 100-continue\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body)
    )
    assert (await conn.reply()).status == 100
    await conn.send(body)
    assert (await conn.reply()).status == 200
    await conn.aclose()


async def test_expect_100_continue_with_a_body_over_the_limit(engine: Engine) -> None:
    """A declared body over the limit is refused with 413 instead of 100 Continue."""
    conn = await Connection.open(engine.http_urls[0])
    await conn.send(
        b"POST /commands/bank/OpenAccount HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Expect: 100-continue\r\nContent-Length: 5000\r\n\r\n"
    )
    assert (await conn.reply()).status == 413
    assert await conn.closed()


async def test_head_has_the_headers_of_get_and_no_body(engine: Engine) -> None:
    """HEAD answers like GET (same Content-Length) without a body; the next request works."""
    conn = await Connection.open(engine.http_urls[0])
    await conn.send(get("/health/live"))
    got = await conn.reply()
    await conn.send(get("/health/live").replace(b"GET", b"HEAD", 1) + get("/health/live"))
    head = await conn.reply(head=True)
    assert (head.status, head.body) == (200, b"")
    assert head.headers["content-length"] == str(len(got.body))
    assert (await conn.reply()).body == got.body
    await conn.aclose()


async def test_http_1_0(engine: Engine) -> None:
    """HTTP/1.0 closes after the answer unless the client asked for keep-alive."""
    conn = await Connection.open(engine.http_urls[0])
    await conn.send(b"GET /health/live HTTP/1.0\r\n\r\n")
    reply = await conn.reply()
    assert (reply.status, reply.headers["connection"]) == (200, "close")
    assert await conn.closed()
    conn = await Connection.open(engine.http_urls[0])
    await conn.send(b"GET /health/live HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    assert (await conn.reply()).headers["connection"] == "keep-alive"
    await conn.send(b"GET /health/live HTTP/1.0\r\n\r\n")
    assert (await conn.reply()).status == 200
    assert await conn.closed()


@pytest.mark.parametrize(
    "framing",
    [
        b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
        b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
        b"Content-Length: 5\r\nContent-Length: 6\r\n",
        b"Content-Length: 5\r\nContent-Length: 5\r\n",
        b"Content-Length: 5, 5\r\n",
        b"Transfer-Encoding: gzip, chunked\r\n",
        b"Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n",
    ],
)
async def test_request_smuggling_is_refused_and_the_connection_closed(
    engine: Engine, framing: bytes
) -> None:
    """Issue 15.10: ambiguous body framing (Content-Length with Transfer-Encoding, two
    Content-Lengths, an unknown coding) gets a 400/501 and the connection closes: nothing
    smuggled after it is executed."""
    smuggled = post("/commands/bank/OpenAccount", _open("smuggled"))
    conn = await Connection.open(engine.http_urls[0])
    await conn.send(
        b"POST /commands/bank/OpenAccount HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        + framing
        + b"\r\n0\r\n\r\n"
        + smuggled
    )
    reply = await conn.reply()
    assert reply.status in (400, 501), reply
    assert reply.headers["connection"] == "close"
    assert await conn.closed()
    assert await _stored(engine, "smuggled") == 0


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (get("/" + "a" * 9000), 414),
        (get("/health/ready", extra=b"".join(b"x-%d: 1\r\n" % i for i in range(101))), 431),
        (get("/health/ready", extra=b"x-big: " + b"y" * 70_000 + b"\r\n"), 431),
        (b"GET /health/ready HTTP/2.0\r\nHost: 127.0.0.1\r\n\r\n", 505),
        (b"GET /health/ready HTTP/1.1\r\n\r\n", 400),
        (get("/health/ready", extra=b"Host: other\r\n"), 400),
        (get("/health/ready", extra=b"Expect: something\r\n"), 417),
        (b"GET http://127.0.0.1/health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 200),
        (b"OPTIONS * HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 400),
    ],
)
async def test_limits_and_malformed_heads(
    engine: Engine, request_bytes: bytes, status: int
) -> None:
    """Over-long targets (414), too many or too large headers (431), other HTTP versions
    (505), a missing or second Host (400), unknown expectations (417) are refused by the
    server; an absolute-form target is served."""
    conn = await Connection.open(engine.http_urls[0])
    await conn.send(request_bytes)
    assert (await conn.reply()).status == status
    await conn.aclose()


async def test_a_command_on_a_closing_connection_is_answered_with_its_own_response(
    engine: Engine,
) -> None:
    """Issue 15.3: bytes after the body of a command on a connection that must close
    (Connection: close, HTTP/1.0) are ignored; the executed command's 200 is sent."""
    for index, (version, extra) in enumerate(
        [(b"HTTP/1.1", b"Connection: close\r\n"), (b"HTTP/1.0", b"")]
    ):
        stream_id = f"closing-{index}"
        body = _open(stream_id)
        request = post("/commands/bank/OpenAccount", body, extra=extra).replace(
            b"HTTP/1.1", version, 1
        )
        conn = await Connection.open(engine.http_urls[0])
        await conn.send(request + b"stray bytes\r\n\r\n")
        reply = await conn.reply()
        assert reply.status == 200, reply
        assert json.loads(reply.body)["stream_id"] == stream_id
        assert await conn.closed()
        assert await _stored(engine, stream_id) == 1


async def test_a_stalled_body_is_closed_after_the_body_timeout(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """Issue 15.5: a client that stops sending mid-body gets 408 and is disconnected after
    body_timeout (30 s by default), and the command is not executed."""
    async with open_engine(config_for(tmp_path)) as engine:
        conn = await Connection.open(engine.http_urls[0])
        body = _open("stalled")
        await conn.send(post("/commands/bank/OpenAccount", body)[: -len(body) + 5])
        with trio.fail_after(31):
            reply = await conn.reply()
            assert (reply.status, reply.headers["connection"]) == (408, "close")
            assert await conn.closed()
        assert await _stored(engine, "stalled") == 0


async def test_slow_headers_get_408_and_idle_connections_close(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """A head trickling in slower than header_timeout gets 408; a keep-alive connection
    idle for keep_alive_timeout is closed."""
    async with open_engine(config_for(tmp_path)) as engine:
        conn = await Connection.open(engine.http_urls[0])
        await conn.send(b"GET /health/live HTTP/1.1\r\n")
        with trio.fail_after(11):
            for _ in range(20):
                await trio.sleep(0.5)
                await conn.send(b"X-Slow: 1\r\n")
        assert (await conn.reply()).status == 408
        assert await conn.closed()
        idle = await Connection.open(engine.http_urls[0])
        await idle.send(get("/health/live"))
        assert (await idle.reply()).status == 200
        with trio.fail_after(5.5):
            assert await idle.closed()


async def test_connections_over_the_cap_get_503(tmp_path: Path) -> None:
    """Past max_connections a new connection gets 503 and is closed; the others are served."""
    async with open_engine(config_for(tmp_path, http={"max_connections": 3})) as engine:
        held = [await Connection.open(engine.http_urls[0]) for _ in range(3)]
        for conn in held:
            await conn.send(get("/health/live"))
            assert (await conn.reply()).status == 200
        extra = await Connection.open(engine.http_urls[0])
        reply = await extra.reply()
        assert (reply.status, json.loads(reply.body)["error"]["code"]) == (
            503,
            "too_many_connections",
        )
        assert await extra.closed()
        for conn in held:
            await conn.aclose()


async def test_500_slow_header_connections_do_not_starve_a_normal_client(
    tmp_path: Path,
) -> None:
    """500 connections each holding an unfinished head open: a normal client is still
    served, promptly, on a new connection."""
    async with open_engine(config_for(tmp_path)) as engine:
        slow = []
        for _ in range(500):
            conn = await Connection.open(engine.http_urls[0])
            await conn.send(b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            slow.append(conn)
        with trio.fail_after(5):
            normal = await Connection.open(engine.http_urls[0])
            await normal.send(post("/commands/bank/OpenAccount", _open("normal")))
            assert (await normal.reply()).status == 200
            await normal.send(get("/streams/normal"))
            assert (await normal.reply()).status == 200
        await normal.aclose()
        for conn in slow:
            await conn.aclose()


async def test_graceful_shutdown_answers_the_request_in_flight(tmp_path: Path) -> None:
    """Closing the engine while a read-your-writes query waits lets it finish within
    [engine] grace_period: it is answered (with Connection: close), idle connections are
    closed at once and new connections are refused."""
    config = config_for(tmp_path, engine={"grace_period": 5.0})
    replies: list[tuple[int, str]] = []
    async with trio.open_nursery() as nursery:
        async with open_engine(config) as engine:
            url = engine.http_urls[0]
            conn = await Connection.open(url)
            await conn.send(post("/commands/bank/OpenAccount", _open("grace-1", 5)))
            position = json.loads((await conn.reply()).body)["events"][0]["position"]
            idle = await Connection.open(url)
            waiting = await Connection.open(url)
            await waiting.send(
                get(f"/queries/bank/balance?account=grace-1&wait_for_position={position + 1}")
            )

            async def answer() -> None:
                reply = await waiting.reply()
                replies.append((reply.status, reply.headers["connection"]))

            async def deposit() -> None:
                # The position the query waits for, written while the engine closes.
                await trio.testing.wait_all_tasks_blocked()
                await engine.send_command(
                    "bank", "Deposit", stream_id="grace-1", data={"amount": 1}, command_id=None
                )

            nursery.start_soon(answer)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(deposit)
        assert await idle.closed()
    assert await waiting.closed()
    await conn.aclose()
    assert replies == [(200, "close")]
    with pytest.raises(OSError, match="all attempts to connect"):
        await Connection.open(url)


async def test_a_request_longer_than_the_grace_period_is_cut(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """A request still running when [engine] grace_period ends is cut: its connection is
    closed without an answer when the grace ends (the query would wait 5 s)."""
    config = config_for(tmp_path, engine={"grace_period": 1.0})
    cut_after: list[float] = []
    async with trio.open_nursery() as nursery, open_engine(config) as engine:
        waiting = await Connection.open(engine.http_urls[0])
        # Waits up to 5 s for a position nothing will write.
        await waiting.send(get("/queries/bank/balance?account=x&wait_for_position=1000"))
        await trio.testing.wait_all_tasks_blocked()
        closing_started = trio.current_time()

        async def read() -> None:
            with pytest.raises(EOFError):
                await waiting.reply()
            cut_after.append(trio.current_time() - closing_started)
            await waiting.aclose()

        nursery.start_soon(read)
    assert len(cut_after) == 1
    assert cut_after[0] == pytest.approx(1.0, abs=0.01)  # the grace, not the 5 s
