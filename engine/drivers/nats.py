"""The NATS driver: the one place nats-py connections are opened, bridged to Trio and closed.

nats-py is an asyncio library. It runs here on a private asyncio loop in one side thread
that :func:`open_nats` starts and joins; Trio code hands it whole *jobs* (one JetStream
publish, one atomic batch, one batched direct get) and waits for the result without
blocking the Trio loop. Jobs cross the bridge in bursts: one wake-up per burst and
direction, however many Trio tasks submit at once.

Why not trio-asyncio: measured on the 2-core dev VM (``benchmarks/nats_store_quick.py``
and ad-hoc runs against a memory stream), JetStream publish+ack per second, raw asyncio /
this driver / trio-asyncio: one caller 4.6k / 2.5k / 2.4k; 64 concurrent callers 33k /
15.5k / 5.7k. Reading 100k bare payloads by batched direct gets: about 100k/s both
in raw asyncio and through this driver. The price of the side thread is about 65-100 µs
per job (two thread wake-ups) and GIL hand-offs when both threads are busy, so adapters
cross once per batch or page, never once per event.

Errors: nats-py's exceptions never leave this module. Timeouts become the builtin
:class:`TimeoutError`, a closed or unusable connection :class:`ConnectionError` (or
:class:`trio.ClosedResourceError` once the driver is closed), and a JetStream API error
reply :class:`JetStreamApiError` with the server's codes, which adapters translate into
engine errors.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import functools
import hashlib
import itertools
import logging
import math
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping, Sequence
from typing import Any, TypeVar

import attrs
import nats
import nats.errors
import orjson
import trio
from nats.aio.client import Client
from nats.aio.msg import Msg

from engine.groups import unwrap_lone_errors

__all__ = [
    "BATCH_COMMIT",
    "BATCH_ID",
    "BATCH_SEQUENCE",
    "DEFAULT_TIMEOUT",
    "EXPECTED_LAST_SUBJECT_SEQUENCE",
    "MAX_TOKEN_LENGTH",
    "MSG_ID",
    "DirectBatch",
    "InMsg",
    "JetStreamApiError",
    "NatsConnection",
    "NatsStatistics",
    "NoRespondersError",
    "OutMsg",
    "PubAck",
    "StoredMsg",
    "Subscription",
    "bounded_subject_token",
    "open_nats",
]

#: The longest subject token :func:`bounded_subject_token` makes (longer text is hashed).
MAX_TOKEN_LENGTH = 200


def bounded_subject_token(text: str) -> str:
    """``text`` as one subject token: base64url of its UTF-8 bytes (lone surrogates
    kept), or ``=`` and the base64url of its SHA-256 when that would exceed
    :data:`MAX_TOKEN_LENGTH`. Base64url never produces ``=`` unpadded, so a digest cannot
    meet a plain token; the empty text is ``=`` alone."""
    raw = text.encode("utf-8", "surrogatepass")
    token = base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")
    if not token:
        return "="
    if len(token) > MAX_TOKEN_LENGTH:
        digest = hashlib.sha256(raw).digest()
        return "=" + base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")
    return token


T = TypeVar("T")

log = logging.getLogger(__name__)

#: Seconds a single request (publish acknowledgement, API call, batch read) may take.
DEFAULT_TIMEOUT = 10.0
#: Seconds to wait between reconnect attempts; the driver retries forever by default.
DEFAULT_RECONNECT_WAIT = 0.5
#: Seconds the driver gives nats-py to flush and close, and the side thread to end.
CLOSE_GRACE = 5.0
#: Bytes a batched direct get may return per request (the server's default is 64 MiB).
DIRECT_BATCH_MAX_BYTES = 16 * 1024 * 1024

MSG_ID = "Nats-Msg-Id"
EXPECTED_LAST_SUBJECT_SEQUENCE = "Nats-Expected-Last-Subject-Sequence"
BATCH_ID = "Nats-Batch-Id"
BATCH_SEQUENCE = "Nats-Batch-Sequence"
BATCH_COMMIT = "Nats-Batch-Commit"
_STATUS = "Status"
_SEQUENCE = "Nats-Sequence"
_SUBJECT = "Nats-Subject"
_LAST_SEQUENCE = "Nats-Last-Sequence"
_NUM_PENDING = "Nats-Num-Pending"


class JetStreamApiError(RuntimeError):
    """The JetStream API answered a request with an error.

    Attributes:
        code: The HTTP-like status (400, 404, 429, 503...).
        err_code: JetStream's own error code (10071 = wrong last sequence, ...).
        description: The server's text.
    """

    def __init__(self, code: int, err_code: int, description: str) -> None:
        super().__init__(code, err_code, description)
        self.code = code
        self.err_code = err_code
        self.description = description

    def __str__(self) -> str:
        return f"JetStream error {self.err_code} ({self.code}): {self.description}"


class NoRespondersError(ConnectionError):
    """Nobody subscribes to a request's subject: the request was certainly not handled."""


@attrs.frozen
class InMsg:
    """A core NATS message received by a :meth:`NatsConnection.subscribe` subscription.

    Attributes:
        subject: Where it was published.
        data: The payload.
        headers: Its headers (empty when it had none).
        reply: Where an answer goes (``""`` when the sender expects none).
    """

    subject: str
    data: bytes
    headers: Mapping[str, str]
    reply: str


@attrs.define(eq=False)
class Subscription:
    """A subscription's Trio end: a bounded channel of :class:`InMsg` and a drop count.

    Attributes:
        messages: Receive the messages here (``async for msg in sub.messages``).
        dropped: Messages thrown away because ``messages`` was full (a slow consumer
            never slows the connection down; the sender of a dropped request times out).
    """

    messages: trio.MemoryReceiveChannel[InMsg]
    dropped: int = 0


@attrs.frozen
class OutMsg:
    """A message to publish: subject, payload and headers."""

    subject: str
    data: bytes
    headers: Mapping[str, str] = attrs.field(factory=dict)


@attrs.frozen
class PubAck:
    """JetStream's acknowledgement of a stored message (of a batch's last message)."""

    stream: str
    sequence: int
    duplicate: bool = False
    count: int = 1


@attrs.frozen
class StoredMsg:
    """A message read back from a stream with its subject and stream sequence."""

    subject: str
    sequence: int
    data: bytes
    headers: Mapping[str, str]


@attrs.frozen
class DirectBatch:
    """One batched direct get: the payloads, their headers, and where the batch ended.

    Attributes:
        data: The payloads, in stream order.
        headers: Each message's headers (with ``Nats-Sequence``), or ``None`` when the
            batch was read without headers.
        last_sequence: The stream sequence of the last message sent (0 if none).
        num_pending: Matching messages left in the stream after this batch, or
            ``None`` for a batch read without headers (nats-server 2.15 then reports
            the count from before the batch).
    """

    data: list[bytes]
    headers: list[Mapping[str, str]] | None
    last_sequence: int
    num_pending: int | None


@attrs.frozen
class NatsStatistics:
    """The connection's health, for health checks and metrics."""

    connected: bool
    reconnects: int
    disconnects: int
    jobs_in_flight: int
    max_payload: int


@attrs.define
class _Counters:
    disconnects: int = 0
    reconnects: int = 0
    jobs_in_flight: int = 0


@attrs.define(eq=False)
class _Job:
    """One coroutine handed from Trio to the asyncio loop, and its outcome."""

    coroutine: Coroutine[Any, Any, Any]
    done: trio.Event = attrs.field(factory=trio.Event)
    task: asyncio.Task[Any] | None = None
    result: Any = None
    error: BaseException | None = None
    abandoned: bool = False
    # A request whose reply can only come on the connection it was sent on fails as
    # soon as that connection is lost (instead of waiting out its timeout).
    fail_on_disconnect: bool = True
    lost: bool = False


@attrs.define(eq=False)
class NatsConnection:
    """One nats-py client on its own asyncio loop; Trio tasks submit jobs to it.

    Get one from :func:`open_nats`. All methods may be called from any number of Trio
    tasks at once; nats-py multiplexes them over one TCP connection.
    """

    _loop: asyncio.AbstractEventLoop
    _token: trio.lowlevel.TrioToken
    _timeout: float
    _client: Client | None = None
    _closed: bool = False
    _counters: _Counters = attrs.field(factory=_Counters)
    # Batched direct gets answer on one long-lived wildcard inbox; only the asyncio
    # thread touches these two.
    _inbox: str = ""
    _batches: dict[str, tuple[asyncio.Future[Msg], list[Msg]]] = attrs.field(factory=dict)
    _tokens: itertools.count[int] = attrs.field(factory=itertools.count)
    # Set (and replaced) on the Trio thread whenever the connection state changes.
    _changed: trio.Event = attrs.field(factory=trio.Event)
    # The bridge: jobs cross in bursts, with one wake-up per burst and direction (not
    # one per job), so that concurrent callers share the cost of waking a thread.
    _to_loop: collections.deque[_Job] = attrs.field(factory=collections.deque)
    _loop_wakeup_pending: bool = False
    _to_trio: collections.deque[_Job] = attrs.field(factory=collections.deque)
    # Jobs running on the asyncio loop (touched only in the asyncio thread).
    _running: set[_Job] = attrs.field(factory=set)
    _trio_wakeup_pending: bool = False

    @property
    def max_payload(self) -> int:
        """The largest message (headers plus payload) the server accepts."""
        return self._require_client().max_payload

    def statistics(self) -> NatsStatistics:
        """The connection's state and counters."""
        client = self._client
        return NatsStatistics(
            connected=bool(client is not None and client.is_connected),
            reconnects=self._counters.reconnects,
            disconnects=self._counters.disconnects,
            jobs_in_flight=self._counters.jobs_in_flight,
            max_payload=client.max_payload if client is not None else 0,
        )

    async def wait_statistics(self, predicate: Callable[[NatsStatistics], bool]) -> NatsStatistics:
        """Wait until ``predicate(self.statistics())`` holds (e.g. a reconnect happened).

        Returns:
            The statistics that satisfied ``predicate``.
        """
        while not predicate(current := self.statistics()):
            await self._changed.wait()
        return current

    def _note_change(self) -> None:
        changed, self._changed = self._changed, trio.Event()
        changed.set()

    def _note_change_threadsafe(self) -> None:
        with contextlib.suppress(trio.RunFinishedError):
            self._token.run_sync_soon(self._note_change)

    async def run(
        self, job: Callable[[Client], Awaitable[T]], *, fail_on_disconnect: bool = True
    ) -> T:
        """Run ``job(client)`` on the driver's asyncio loop and return its result.

        The Trio task waits without blocking the Trio loop. If it is cancelled, the
        asyncio side is cancelled too (whether a request already reached the server is
        then unknown, as with any lost reply). If the connection is lost while the job
        runs, it fails at once with :class:`ConnectionError` (a reply to a request sent
        on the lost connection cannot arrive on the next one), unless
        ``fail_on_disconnect`` is false.

        Raises:
            trio.ClosedResourceError: The driver is closed.
            TimeoutError: A request timed out.
            ConnectionError: The connection is closed or cannot take the request.
        """
        if self._closed:
            raise trio.ClosedResourceError("the NATS connection is closed")
        client = self._require_client()
        return await self._submit(self._guarded(job, client), fail_on_disconnect)

    async def _submit(self, coroutine: Coroutine[Any, Any, T], fail_on_disconnect: bool) -> T:
        job = _Job(coroutine, fail_on_disconnect=fail_on_disconnect)
        self._to_loop.append(job)
        if not self._loop_wakeup_pending:
            self._loop_wakeup_pending = True
            self._loop.call_soon_threadsafe(self._start_jobs)
        self._counters.jobs_in_flight += 1
        try:
            await job.done.wait()
        finally:
            self._counters.jobs_in_flight -= 1
            if not job.done.is_set():
                job.abandoned = True
                self._loop.call_soon_threadsafe(self._cancel_job, job)
        if job.error is not None:
            raise job.error
        result: T = job.result
        return result

    # The flags are written by both threads; each side clears its flag *before* it
    # drains its queue, so a job appended after the drain always gets a wake-up.

    def _start_jobs(self) -> None:  # asyncio thread
        self._loop_wakeup_pending = False
        while self._to_loop:
            job = self._to_loop.popleft()
            if job.abandoned:
                job.coroutine.close()
                continue
            job.task = self._loop.create_task(job.coroutine)
            job.task.add_done_callback(functools.partial(self._job_done, job))
            self._running.add(job)

    def _fail_in_flight(self) -> None:  # asyncio thread, on disconnect
        for job in list(self._running):
            if job.fail_on_disconnect and job.task is not None and not job.task.done():
                job.lost = True
                job.task.cancel()

    def _cancel_job(self, job: _Job) -> None:  # asyncio thread
        if job.task is not None:
            job.task.cancel()

    def _job_done(self, job: _Job, task: asyncio.Task[Any]) -> None:  # asyncio thread
        self._running.discard(job)
        if task.cancelled() and job.lost:
            job.error = ConnectionError(
                "the NATS connection was lost while the request was in flight: "
                "it may or may not have been applied"
            )
        elif task.cancelled():
            job.error = trio.ClosedResourceError("the NATS job was cancelled")
        elif (error := task.exception()) is not None:
            job.error = error
        else:
            job.result = task.result()
        self._to_trio.append(job)
        if not self._trio_wakeup_pending:
            self._trio_wakeup_pending = True
            with contextlib.suppress(trio.RunFinishedError):
                self._token.run_sync_soon(self._finish_jobs)

    def _finish_jobs(self) -> None:  # Trio thread
        self._trio_wakeup_pending = False
        while self._to_trio:
            self._to_trio.popleft().done.set()

    def _close_unstarted(self) -> None:
        """After the loop thread ended: jobs that never reached it will not run."""
        while self._to_loop:
            self._to_loop.popleft().coroutine.close()

    async def request(
        self,
        subject: str,
        data: bytes = b"",
        *,
        headers: Mapping[str, str] | None = None,
    ) -> StoredMsg:
        """Send a core NATS request and return the reply (``sequence`` is 0).

        Args:
            subject: Where the request goes.
            data: Its payload.
            headers: Its headers.

        A shorter wait than the connection's ``request_timeout`` is a Trio deadline
        around the call.

        Raises:
            NoRespondersError: Nobody subscribes to ``subject`` (nothing was handled).
            TimeoutError: No reply in time (whether it was handled is unknown).
        """
        wait = self._timeout

        async def job(client: Client) -> StoredMsg:
            msg = await client.request(
                subject, data, timeout=wait, headers=dict(headers) if headers else None
            )
            return StoredMsg(msg.subject, 0, msg.data, msg.headers or {})

        return await self.run(job)

    async def send(
        self,
        subject: str,
        data: bytes = b"",
        *,
        headers: Mapping[str, str] | None = None,
        reply: str = "",
    ) -> None:
        """Publish one core NATS message (no acknowledgement; also answers a request
        when ``subject`` is the request's :attr:`InMsg.reply`)."""

        async def job(client: Client) -> None:
            await client.publish(
                subject, data, reply=reply, headers=dict(headers) if headers else None
            )

        await self.run(job)

    @contextlib.asynccontextmanager
    async def subscribe(
        self, subject: str, *, queue: str = "", buffer_size: int = 256
    ) -> AsyncIterator[Subscription]:
        """Receive the core NATS messages on ``subject`` while the block is open.

        Args:
            subject: The subject (wildcards allowed).
            queue: A queue group: each message goes to one member of the group.
            buffer_size: Messages that may wait in the Trio channel; later ones are
                dropped (counted in :attr:`Subscription.dropped`) until it drains.

        Resource handling:
            The subscription survives reconnects (nats-py subscribes again). Messages
            cross to Trio in bursts (one wake-up per burst). On exit the subscription
            is removed (shielded, bounded) and the channel closed.
        """
        send_channel, receive_channel = trio.open_memory_channel[InMsg](buffer_size)
        handle = Subscription(receive_channel)
        arrived: collections.deque[InMsg] = collections.deque()
        wakeup = [False]
        token = self._token

        def deliver() -> None:  # Trio thread
            wakeup[0] = False
            while arrived:
                msg = arrived.popleft()
                try:
                    send_channel.send_nowait(msg)
                except trio.WouldBlock:
                    handle.dropped += 1
                except (trio.ClosedResourceError, trio.BrokenResourceError):
                    # The block is exiting: closing the receive side checkpoints before
                    # the send side closes, and a burst may land in between.
                    arrived.clear()

        async def on_message(msg: Msg) -> None:  # asyncio thread
            arrived.append(InMsg(msg.subject, msg.data, msg.headers or {}, msg.reply or ""))
            if not wakeup[0]:
                wakeup[0] = True
                with contextlib.suppress(trio.RunFinishedError):
                    token.run_sync_soon(deliver)

        async def start(client: Client) -> Any:
            # No nats-py pending limits: the Trio channel's bound is the one that counts.
            return await client.subscribe(
                subject,
                queue=queue,
                cb=on_message,
                pending_msgs_limit=0,
                pending_bytes_limit=0,
            )

        sub = await self.run(start, fail_on_disconnect=False)
        try:
            async with send_channel, receive_channel:
                yield handle
        finally:

            async def stop(_: Client) -> None:
                with contextlib.suppress(nats.errors.Error):
                    await sub.unsubscribe()

            with trio.move_on_after(CLOSE_GRACE, shield=True):
                with contextlib.suppress(trio.ClosedResourceError, ConnectionError):
                    await self.run(stop, fail_on_disconnect=False)

    async def flush(self) -> None:
        """Wait until everything sent so far has reached the server (a PING/PONG).

        A :meth:`subscribe` block entered before is then in effect at the server, so
        messages that *other* connections publish from now on are delivered to it.

        Raises:
            TimeoutError: No PONG within the request timeout.
        """
        wait = self._timeout

        async def job(client: Client) -> None:
            await client.flush(timeout=max(1, math.ceil(wait)))

        await self.run(job)

    async def api(self, subject: str, body: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Call a JetStream API subject (``$JS.API....``) and return the parsed reply.

        Raises:
            JetStreamApiError: The server answered with an error.
        """
        payload = orjson.dumps(body) if body is not None else b""
        reply = await self.request(subject, payload)
        return _parse_api_reply(reply.data)

    async def publish(self, message: OutMsg) -> PubAck:
        """Publish one message to a JetStream stream and wait for its acknowledgement.

        Raises:
            JetStreamApiError: The stream refused the message.
        """
        wait = self._timeout

        async def job(client: Client) -> bytes:
            reply = await client.request(
                message.subject,
                message.data,
                timeout=wait,
                headers=dict(message.headers) if message.headers else None,
            )
            return reply.data

        return _parse_pub_ack(await self.run(job))

    async def publish_atomic(self, messages: Sequence[OutMsg]) -> PubAck:
        """Publish ``messages`` as one JetStream atomic batch (ADR-50): all or none.

        The stream must allow atomic publishing (``allow_atomic``). Every message is
        written to the socket back to back; only the commit (the last message) is a
        request, and its acknowledgement carries the last message's sequence. The
        batch's messages get consecutive sequences. A failure anywhere (a header check
        at commit, a message the server refuses, a client-side error before the
        commit) leaves no message of the batch in the stream: the server drops an
        uncommitted batch.

        Raises:
            JetStreamApiError: The server refused the batch (nothing was stored).
            ValueError: ``messages`` is empty.
        """
        if not messages:
            raise ValueError("an atomic batch needs at least one message")
        wait = self._timeout
        last = len(messages)

        async def job(client: Client) -> bytes:
            batch_id = uuid.uuid4().hex  # the server allows up to 64 characters
            for number, message in enumerate(messages, 1):
                headers = {
                    **message.headers,
                    BATCH_ID: batch_id,
                    BATCH_SEQUENCE: str(number),
                }
                if number < last:
                    await client.publish(message.subject, message.data, headers=headers)
                else:
                    headers[BATCH_COMMIT] = "1"
                    reply = await client.request(
                        message.subject, message.data, timeout=wait, headers=headers
                    )
                    return reply.data
            raise AssertionError("unreachable")

        return _parse_pub_ack(await self.run(job))

    async def direct_get_last(self, stream: str, subject: str) -> StoredMsg | None:
        """The last message on ``subject`` (wildcards allowed), or ``None``.

        Uses the stream's direct get API (``allow_direct``).
        """
        reply = await self.request(f"$JS.API.DIRECT.GET.{stream}.{subject}")
        return _stored_or_none(reply)

    async def direct_get(self, stream: str, sequence: int) -> StoredMsg | None:
        """The message at ``sequence``, or ``None`` if there is none."""
        reply = await self.request(f"$JS.API.DIRECT.GET.{stream}", orjson.dumps({"seq": sequence}))
        return _stored_or_none(reply)

    async def direct_get_batch(
        self,
        stream: str,
        *,
        start: int,
        batch: int,
        subject: str,
        headers: bool = True,
        max_bytes: int = DIRECT_BATCH_MAX_BYTES,
    ) -> DirectBatch:
        """Up to ``batch`` messages on ``subject`` from sequence ``start`` on, in one request.

        Args:
            stream: The stream (``allow_direct`` must be on).
            start: The first sequence to consider.
            batch: The most messages to return.
            subject: The subject filter (wildcards allowed).
            headers: Without headers the server sends bare payloads, which is
                about twice as fast to receive in nats-py; sequences must then be
                inferred by the caller (see :attr:`DirectBatch.last_sequence`).
            max_bytes: Stop once this many bytes were sent.
        """
        body: dict[str, Any] = {
            "seq": max(start, 1),
            "batch": batch,
            "next_by_subj": subject,
            "max_bytes": max_bytes,
        }
        if not headers:
            body["no_hdr"] = True
        return await self._direct_batch(stream, body, headers=headers)

    async def direct_get_last_before(
        self, stream: str, subject: str, sequence: int
    ) -> StoredMsg | None:
        """The last message on ``subject`` at or before ``sequence``, or ``None``."""
        body = {"multi_last": [subject], "up_to_seq": sequence, "batch": 1}
        batch = await self._direct_batch(stream, body, headers=True)
        if not batch.data:
            return None
        assert batch.headers is not None
        headers = batch.headers[0]
        return StoredMsg(headers[_SUBJECT], int(headers[_SEQUENCE]), batch.data[0], headers)

    async def _direct_batch(
        self, stream: str, body: Mapping[str, Any], *, headers: bool
    ) -> DirectBatch:
        """One batched direct get: the replies stream to the shared inbox until EOB."""
        wait = self._timeout
        request = orjson.dumps(body)

        async def job(client: Client) -> tuple[list[Msg], Msg]:
            token = str(next(self._tokens))
            end: asyncio.Future[Msg] = self._loop.create_future()
            received: list[Msg] = []
            self._batches[token] = (end, received)
            try:
                await client.publish(
                    f"$JS.API.DIRECT.GET.{stream}", request, reply=f"{self._inbox}.{token}"
                )
                return received, await asyncio.wait_for(end, wait)
            finally:
                del self._batches[token]

        messages, end = await self.run(job)
        status = end.headers.get(_STATUS) if end.headers else None
        if status == "404":
            return DirectBatch([], [] if headers else None, 0, 0)
        if status != "204":
            description = (end.headers or {}).get("Description", "")
            raise JetStreamApiError(int(status or 0), 0, f"direct get failed: {description}")
        assert end.headers is not None
        return DirectBatch(
            data=[msg.data for msg in messages],
            headers=[msg.headers or {} for msg in messages] if headers else None,
            last_sequence=int(end.headers.get(_LAST_SEQUENCE, 0)),
            num_pending=int(end.headers.get(_NUM_PENDING, 0)) if headers else None,
        )

    # -- asyncio side -----------------------------------------------------------------

    async def _guarded(self, job: Callable[[Client], Awaitable[T]], client: Client) -> T:
        try:
            return await job(client)
        except nats.errors.TimeoutError as exc:
            raise TimeoutError(f"NATS request timed out ({type(exc).__name__})") from None
        except nats.errors.MaxPayloadError:
            raise ValueError(
                f"message over the server's max_payload of {client.max_payload} bytes"
            ) from None
        except (nats.errors.BadSubjectError, nats.errors.BadHeaderError) as exc:
            raise ValueError(f"invalid NATS subject or header: {exc!r}") from None
        except nats.errors.NoRespondersError:
            raise NoRespondersError(
                "no responders (is JetStream enabled, and does the stream exist?)"
            ) from None
        except nats.errors.Error as exc:
            raise ConnectionError(f"NATS connection error: {type(exc).__name__}: {exc}") from None
        except TimeoutError:
            raise TimeoutError("NATS request timed out") from None

    async def _on_batch_message(self, msg: Msg) -> None:
        entry = self._batches.get(msg.subject[len(self._inbox) + 1 :])
        if entry is None:
            return  # the request gave up (timeout or cancellation)
        end, received = entry
        if not msg.data and msg.headers and _STATUS in msg.headers:
            if not end.done():
                end.set_result(msg)
        else:
            received.append(msg)

    async def _connect(
        self, url: str | list[str], options: dict[str, Any], connect_timeout: float
    ) -> None:
        counters = self._counters
        note_change = self._note_change_threadsafe

        async def on_error(exc: Exception) -> None:
            log.warning("NATS client error: %r", exc)

        async def on_disconnect() -> None:
            counters.disconnects += 1
            log.info("NATS disconnected")
            self._fail_in_flight()
            note_change()

        async def on_reconnect() -> None:
            counters.reconnects += 1
            log.info("NATS reconnected")
            note_change()

        client = Client()
        try:
            # nats-py retries the first connection as often as reconnects (forever by
            # default), so bound the whole first attempt here.
            await asyncio.wait_for(
                client.connect(
                    url,
                    error_cb=on_error,
                    disconnected_cb=on_disconnect,
                    reconnected_cb=on_reconnect,
                    **options,
                ),
                connect_timeout,
            )
            inbox = client.new_inbox()
            # No client-side pending limits: each batch is bounded by its own request
            # (batch size and max_bytes), and a dropped reply would corrupt a read.
            await client.subscribe(
                f"{inbox}.*",
                cb=self._on_batch_message,
                pending_msgs_limit=0,
                pending_bytes_limit=0,
            )
        except (OSError, TimeoutError, nats.errors.Error) as exc:
            with contextlib.suppress(Exception):
                await client.close()
            raise ConnectionError(f"cannot connect to NATS at {url}: {exc!r}") from None
        self._inbox = inbox
        self._client = client

    async def _close(self) -> None:
        client = self._client
        if client is not None and not client.is_closed:
            with contextlib.suppress(nats.errors.Error, OSError):
                await client.close()

    def _require_client(self) -> Client:
        if self._client is None:
            raise trio.ClosedResourceError("the NATS connection is not open")
        return self._client


def _parse_api_reply(data: bytes) -> dict[str, Any]:
    try:
        reply = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise JetStreamApiError(0, 0, f"unreadable reply {data[:200]!r}") from None
    if not isinstance(reply, dict):
        raise JetStreamApiError(0, 0, f"unexpected reply {data[:200]!r}")
    error = reply.get("error")
    if error:
        raise JetStreamApiError(
            int(error.get("code", 0)), int(error.get("err_code", 0)), str(error.get("description"))
        )
    return reply


def _parse_pub_ack(data: bytes) -> PubAck:
    reply = _parse_api_reply(data)
    return PubAck(
        stream=str(reply.get("stream", "")),
        sequence=int(reply.get("seq", 0)),
        duplicate=bool(reply.get("duplicate", False)),
        count=int(reply.get("count", 1)),
    )


def _stored_or_none(reply: StoredMsg) -> StoredMsg | None:
    headers = reply.headers
    status = headers.get(_STATUS)
    if status == "404":
        return None
    if status is not None:
        raise JetStreamApiError(
            int(status), 0, f"direct get failed: {headers.get('Description', '')}"
        )
    return StoredMsg(headers[_SUBJECT], int(headers[_SEQUENCE]), reply.data, headers)


def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
    """The side thread: run the loop until stopped, then finish what is left on it."""
    try:
        loop.run_forever()
    finally:
        pending = [task for task in asyncio.all_tasks(loop) if not task.done()]
        for task in pending:
            task.cancel()
        if pending:
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


@unwrap_lone_errors
@contextlib.asynccontextmanager
async def open_nats(
    url: str | list[str],
    *,
    name: str | None = None,
    request_timeout: float = DEFAULT_TIMEOUT,
    connect_timeout: float = 5.0,
    reconnect_time_wait: float = DEFAULT_RECONNECT_WAIT,
    max_reconnect_attempts: int = -1,
    **options: Any,
) -> AsyncIterator[NatsConnection]:
    """Connect to NATS; yield a :class:`NatsConnection`; close it and join its thread.

    Args:
        url: A server URL (``nats://host:4222``) or a list of them.
        name: The connection name shown in the server's monitoring.
        request_timeout: Seconds each request may take (a Trio deadline around a call
            cancels it sooner).
        connect_timeout: Seconds to wait for the initial connection.
        reconnect_time_wait: Seconds between reconnect attempts.
        max_reconnect_attempts: ``-1`` (the default) reconnects forever: a server
            restart is survived; requests made meanwhile time out.
        **options: Passed to ``nats.connect`` as they are.

    Resource handling:
        One side thread runs a private asyncio loop (built directly, so an asyncio
        policy installed by trio-asyncio does not apply to it). On exit the client is
        closed and the thread joined, each within :data:`CLOSE_GRACE` seconds,
        shielded from cancellation. The thread is a daemon only so that a join that
        timed out cannot hang the interpreter's exit.

    Error handling:
        A failed initial connection (refused, or not made within ``connect_timeout``)
        raises :class:`ConnectionError`.
    """
    loop = asyncio.SelectorEventLoop()
    thread = threading.Thread(target=_run_loop, args=(loop,), name="eskit-nats", daemon=True)
    thread.start()
    connection = NatsConnection(loop, trio.lowlevel.current_trio_token(), request_timeout)
    try:
        connect_options = {
            "name": name,
            "connect_timeout": min(connect_timeout, 2.0),
            "reconnect_time_wait": reconnect_time_wait,
            "max_reconnect_attempts": max_reconnect_attempts,
            "allow_reconnect": True,
            **options,
        }
        await connection._submit(
            connection._connect(url, connect_options, connect_timeout), fail_on_disconnect=False
        )
        yield connection
    finally:
        connection._closed = True
        with trio.move_on_after(CLOSE_GRACE, shield=True):
            await connection._submit(connection._close(), fail_on_disconnect=False)
        loop.call_soon_threadsafe(loop.stop)
        with trio.CancelScope(shield=True):
            # A worker thread cannot be cancelled: bound the join itself.
            await trio.to_thread.run_sync(thread.join, CLOSE_GRACE)
        if not thread.is_alive():
            connection._close_unstarted()
