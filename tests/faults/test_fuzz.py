"""Hostile input, fuzzed with Hypothesis: HTTP bodies and raw requests against a running
engine, config documents, stored payloads, stream ids, and sizes at and over the limits.

Each input gets a typed error or a documented normalisation; the engine keeps serving;
nothing partial is written. Hypothesis runs in a worker thread (joined by
``trio.to_thread``) and calls back into the test's Trio loop for I/O, so one engine and
one store serve every example.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import attrs
import hypothesis.strategies as st
import pytest
import trio
from hypothesis import HealthCheck, given, settings

from engine.daemon.config import Config, parse_config
from engine.daemon.engine import Engine, open_engine
from engine.errors import (
    CodecError,
    ConfigError,
    EventTooLargeError,
    InvalidStreamIdError,
    UnknownEventTypeError,
)
from engine.events import MAX_STREAM_ID_BYTES, NewEvent, validate_stream_id
from engine.stores.sqlite import open_sqlite_store
from tests.daemon.test_engine import config_for, http
from tests.faults.ledger import Entry, fault_codec

FAST, SLOW = 400, 5000
TIERS = [FAST, pytest.param(SLOW, marks=pytest.mark.slow)]
MAX_BODY = 4096
COMMANDS = ("OpenAccount", "Deposit", "Withdraw", "Nope")


@attrs.frozen
class Blob:
    """An event whose size the test chooses."""

    text: str


def _settings(examples: int) -> settings:
    return settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


async def _hypothesis(
    examples: int, strategy: st.SearchStrategy[Any], check: Callable[[Any], None]
) -> None:
    """Run ``check`` on ``examples`` inputs in a worker thread."""

    def run() -> None:
        given(strategy)(_settings(examples)(check))()

    await trio.to_thread.run_sync(run)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
command_bodies = st.fixed_dictionaries(
    {},
    optional={
        "stream_id": st.text(max_size=40) | json_values,
        "command_id": st.text(max_size=10) | json_values,
        "data": st.fixed_dictionaries(
            {},
            optional={
                "amount": st.integers() | json_values,
                "initial_balance": st.integers() | json_values,
            },
        )
        | json_values,
    },
)
raw_bodies = (
    st.binary(max_size=MAX_BODY + 200)
    | command_bodies.map(lambda body: json.dumps(body).encode())
    | json_values.map(lambda value: json.dumps(value).encode())
)


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[Engine]:
    # A request declaring a body it never sends waits for body_timeout, then gets 408:
    # short timeouts keep such examples within the client's 10 s guard.
    http = {"max_body_bytes": MAX_BODY, "body_timeout": 2.0, "header_timeout": 2.0}
    async with open_engine(config_for(tmp_path, http=http)) as running:
        yield running


@pytest.mark.parametrize("examples", TIERS)
async def test_http_bodies(engine: Engine, examples: int) -> None:
    """Hostile command bodies get 2xx or a typed 4xx; only accepted commands write."""
    base = engine.http_urls[0]
    accepted: set[str] = set()
    statuses: dict[int, int] = {}

    def check(case: tuple[str, bytes]) -> None:
        command, raw = case
        status, body = trio.from_thread.run(
            lambda: http(f"{base}/commands/bank/{command}", method="POST", raw=raw)
        )
        statuses[status] = statuses.get(status, 0) + 1
        assert status < 500, (status, body)
        if status == 200:
            accepted.add(json.loads(raw)["stream_id"])
        else:
            assert isinstance(body["error"]["code"], str), body

    await _hypothesis(examples, st.tuples(st.sampled_from(COMMANDS), raw_bodies), check)
    status, _ = await http(
        f"{base}/commands/bank/OpenAccount",
        method="POST",
        body={"stream_id": "still-serving", "data": {"initial_balance": 1}},
    )
    assert status == 200
    accepted.add("still-serving")
    events = await engine.store.read_all(limit=100_000)
    assert {event.stream_id for event in events} <= accepted


http_tokens = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=12)
header_values = st.binary(max_size=60)


@pytest.mark.parametrize("examples", TIERS)
async def test_raw_http_requests(engine: Engine, examples: int) -> None:
    """Malformed request lines and headers get a 4xx (or the connection is closed);
    never a 5xx, and the engine keeps answering."""
    host, port = engine.http_urls[0].removeprefix("http://").rsplit(":", 1)

    async def send(raw: bytes) -> bytes:
        stream = await trio.open_tcp_stream(host, int(port))
        async with stream:
            try:
                await stream.send_all(raw)
                reply = b""
                with trio.fail_after(10):
                    while chunk := await stream.receive_some(65536):
                        reply += chunk
            except trio.BrokenResourceError:
                pass  # the server closed on us mid-send: it refused the request
        return reply

    def check(case: tuple[str, str, list[tuple[str, bytes]], bytes]) -> None:
        method, path, headers, body = case
        raw = f"{method} /{path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n".encode()
        raw += b"".join(name.encode() + b": " + value + b"\r\n" for name, value in headers)
        raw += b"\r\n" + body
        reply = trio.from_thread.run(send, raw)
        if reply:
            status = int(reply.split(b" ", 2)[1])
            assert status < 500, reply[:300]

    cases = st.tuples(
        st.sampled_from(["GET", "POST", "PUT", "HEAD", "OPTIONS"]) | http_tokens,
        st.sampled_from(["commands/bank/Deposit", "streams/a", "events", "queries/bank/balance"])
        | st.text(max_size=30).map(lambda text: text.replace(" ", "%20")),
        st.lists(
            st.tuples(
                http_tokens | st.sampled_from(["content-length", "authorization"]), header_values
            ),
            max_size=5,
        ),
        st.binary(max_size=200),
    )
    await _hypothesis(examples, cases, check)
    status, body = await http(f"{engine.http_urls[0]}/health/live")
    assert (status, body) == (200, {"status": "live"})


toml_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
config_sections = st.sampled_from(
    ["engine", "store", "nats", "bus", "locks", "cluster", "http", "plugins", "runners", "x"]
)
config_keys = st.sampled_from(
    [
        "backend",
        "data_dir",
        "port",
        "host",
        "dsn",
        "url",
        "node_id",
        "token",
        "max_body_bytes",
        "poll_interval",
        "grace_period",
        "embedded",
        "enabled",
        "names",
        "pool_size",
        "x",
    ]
) | st.text(max_size=10)
config_documents = st.dictionaries(
    config_sections | st.text(max_size=8),
    st.dictionaries(config_keys, toml_scalars | st.lists(toml_scalars, max_size=3), max_size=5)
    | toml_scalars,
    max_size=5,
)


@pytest.mark.parametrize("examples", TIERS)
async def test_config_documents(examples: int) -> None:
    """parse_config returns a Config or raises ConfigError, and nothing else."""

    def check(document: dict[str, Any]) -> None:
        try:
            config = parse_config(document, environ={})
        except ConfigError:
            return
        assert isinstance(config, Config)

    await _hypothesis(examples, config_documents, check)


@pytest.mark.parametrize("examples", TIERS)
async def test_stored_payloads(examples: int) -> None:
    """Corrupt, truncated, unknown-type and wrong-version payloads raise CodecError."""
    codec = fault_codec()
    good = codec.encode(Entry(1, 2))

    def check(case: tuple[str, int, bytes]) -> None:
        type_name, version, data = case
        try:
            decoded = codec.decode(type_name, version, data)
        except CodecError:
            return
        assert (type_name, version) == ("faults.Entry", 1)
        assert isinstance(decoded, Entry)

    payloads = (
        st.binary(max_size=100)
        | st.integers(0, len(good.data)).map(lambda n: good.data[:n])
        | json_values.map(lambda value: json.dumps(value).encode())
        | st.just(good.data)
    )
    cases = st.tuples(
        st.sampled_from(["faults.Entry", "faults.Gone", ""]) | st.text(max_size=10),
        st.sampled_from([1, 0, 2, -1]) | st.integers(),
        payloads,
    )
    await _hypothesis(examples, cases, check)
    with pytest.raises(UnknownEventTypeError):
        codec.decode("faults.Gone", 1, good.data)
    with pytest.raises(CodecError):
        codec.decode("faults.Entry", 2, good.data)


@pytest.mark.parametrize("examples", TIERS)
async def test_stream_ids_round_trip(tmp_path: Path, examples: int) -> None:
    """A stream id is refused with InvalidStreamIdError or stored and read back verbatim."""
    async with open_sqlite_store(tmp_path / "ids.db", fault_codec()) as store:
        refused = 0

        async def round_trip(stream_id: str) -> None:
            nonlocal refused
            try:
                validate_stream_id(stream_id)
            except InvalidStreamIdError:
                refused += 1
                with pytest.raises(InvalidStreamIdError):
                    await store.append(stream_id, [NewEvent(Entry(0, 0))])
                return
            stored = await store.append(stream_id, [NewEvent(Entry(0, 0))])
            loaded = await store.load(stream_id)
            assert loaded[-1].event_id == stored[0].event_id
            assert loaded[-1].stream_id == stream_id

        ids = st.text(max_size=40) | st.text(
            min_size=MAX_STREAM_ID_BYTES // 4 - 2, max_size=MAX_STREAM_ID_BYTES // 2 + 2
        )
        before = await store.head_position()
        await _hypothesis(
            examples, ids, lambda stream_id: trio.from_thread.run(round_trip, stream_id)
        )
        events = await store.read_all(after_position=before, limit=100_000)
        assert all(validate_stream_id(e.stream_id) == e.stream_id for e in events)


async def test_sizes_at_and_over_the_limits(tmp_path: Path) -> None:
    """Stream ids and events exactly at the limit are stored; one byte over is refused
    with a typed error and nothing of the batch is written."""
    codec = fault_codec()
    codec.registry.register(Blob, name="faults.Blob")
    limit = 4096
    async with open_sqlite_store(tmp_path / "sizes.db", codec, max_event_bytes=limit) as store:
        at_limit = "x" * MAX_STREAM_ID_BYTES
        await store.append(at_limit, [NewEvent(Entry(0, 0))])
        with pytest.raises(InvalidStreamIdError):
            await store.append(at_limit + "x", [NewEvent(Entry(0, 0))])
        with pytest.raises(InvalidStreamIdError):
            await store.append("\u00e9" * (MAX_STREAM_ID_BYTES // 2) + "x", [NewEvent(Entry(0, 0))])
        # Data plus metadata count; empty metadata is stored as "{}".
        overhead = len(codec.encode(Blob("")).data) + len(b"{}")
        fits = NewEvent(Blob("y" * (limit - overhead)))
        stored = await store.append("sized", [fits])
        assert stored[0].data == fits.data
        head = await store.head_position()
        with pytest.raises(EventTooLargeError):
            await store.append(
                "sized", [NewEvent(Blob("ok")), NewEvent(Blob("y" * (limit - overhead + 1)))]
            )
        assert await store.head_position() == head
        assert len(await store.load("sized")) == 1
