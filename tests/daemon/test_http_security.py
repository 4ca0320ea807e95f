"""Hostile and mistaken HTTP input (issues 15.6, 15.9, 15.12, 16.4, 16.12): browsers on
foreign pages (CSRF, DNS rebinding) are refused with the headers browsers really send,
odd input gets a typed 4xx, engine errors map to their statuses, and the log stays calm."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from engine import EventRegistry, Plugin
from engine.daemon.engine import Engine, open_engine
from engine.dcb.base import AppendCondition, AppendConditionError, Query, QueryItem
from engine.errors import (
    InvalidParameterError,
    LockNotHeldError,
    NotActiveError,
    NotCaughtUpError,
    StorageFullError,
)
from tests.daemon.rawhttp import Connection, get, post
from tests.daemon.test_engine import config_for


async def _fail(params: Mapping[str, str]) -> dict[str, Any]:
    match params.get("error"):
        case "parameter":
            raise InvalidParameterError("account", "account: required (an account id)")
        case "not_caught_up":
            raise NotCaughtUpError(7, 3)
        case "storage_full":
            raise StorageFullError("the disk is full")
        case "not_active":
            raise NotActiveError("bank.balances@1", "node-b")
        case "lock":
            raise LockNotHeldError("the lease of stream 's' was lost")
        case "condition":
            query = Query([QueryItem(types=("x",))])
            raise AppendConditionError(AppendCondition(fail_if_events_match=query, after=1), 2)
        case "bug":
            raise RuntimeError("a bug in the query")
        case "big":
            return {"n": 3 * (2**63 - 1) + 1}
    return {"ok": True}


#: A plugin whose query raises the error its ``error`` parameter names.
probe = Plugin(name="probe", events=EventRegistry(), queries={"fail": _fail})
PROBE = "tests.daemon.test_http_security:probe"


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[Engine]:
    config = config_for(tmp_path, plugins={"modules": [PROBE]})
    async with open_engine(config) as running:
        yield running


def _port(engine: Engine) -> int:
    return int(engine.http_urls[0].rsplit(":", 1)[1])


async def _exchange(engine: Engine, raw: bytes) -> tuple[int, dict[str, Any]]:
    conn = await Connection.open(engine.http_urls[0])
    await conn.send(raw)
    reply = await conn.reply()
    await conn.aclose()
    return reply.status, json.loads(reply.body) if reply.body[:1] == b"{" else {}


def _browser_post(port: int, body: bytes, content_type: bytes, origin: bytes) -> bytes:
    """A cross-site form POST exactly as Chromium sends it."""
    return (
        b"POST /commands/bank/OpenAccount HTTP/1.1\r\n"
        b"Host: 127.0.0.1:%d\r\n"
        b"Connection: keep-alive\r\n"
        b"Content-Length: %d\r\n"
        b"Cache-Control: max-age=0\r\n"
        b"Origin: %s\r\n"
        b"Content-Type: %s\r\n"
        b"Upgrade-Insecure-Requests: 1\r\n"
        b"User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
        b"Chrome/131.0.0.0 Safari/537.36\r\n"
        b"Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\n"
        b"Sec-Fetch-Site: cross-site\r\n"
        b"Sec-Fetch-Mode: navigate\r\n"
        b"Sec-Fetch-User: ?1\r\n"
        b"Sec-Fetch-Dest: document\r\n"
        b"Referer: %s/\r\n"
        b"Accept-Encoding: gzip, deflate, br, zstd\r\n"
        b"Accept-Language: en-US,en;q=0.9\r\n\r\n"
        % (port, len(body), origin, content_type, origin)
        + body
    )


COMMAND = b'{"stream_id": "csrf", "data": {"initial_balance": 1000}}'


@pytest.mark.parametrize(
    "content_type",
    [
        b"application/x-www-form-urlencoded",
        b"text/plain;charset=UTF-8",
        b"multipart/form-data; boundary=----WebKitFormBoundaryu7oxE8Gb6DQ7Ts2C",
    ],
)
async def test_a_foreign_page_cannot_post_commands(engine: Engine, content_type: bytes) -> None:
    """Issue 15.6: a form or no-cors POST from another site (the browser's exact headers)
    is refused with 403 and executes nothing."""
    raw = _browser_post(_port(engine), COMMAND, content_type, b"https://evil.example")
    status, body = await _exchange(engine, raw)
    assert (status, body["error"]["code"]) == (403, "forbidden_origin")
    assert await engine.store.load("csrf") == []


async def test_a_browser_body_type_is_refused_even_from_the_same_origin(engine: Engine) -> None:
    """A form-typed body from a browser (it sends Origin) gets 415 even when same-origin;
    JSON from the same origin is served."""
    origin = b"http://127.0.0.1:%d" % _port(engine)
    raw = _browser_post(_port(engine), COMMAND, b"text/plain;charset=UTF-8", origin)
    status, body = await _exchange(engine, raw.replace(b"cross-site", b"same-origin"))
    assert (status, body["error"]["code"]) == (415, "unsupported_media_type")
    raw = _browser_post(_port(engine), COMMAND, b"application/json", origin)
    status, _ = await _exchange(engine, raw.replace(b"cross-site", b"same-origin"))
    assert status == 200


async def test_curl_and_scripts_are_unaffected(engine: Engine) -> None:
    """``curl -d`` (form type, no Origin) and a JSON POST without Content-Type still run."""
    form = post("/commands/bank/OpenAccount", COMMAND).replace(
        b"application/json", b"application/x-www-form-urlencoded"
    )
    assert (await _exchange(engine, form))[0] == 200
    bare = post("/commands/bank/Deposit", b'{"stream_id": "csrf", "data": {"amount": 1}}')
    assert (await _exchange(engine, bare.replace(b"Content-Type: application/json\r\n", b"")))[
        0
    ] == 200


async def test_dns_rebinding_cannot_read_the_log(engine: Engine) -> None:
    """Issue 15.6: a request addressed to a foreign host name (a rebound DNS name) gets
    403; IP addresses and localhost names are served."""
    port = _port(engine)
    status, body = await _exchange(
        engine,
        get(
            "/events",
            host=f"rebind.attacker.example:{port}",
            extra=b"Sec-Fetch-Site: same-origin\r\n",
        ),
    )
    assert (status, body["error"]["code"]) == (403, "forbidden_host")
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "[::1]", "app.localhost"):
        assert (await _exchange(engine, get("/events", host=host)))[0] == 200, host


async def test_allowed_hosts_and_a_token_admit_other_host_names(tmp_path: Path) -> None:
    """A name in [http] allowed_hosts is served; with a token the Host is not checked
    (a rebinding page cannot send the token)."""
    config = config_for(tmp_path, http={"allowed_hosts": ["eskit.internal"]})
    async with open_engine(config) as engine:
        assert (await _exchange(engine, get("/events", host="eskit.internal:80")))[0] == 200
        assert (await _exchange(engine, get("/events", host="other.example")))[0] == 403
    config = config_for(tmp_path, http={"token": "s3cret"})
    async with open_engine(config) as engine:
        raw = get("/events", host="any.example", extra=b"Authorization: Bearer s3cret\r\n")
        assert (await _exchange(engine, raw))[0] == 200


async def test_the_bearer_scheme_is_case_insensitive(tmp_path: Path) -> None:
    """Issue 15.12: ``bearer`` and ``BEARER`` are accepted like ``Bearer``; a wrong token
    is still refused."""
    async with open_engine(config_for(tmp_path, http={"token": "s3cret"})) as engine:
        for scheme in (b"Bearer", b"bearer", b"BEARER"):
            raw = get("/events", extra=b"Authorization: %s s3cret\r\n" % scheme)
            assert (await _exchange(engine, raw))[0] == 200, scheme
        raw = get("/events", extra=b"Authorization: bearer s3cre\r\n")
        assert (await _exchange(engine, raw))[0] == 401


async def test_invalid_utf8_in_the_path_is_refused(engine: Engine) -> None:
    """Issue 15.12: ``%FF`` in a path is a 400, not U+FFFD (which made two paths read one
    stream); ``%C3%A9`` is é."""
    status, body = await _exchange(engine, get("/streams/a%FF"))
    assert (status, body["error"]["code"]) == (400, "bad_path")
    status, body = await _exchange(engine, get("/streams/caf%C3%A9"))
    assert (status, body["error"]["code"]) == (404, "unknown_stream")
    assert "'caf\u00e9'" in body["error"]["message"]


@pytest.mark.parametrize(
    "body",
    [
        b'{"stream_id": "deep", "data": {"initial_balance": 1, "x": '
        + b"[" * 1000
        + b"]" * 1000
        + b"}}",
        b'{"stream_id": "\\ud800", "data": {"initial_balance": 1}}',
        b'{"stream_id": "s", "command_id": "\\udc00", "data": {"initial_balance": 1}}',
    ],
)
async def test_hostile_json_is_a_typed_400(engine: Engine, body: bytes) -> None:
    """Issue 15.9: JSON nested 1,000 levels and lone surrogates in ids are 400 bad_json."""
    status, reply = await _exchange(engine, post("/commands/bank/OpenAccount", body))
    assert (status, reply["error"]["code"]) == (400, "bad_json")


async def test_a_websocket_upgrade_is_a_typed_400(engine: Engine) -> None:
    """Issue 15.9: a websocket handshake gets 400 upgrade_not_supported and is closed."""
    conn = await Connection.open(engine.http_urls[0])
    await conn.send(
        get(
            "/events",
            extra=b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
        )
    )
    reply = await conn.reply()
    assert (reply.status, json.loads(reply.body)["error"]["code"]) == (400, "upgrade_not_supported")
    assert await conn.closed()


async def test_unknown_top_level_keys_are_refused(engine: Engine) -> None:
    """Issue 16.4: ``commandId`` (for ``command_id``) is a 400 naming the key and the
    allowed ones, and nothing is stored (it would have applied twice)."""
    body = b'{"stream_id": "typo", "data": {"initial_balance": 1}, "commandId": "c-1"}'
    status, reply = await _exchange(engine, post("/commands/bank/OpenAccount", body))
    assert (status, reply["error"]["code"]) == (400, "unknown_field")
    assert "'commandId'" in reply["error"]["message"]
    assert "command_id" in reply["error"]["message"]
    assert await engine.store.load("typo") == []


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        ("parameter", 400, "bad_parameter"),
        ("not_caught_up", 503, "not_caught_up"),
        ("storage_full", 503, "storage_full"),
        ("not_active", 409, "not_active"),
        ("lock", 503, "lock_not_held"),
        ("condition", 409, "append_condition_failed"),
        ("bug", 500, "internal_error"),
    ],
)
async def test_engine_errors_map_to_their_statuses(
    engine: Engine, error: str, status: int, code: str
) -> None:
    """Issues 15.12 and 16.12: a query's InvalidParameterError is 400 with its message;
    NotCaughtUpError, StorageFullError and LockNotHeldError are 503, NotActiveError 409 with their own
    message; AppendConditionError is 409; only a bug is a 500."""
    got, body = await _exchange(engine, get(f"/queries/probe/fail?error={error}"))
    assert (got, body["error"]["code"]) == (status, code)
    if status != 500:
        assert "internal" not in body["error"]["message"]


async def test_503s_log_one_warning_line_per_code_and_interval(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 15.12: a 503 is logged as one WARNING line without a traceback, at most once
    per 10 s per code; only a 500 logs a traceback."""
    config = config_for(tmp_path, plugins={"modules": [PROBE]})
    caplog.set_level(logging.WARNING, logger="eskit.http")
    async with open_engine(config) as engine:
        for _ in range(3):
            await _exchange(engine, get("/queries/probe/fail?error=not_caught_up"))
            await _exchange(engine, get("/queries/probe/fail?error=storage_full"))
        await trio.sleep(10)
        await _exchange(engine, get("/queries/probe/fail?error=not_caught_up"))
        await _exchange(engine, get("/queries/probe/fail?error=bug"))
    records = [r for r in caplog.records if r.name == "eskit.http"]
    warnings = [r for r in records if r.levelno == logging.WARNING]
    assert [("not_caught_up" in r.getMessage(), r.exc_info) for r in warnings] == [
        (True, None),
        (False, None),
        (True, None),
    ]
    errors = [r for r in records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert errors[0].exc_info is not None


async def test_a_port_in_use_is_named(tmp_path: Path) -> None:
    """Issue 15.12: starting on a port another engine holds raises an error saying
    "address 127.0.0.1:<port> is in use"."""
    from engine.daemon.server import AddressInUseError

    async with open_engine(config_for(tmp_path / "a")) as first:
        port = _port(first)
        # open_engine may wrap it in an exception group (its nurseries); the leaf counts.
        with pytest.raises((AddressInUseError, BaseExceptionGroup)) as raised:
            async with open_engine(config_for(tmp_path / "b", http={"port": port})):
                pass
        error: BaseException = raised.value
        while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
            error = error.exceptions[0]
        assert isinstance(error, AddressInUseError)
        assert f"address 127.0.0.1:{port} is in use" in str(error)


async def test_an_answer_beyond_64_bits_is_answered(engine: Engine) -> None:
    """An answer holding an integer over 64 bits (a sum in a state or a query) is 200 with
    the exact number (orjson stops at 64 bits; the answer falls back to json)."""
    status, body = await _exchange(engine, get("/queries/probe/fail?error=big"))
    assert (status, body) == (200, {"n": 3 * (2**63 - 1) + 1})
