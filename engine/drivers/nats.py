"""The NATS driver: the one place nats-py connections are opened, bridged to Trio and closed.

nats-py is an asyncio library. It runs here on a private asyncio loop in one side thread
(:mod:`engine.drivers.nats_bridge`); Trio code hands it whole *jobs* (one JetStream
publish, one atomic batch, one batched direct get) and waits for the result without
blocking the Trio loop. Jobs cross the bridge in bursts: one wake-up per burst and
direction, however many Trio tasks submit at once. This module holds the connection and
core NATS (requests, publishes, subscriptions); :mod:`engine.drivers.nats_jetstream` the
JetStream calls mixed into it; :mod:`engine.drivers.nats_vocabulary` the codes, headers,
names and subject tokens every NATS adapter shares.

Why not trio-asyncio: measured on the 2-core dev VM (``benchmarks/nats_store_quick.py``
and ad-hoc runs against a memory stream), JetStream publish+ack per second, raw asyncio /
this driver / trio-asyncio: one caller 4.6k / 2.5k / 2.4k; 64 concurrent callers 33k /
15.5k / 5.7k. Reading 100k bare payloads by batched direct gets: about 100k/s both
in raw asyncio and through this driver. The price of the side thread is about 65-100 µs
per job (two thread wake-ups) and GIL hand-offs when both threads are busy, so adapters
cross once per batch or page, never once per event.

Errors (the NATS choke point of the backend error policy, docs/runtime.md): nats-py's
exceptions never leave this module. :meth:`NatsConnection.run` translates them: no
answer in time, or the connection lost with a request in flight, is
:class:`~engine.errors.OutcomeUnknownError` (a :class:`TimeoutError` and a
:class:`ConnectionError`); a server that cannot be reached, or nobody to answer a
request, :class:`~engine.errors.BackendUnavailableError`; a closed driver
:class:`trio.ClosedResourceError`; an error reply of the JetStream API
:class:`~engine.drivers.nats_jetstream.JetStreamApiError`, a
:class:`~engine.errors.BackendRefusedError` whose codes adapters translate further.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, TypeVar

import attrs
import nats
import nats.errors
import trio
from nats.aio.client import Client
from nats.aio.msg import Msg

from engine.drivers.nats_bridge import AsyncioBridge, open_asyncio_bridge

# OutMsg, StoredMsg, JetStreamApiError and MAX_TOKEN_LENGTH are re-exported: the cluster
# router, the tests and the benchmarks import them from here.
from engine.drivers.nats_jetstream import (
    DirectInbox,
    JetStream,
    JetStreamApiError,
    OutMsg,
    StoredMsg,
)
from engine.drivers.nats_vocabulary import MAX_TOKEN_LENGTH
from engine.errors import BackendUnavailableError, OutcomeUnknownError
from engine.groups import unwrap_lone_errors

__all__ = [
    "DEFAULT_TIMEOUT",
    "MAX_TOKEN_LENGTH",
    "InMsg",
    "JetStreamApiError",
    "NatsConnection",
    "NatsStatistics",
    "NoRespondersError",
    "OutMsg",
    "StoredMsg",
    "Subscription",
    "open_nats",
]

T = TypeVar("T")

log = logging.getLogger(__name__)

#: Seconds a single request (publish acknowledgement, API call, batch read) may take.
DEFAULT_TIMEOUT = 10.0
#: Seconds to wait between reconnect attempts; the driver retries forever by default.
DEFAULT_RECONNECT_WAIT = 0.5
#: Seconds the driver gives nats-py to flush and close, and the side thread to end.
CLOSE_GRACE = 5.0


class NoRespondersError(BackendUnavailableError):
    """Nobody subscribes to a request's subject: the request was certainly not handled."""

    def __init__(self, detail: str) -> None:
        super().__init__("nats", detail)


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


@attrs.define(eq=False)
class NatsConnection(JetStream):
    """One nats-py client on its own asyncio loop; Trio tasks submit jobs to it.

    Get one from :func:`open_nats`. All methods may be called from any number of Trio
    tasks at once; nats-py multiplexes them over one TCP connection. The JetStream
    calls (``api``, ``publish``, ``publish_atomic``, ``direct_get*``, ``ensure_stream``,
    ``delete_stream``) come from :class:`~engine.drivers.nats_jetstream.JetStream`.
    """

    _bridge: AsyncioBridge
    _timeout: float
    _client: Client | None = None
    _closed: bool = False
    _counters: _Counters = attrs.field(factory=_Counters)
    # Batched direct gets answer on one long-lived wildcard inbox.
    _direct: DirectInbox = attrs.field(factory=DirectInbox)
    # Set (and replaced) on the Trio thread whenever the connection state changes.
    _changed: trio.Event = attrs.field(factory=trio.Event)

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
            jobs_in_flight=self._bridge.jobs_in_flight,
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

    async def run(
        self, job: Callable[[Client], Awaitable[T]], *, fail_on_disconnect: bool = True
    ) -> T:
        """Run ``job(client)`` on the driver's asyncio loop and return its result.

        The Trio task waits without blocking the Trio loop. If it is cancelled, the
        asyncio side is cancelled too (whether a request already reached the server is
        then unknown, as with any lost reply). If the connection is lost while the job
        runs, it fails at once with :class:`~engine.errors.OutcomeUnknownError` (a
        reply to a request sent on the lost connection cannot arrive on the next one),
        unless ``fail_on_disconnect`` is false.

        Raises:
            trio.ClosedResourceError: The driver is closed.
            OutcomeUnknownError: A request timed out, or the connection was lost
                while it was in flight.
            BackendUnavailableError: The connection cannot take the request, or
                nobody answers its subject (:class:`NoRespondersError`).
            ValueError: A message over the server's ``max_payload``, or an invalid
                subject or header.
        """
        if self._closed:
            raise trio.ClosedResourceError("the NATS connection is closed")
        client = self._require_client()
        return await self._bridge.submit(
            _guarded(job, client), fail_on_disconnect=fail_on_disconnect
        )

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
            OutcomeUnknownError: No reply in time (whether it was handled is unknown).
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
        bridge = self._bridge

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
                bridge.call_in_trio(deliver)

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
            OutcomeUnknownError: No PONG within the request timeout.
        """
        wait = self._timeout

        async def job(client: Client) -> None:
            await client.flush(timeout=max(1, math.ceil(wait)))

        await self.run(job)

    # -- asyncio side -----------------------------------------------------------------

    async def _connect(
        self, url: str | list[str], options: dict[str, Any], connect_timeout: float
    ) -> None:
        counters = self._counters
        bridge = self._bridge

        async def on_error(exc: Exception) -> None:
            log.warning("NATS client error: %r", exc)

        async def on_disconnect() -> None:
            counters.disconnects += 1
            log.info("NATS disconnected")
            bridge.fail_in_flight()
            bridge.call_in_trio(self._note_change)

        async def on_reconnect() -> None:
            counters.reconnects += 1
            log.info("NATS reconnected")
            bridge.call_in_trio(self._note_change)

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
            await self._direct.start(client)
        except (OSError, TimeoutError, nats.errors.Error) as exc:
            with contextlib.suppress(Exception):
                await client.close()
            raise BackendUnavailableError(
                "nats", f"cannot connect to NATS at {url}: {exc!r}"
            ) from None
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


async def _guarded(job: Callable[[Client], Awaitable[T]], client: Client) -> T:
    """The one place nats-py's exceptions become engine errors (asyncio side)."""
    try:
        return await job(client)
    except nats.errors.TimeoutError as exc:
        raise OutcomeUnknownError(
            "nats",
            f"NATS request timed out ({type(exc).__name__}): it may or may not have been applied",
        ) from None
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
        raise OutcomeUnknownError(
            "nats", f"NATS connection error: {type(exc).__name__}: {exc}"
        ) from None
    except TimeoutError:
        raise OutcomeUnknownError(
            "nats", "NATS request timed out: it may or may not have been applied"
        ) from None


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
        One side thread runs a private asyncio loop
        (:func:`~engine.drivers.nats_bridge.open_asyncio_bridge`). On exit the client
        is closed and the thread joined, each within :data:`CLOSE_GRACE` seconds,
        shielded from cancellation.

    Error handling:
        A failed initial connection (refused, or not made within ``connect_timeout``)
        raises :class:`~engine.errors.BackendUnavailableError` (a
        :class:`ConnectionError`).
    """
    async with open_asyncio_bridge(join_grace=CLOSE_GRACE) as bridge:
        connection = NatsConnection(bridge, request_timeout)
        connect_options = {
            "name": name,
            "connect_timeout": min(connect_timeout, 2.0),
            "reconnect_time_wait": reconnect_time_wait,
            "max_reconnect_attempts": max_reconnect_attempts,
            "allow_reconnect": True,
            **options,
        }
        try:
            await bridge.submit(
                connection._connect(url, connect_options, connect_timeout),
                fail_on_disconnect=False,
            )
            yield connection
        finally:
            connection._closed = True
            with trio.move_on_after(CLOSE_GRACE, shield=True):
                await bridge.submit(connection._close(), fail_on_disconnect=False)
