"""What only the NATS store promises: JetStream atomic batches, dedup by event id, the
stream's layout, and surviving a dropped client connection (real nats-server)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import pytest
import trio
import trio.testing

from engine.drivers.nats import NatsConnection, open_nats
from engine.drivers.nats_jetstream import JetStreamApiError, OutMsg
from engine.drivers.nats_vocabulary import EXPECTED_LAST_SUBJECT_SEQUENCE, MSG_ID
from engine.errors import ConcurrencyError, IdempotencyConflictError, StorageFullError
from engine.events import ExpectedVersion, NewEvent
from engine.stores.base import Snapshot
from engine.stores.nats import (
    MAX_ATOMIC_EVENTS,
    NatsStore,
    delete_nats_store,
    open_nats_store,
    stream_subject_token,
)
from engine.testing.contract import Counted, Note, Tally, contract_codec
from tests.conftest import NatsTarget


@pytest.fixture
async def connection(nats: NatsTarget) -> AsyncIterator[NatsConnection]:
    """A driver connection for the test; the test's namespace is deleted afterwards."""
    async with open_nats(nats.url) as conn:
        yield conn
        with trio.move_on_after(30, shield=True):
            await delete_nats_store(conn, nats.namespace)


@asynccontextmanager
async def store_on(
    connection: NatsConnection, nats: NatsTarget, **options: Any
) -> AsyncIterator[NatsStore[Any]]:
    async with open_nats_store(
        connection, contract_codec(), namespace=nats.namespace, **options
    ) as store:
        yield store


def notes(*texts: str) -> list[NewEvent[Any]]:
    return [NewEvent(Note(text)) for text in texts]


async def stream_state(connection: NatsConnection, nats: NatsTarget) -> dict[str, Any]:
    info = await connection.api(f"$JS.API.STREAM.INFO.{nats.namespace}_events")
    state: dict[str, Any] = info["state"]
    return state


# -- atomic batches ---------------------------------------------------------------------


async def test_a_stream_at_its_limits_raises_storage_full(
    connection: NatsConnection, nats: NatsTarget
) -> None:
    """Appends to an event stream at its max_msgs limit (discard new) raise StorageFullError,
    for one event and for an atomic batch alike, and store nothing."""
    async with store_on(connection, nats) as store:
        await store.append("s", notes("first"))
        stream = f"{nats.namespace}_events"
        info = await connection.api(f"$JS.API.STREAM.INFO.{stream}")
        limited = {**info["config"], "max_msgs": 1, "discard": "new"}
        await connection.api(f"$JS.API.STREAM.UPDATE.{stream}", limited)
        with pytest.raises(StorageFullError) as one:
            await store.append("s", notes("second"))
        with pytest.raises(StorageFullError):
            await store.append("t", notes("a", "b"))
        assert "maximum messages exceeded" in str(one.value)
        assert [e.data.text for e in await store.read_all()] == ["first"]


async def test_batch_failing_at_a_later_message_leaves_nothing(
    connection: NatsConnection, nats: NatsTarget
) -> None:
    """An atomic batch whose last message fails its expected-sequence check stores none
    of the messages before it."""
    async with store_on(connection, nats) as store:
        await store.append("s", notes("before"))
        before = await stream_state(connection, nats)
        subject = f"{nats.namespace}.ev.{stream_subject_token('s')}"
        other = f"{nats.namespace}.ev.{stream_subject_token('other')}"
        batch = [
            OutMsg(subject, b"one"),
            OutMsg(other, b"two"),
            OutMsg(other, b"three"),
            # A different subject from the ones before, so the server checks it.
            OutMsg(f"{nats.namespace}.key.x", b"four", {EXPECTED_LAST_SUBJECT_SEQUENCE: "7"}),
        ]
        with pytest.raises(JetStreamApiError) as info:
            await connection.publish_atomic(batch)
        after = await stream_state(connection, nats)
        assert info.value.err_code == 10071
        assert after["last_seq"] == before["last_seq"]
        assert after["messages"] == before["messages"] == 1
        assert [e.data.text for e in await store.read_all()] == ["before"]


async def test_batch_broken_off_by_an_oversized_message_leaves_nothing(
    connection: NatsConnection, nats: NatsTarget
) -> None:
    """A batch whose third message is over max_payload is never committed: the two
    messages already sent are not stored, and the connection goes on working."""
    async with store_on(connection, nats) as store:
        subject = f"{nats.namespace}.ev.{stream_subject_token('s')}"
        batch = [
            OutMsg(subject, b"one"),
            OutMsg(subject, b"two"),
            OutMsg(subject, b"x" * (connection.max_payload + 1)),
            OutMsg(subject, b"four"),
        ]
        with pytest.raises(ValueError, match="max_payload"):
            await connection.publish_atomic(batch)
        assert (await stream_state(connection, nats))["messages"] == 0
        stored = await store.append("s", notes("after"))
        assert [e.version for e in stored] == [1]
        assert await store.read_all() == stored


async def test_keyed_append_loses_the_key_race_without_writing(
    connection: NatsConnection, nats: NatsTarget
) -> None:
    """When a concurrent writer takes the idempotency key first, the other append's
    events are not stored (the key and the events are one atomic batch)."""
    async with store_on(connection, nats) as first, store_on(connection, nats) as second:
        results: list[Any] = []

        async def attempt(store: NatsStore[Any], text: str) -> None:
            try:
                results.append(await store.append(text, notes(text, text), idempotency_key="k"))
            except IdempotencyConflictError as exc:
                results.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(attempt, first, "a")
            nursery.start_soon(attempt, second, "b")
        winners = [r for r in results if isinstance(r, list)]
        assert len(winners) == 1
        everything = await first.read_all()
        assert everything == winners[0]
        assert await first.find_idempotent("k") == winners[0]


async def test_large_batch_gets_consecutive_positions(
    connection: NatsConnection, nats: NatsTarget
) -> None:
    """The largest atomic append is stored with consecutive versions and positions; a
    larger one is refused before anything is sent."""
    async with store_on(connection, nats) as store:
        events = [NewEvent(Counted(0, n)) for n in range(MAX_ATOMIC_EVENTS)]
        stored = await store.append("big", events, idempotency_key="big")
        assert [e.version for e in stored] == list(range(1, MAX_ATOMIC_EVENTS + 1))
        positions = [e.position for e in stored]
        assert positions == list(range(positions[0], positions[0] + MAX_ATOMIC_EVENTS))
        with pytest.raises(ValueError, match="at most"):
            await store.append("big", [*events, NewEvent(Counted(0, -1))])
        assert await store.load("big") == stored


async def test_conflict_reports_the_actual_version(
    connection: NatsConnection, nats: NatsTarget
) -> None:
    """A writer whose cached head is stale is refused by the server and told the real
    version."""
    async with store_on(connection, nats) as mine, store_on(connection, nats) as theirs:
        await mine.append("s", notes("a"), expected_version=0)
        await theirs.append("s", notes("b", "c"), expected_version=1)
        with pytest.raises(ConcurrencyError) as info:
            await mine.append("s", notes("x", "y"), expected_version=1)
        assert info.value.actual == 3
        assert await mine.stream_version("s") == 3


# -- dedup by event id ----------------------------------------------------------------


async def test_retried_single_event_is_stored_once(
    connection: NatsConnection, nats: NatsTarget
) -> None:
    """Appending the same event id again returns the stored event and writes nothing."""
    async with store_on(connection, nats) as store:
        event = NewEvent(Note("once"))
        first = await store.append("s", [event])
        again = await store.append("s", [event])
        assert again == first
        assert (await stream_state(connection, nats))["messages"] == 1
        stored = await connection.direct_get_last(
            f"{nats.namespace}_events", f"{nats.namespace}.ev.{stream_subject_token('s')}"
        )
        assert stored is not None
        assert stored.headers[MSG_ID] == str(event.event_id)


async def test_retried_batch_is_stored_once(connection: NatsConnection, nats: NatsTarget) -> None:
    """A multi-event append repeated with the same event ids returns the first one's
    events; JetStream refuses the duplicate batch as a whole."""
    async with store_on(connection, nats) as store:
        events = notes("a", "b", "c")
        first = await store.append("s", events)
        await store.append("s", notes("d"))
        again = await store.append("s", events, expected_version=ExpectedVersion.ANY)
        assert again == first
        assert await store.stream_version("s") == 4


async def test_event_id_reused_on_another_stream_is_refused(
    connection: NatsConnection, nats: NatsTarget
) -> None:
    """An event id already stored on one stream cannot be appended to another one."""
    async with store_on(connection, nats) as store:
        single = NewEvent(Note("one"))
        pair = notes("x", "y")
        await store.append("s", [single])
        await store.append("s", pair)
        with pytest.raises(IdempotencyConflictError) as info:
            await store.append("t", [single])
        assert info.value.original_stream_id == "s"
        with pytest.raises(IdempotencyConflictError):
            await store.append("t", pair)
        assert await store.stream_version("t") == 0


# -- layout -----------------------------------------------------------------------------


async def test_stream_layout(connection: NatsConnection, nats: NatsTarget) -> None:
    """One file-storage stream with atomic batches, direct gets and no deletes; one
    subject per event stream, whose token is never a wildcard."""
    async with store_on(connection, nats) as store:
        await store.append("a.*", notes("star"))
        info = await connection.api(f"$JS.API.STREAM.INFO.{nats.namespace}_events")
        config = info["config"]
        assert config["storage"] == "file"
        assert config["allow_atomic"] is True
        assert config["allow_direct"] is True
        assert config["deny_delete"] is True
        assert config["deny_purge"] is True
        assert config["subjects"] == [f"{nats.namespace}.ev.*", f"{nats.namespace}.key.*"]
        for bucket in ("snapshots", "checkpoints"):
            kv = await connection.api(f"$JS.API.STREAM.INFO.KV_{nats.namespace}_{bucket}")
            assert kv["config"]["storage"] == "file"
        stored = await connection.direct_get_last(
            f"{nats.namespace}_events", f"{nats.namespace}.ev.>"
        )
        assert stored is not None
        assert stored.subject == f"{nats.namespace}.ev.YS4q"
    assert stream_subject_token("a.*") == "YS4q"
    assert stream_subject_token("a.b") == "YS5i"


async def test_read_all_across_gaps(connection: NatsConnection, nats: NatsTarget) -> None:
    """Positions stay right when the stream has holes (an operator deleted messages
    before the store took the stream over)."""
    names = nats.namespace
    await connection.api(
        f"$JS.API.STREAM.CREATE.{names}_events",
        {"name": f"{names}_events", "subjects": [f"{names}.ev.*", f"{names}.key.*"]},
    )
    await connection.publish(OutMsg(f"{names}.key.junk", b"x"))
    await connection.api(f"$JS.API.STREAM.MSG.DELETE.{names}_events", {"seq": 1})
    async with store_on(connection, nats) as store:
        stored = await store.append("s", notes("a", "b"))
        assert [e.position for e in stored] == [2, 3]
        assert await store.read_all() == stored
        assert await store.read_all(after_position=2) == stored[1:]


async def test_namespace_must_be_a_plain_name(nats: NatsTarget) -> None:
    """A namespace that is not a valid stream and subject token is refused."""
    with pytest.raises(ValueError, match="namespace"):
        async with open_nats_store(nats.url, contract_codec(), namespace="a.b"):
            pass


# -- connection loss ---------------------------------------------------------------------


@asynccontextmanager
async def tcp_proxy(port: int) -> AsyncIterator[tuple[int, list[trio.CancelScope]]]:
    """A loopback TCP proxy to ``port``; cancelling a scope drops that connection."""
    scopes: list[trio.CancelScope] = []

    async def pump(source: trio.SocketStream, sink: trio.SocketStream) -> None:
        try:
            while data := await source.receive_some(65536):
                await sink.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # one side reset or closed: this connection is over, the proxy goes on

    async def handle(client: trio.SocketStream) -> None:
        with trio.CancelScope() as scope:
            scopes.append(scope)
            upstream = await trio.open_tcp_stream("127.0.0.1", port)
            async with client, upstream, trio.open_nursery() as nursery:
                nursery.start_soon(pump, client, upstream)
                nursery.start_soon(pump, upstream, client)

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, handle, 0, host="127.0.0.1"))
        yield listeners[0].socket.getsockname()[1], scopes
        nursery.cancel_scope.cancel()


async def test_store_survives_a_dropped_connection(nats: NatsTarget) -> None:
    """After the client's TCP connection is cut, the driver reconnects and the same
    store appends and reads again."""
    port = int(nats.url.rsplit(":", 1)[1])
    with trio.fail_after(60):
        async with (
            tcp_proxy(port) as (proxy_port, scopes),
            open_nats(f"nats://127.0.0.1:{proxy_port}", reconnect_time_wait=0.05) as conn,
            store_on(conn, nats) as store,
        ):
            try:
                first = await store.append("s", notes("before"))
                for scope in scopes:
                    scope.cancel()
                await conn.wait_statistics(lambda s: s.disconnects >= 1)
                await conn.wait_statistics(lambda s: s.reconnects >= 1 and s.connected)
                second = await store.append("s", notes("after"), expected_version=1)
                assert await store.load("s") == first + second
                assert conn.statistics().connected
            finally:
                with trio.move_on_after(30, shield=True):
                    await delete_nats_store(conn, nats.namespace)


async def test_a_request_in_flight_fails_at_once_when_its_connection_drops(
    nats: NatsTarget,
) -> None:
    """A request waiting for its reply when the connection is cut fails with
    ConnectionError (outcome unknown) at the disconnect, not after its 60 s timeout;
    requests sent after the reconnect are answered."""
    port = int(nats.url.rsplit(":", 1)[1])
    subject = f"{nats.namespace}.silent"
    with trio.fail_after(30):
        async with (
            tcp_proxy(port) as (proxy_port, scopes),
            open_nats(
                f"nats://127.0.0.1:{proxy_port}", reconnect_time_wait=0.05, request_timeout=60
            ) as conn,
            open_nats(nats.url) as responder,
            responder.subscribe(subject) as requests,
            trio.open_nursery() as nursery,
        ):
            failures: list[BaseException] = []
            failed = trio.Event()

            async def ask() -> None:
                try:
                    await conn.request(subject, b"anyone?")
                except ConnectionError as exc:
                    failures.append(exc)
                    failed.set()

            nursery.start_soon(ask)
            await requests.messages.receive()  # it reached the responder, which stays silent
            for scope in scopes:
                scope.cancel()
            await conn.wait_statistics(lambda s: s.disconnects >= 1)
            await conn.wait_statistics(lambda s: s.reconnects >= 1 and s.connected)
            with trio.fail_after(10):  # far below the request's own 60 s timeout
                await failed.wait()
            assert "may or may not have been applied" in str(failures[0])

            async def answer() -> None:
                request = await requests.messages.receive()
                assert request.reply
                await responder.send(request.reply, b"here")

            nursery.start_soon(answer)
            reply = await conn.request(subject, b"anyone now?")
            assert reply.data == b"here"


async def test_closed_driver_refuses_work(nats: NatsTarget) -> None:
    """A store whose connection is closed raises ClosedResourceError, not a nats-py error."""
    async with open_nats(nats.url) as conn, store_on(conn, nats) as store:
        await delete_nats_store(conn, nats.namespace)
    with pytest.raises(trio.ClosedResourceError):
        await store.append("s", notes("late"))


async def test_load_across_pages_and_after_snapshots(
    connection: NatsConnection, nats: NatsTarget
) -> None:
    """Loading a long stream interleaved with others honours after_version and limit,
    whether it scans from the start or seeks far into the stream."""
    async with store_on(connection, nats) as store:
        n = 0
        for size in (MAX_ATOMIC_EVENTS, 1, 7, 300, 1, 1, 190):
            await store.append("long", [NewEvent(Counted(0, n + i)) for i in range(size)])
            await store.append(f"other-{size}", notes("between", "and"))
            n += size
        everything = await store.load("long")
        assert [e.data.n for e in everything] == list(range(n))
        assert [e.version for e in everything] == list(range(1, n + 1))
        for after in (0, 5, 255, 256, 257, 998, 999, 1000, 1007, 1300, n - 1, n, n + 5):
            assert await store.load("long", after_version=after) == everything[after:]
            assert (
                await store.load("long", after_version=after, limit=3)
                == everything[after : after + 3]
            )


async def test_odd_checkpoint_and_snapshot_names(
    connection: NatsConnection, nats: NatsTarget
) -> None:
    """Checkpoint names and snapshot stream ids are kept apart however they look."""
    async with store_on(connection, nats) as store:
        for name in ("", "a.b", "a.*", ">"):
            await store.save_checkpoint(name, len(name), expected=None)
        assert [await store.load_checkpoint(n) for n in ("", "a.b", "a.*", ">")] == [0, 3, 3, 1]
        snapshots = store.snapshots(Tally)
        await snapshots.save_snapshot(Snapshot("a.*", 1, Tally(1)))
        assert await snapshots.load_snapshot("a.b") is None
        assert await snapshots.load_snapshot("a.*") == Snapshot("a.*", 1, Tally(1))


async def test_unreachable_server_is_a_connection_error() -> None:
    """Opening the driver against a port nobody listens on fails with ConnectionError."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound but not listening: connections are refused
        with pytest.raises(ConnectionError, match="cannot connect"):
            async with open_nats(f"nats://127.0.0.1:{port}", connect_timeout=0.5):
                pass


async def test_read_all_reads_past_pages_of_key_records(
    connection: NatsConnection, nats: NatsTarget
) -> None:
    """Key records of empty appends share the log but never end a read early."""
    async with store_on(connection, nats) as store:
        for n in range(5):
            assert await store.append("s", [], idempotency_key=f"noop-{n}") == []
        stored = await store.append("s", notes("real"))
        assert await store.read_all(limit=2) == stored
        assert await store.head_position() == stored[0].position
        assert await store.find_idempotent("noop-3") == []


async def test_cancelled_jobs_leave_the_driver_usable(nats: NatsTarget) -> None:
    """A Trio caller cancelled before or while its job runs on the asyncio side
    abandons it cleanly; the connection keeps serving."""
    async with open_nats(nats.url) as conn:
        with trio.CancelScope() as early:
            early.cancel()
            await conn.run(lambda _: asyncio.sleep(0))
        async with trio.open_nursery() as nursery:
            scope = trio.CancelScope()

            async def sleeper() -> None:
                with scope:
                    await conn.run(lambda _: asyncio.sleep(3600))

            nursery.start_soon(sleeper)
            await trio.testing.wait_all_tasks_blocked()
            assert conn.statistics().jobs_in_flight == 1
            scope.cancel()
        assert conn.statistics().jobs_in_flight == 0
        assert (await conn.api("$JS.API.INFO"))[
            "type"
        ] == "io.nats.jetstream.api.v1.account_info_response"
