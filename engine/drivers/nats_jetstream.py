"""The JetStream half of the NATS driver: API calls, acknowledged publishes, direct gets.

:class:`JetStream` is mixed into :class:`~engine.drivers.nats.NatsConnection`, which
supplies the core NATS request and the bridge to the asyncio loop; this module holds
what JetStream adds on top: the API's error replies (:class:`JetStreamApiError`, an
:class:`~engine.errors.BackendRefusedError`), publish acknowledgements, atomic batches
(ADR-50), batched direct gets, and creating or deleting a stream.

A reply saying there is no room (a stream at its ``max_msgs`` / ``max_bytes`` with
``discard: new``, or the server's storage used up) is raised as
:class:`~engine.errors.StorageFullError` here, for every adapter alike.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import attrs
import orjson
from nats.aio.client import Client
from nats.aio.msg import Msg

from engine.drivers.nats_vocabulary import (
    BATCH_COMMIT,
    BATCH_ID,
    BATCH_SEQUENCE,
    ApiError,
)
from engine.errors import BackendRefusedError, StorageFullError

__all__ = [
    "DIRECT_BATCH_MAX_BYTES",
    "DirectBatch",
    "DirectInbox",
    "JetStream",
    "JetStreamApiError",
    "OutMsg",
    "PubAck",
    "StoredMsg",
]

T = TypeVar("T")

#: Bytes a batched direct get may return per request (the server's default is 64 MiB).
DIRECT_BATCH_MAX_BYTES = 16 * 1024 * 1024

_STATUS = "Status"
_SEQUENCE = "Nats-Sequence"
_SUBJECT = "Nats-Subject"
_LAST_SEQUENCE = "Nats-Last-Sequence"
_NUM_PENDING = "Nats-Num-Pending"


class JetStreamApiError(BackendRefusedError):
    """The JetStream API answered a request with an error (nothing was applied).

    Adapters turn the codes they know (see :mod:`engine.drivers.nats_vocabulary`) into
    engine errors; any other stays a :class:`~engine.errors.BackendRefusedError`.

    Attributes:
        status: The HTTP-like status (400, 404, 429, 503...).
        err_code: JetStream's own error code (10071 = wrong last sequence, ...).
        description: The server's text.
    """

    def __init__(self, status: int, err_code: int, description: str) -> None:
        super().__init__("nats", f"JetStream error {err_code} ({status}): {description}")
        self.status = status
        self.err_code = err_code
        self.description = description


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


@attrs.define(eq=False)
class DirectInbox:
    """The one long-lived wildcard inbox that every batched direct get answers on.

    Touched only on the asyncio thread.
    """

    prefix: str = ""
    _batches: dict[str, tuple[asyncio.Future[Msg], list[Msg]]] = attrs.field(factory=dict)
    _tokens: itertools.count[int] = attrs.field(factory=itertools.count)

    async def start(self, client: Client) -> None:
        """Subscribe the inbox on ``client`` (once, right after connecting)."""
        self.prefix = client.new_inbox()
        # No client-side pending limits: each batch is bounded by its own request
        # (batch size and max_bytes), and a dropped reply would corrupt a read.
        await client.subscribe(
            f"{self.prefix}.*",
            cb=self._on_message,
            pending_msgs_limit=0,
            pending_bytes_limit=0,
        )

    async def collect(
        self, client: Client, subject: str, request: bytes, wait: float
    ) -> tuple[list[Msg], Msg]:
        """Send ``request`` to ``subject``; return the replies and the end-of-batch status."""
        token = str(next(self._tokens))
        end: asyncio.Future[Msg] = asyncio.get_running_loop().create_future()
        received: list[Msg] = []
        self._batches[token] = (end, received)
        try:
            await client.publish(subject, request, reply=f"{self.prefix}.{token}")
            return received, await asyncio.wait_for(end, wait)
        finally:
            del self._batches[token]

    async def _on_message(self, msg: Msg) -> None:
        entry = self._batches.get(msg.subject[len(self.prefix) + 1 :])
        if entry is None:
            return  # the request gave up (timeout or cancellation)
        end, received = entry
        if not msg.data and msg.headers and _STATUS in msg.headers:
            if not end.done():
                end.set_result(msg)
        else:
            received.append(msg)


class JetStream:
    """JetStream calls of a :class:`~engine.drivers.nats.NatsConnection`.

    Every method may raise what :meth:`~engine.drivers.nats.NatsConnection.run` raises
    (:class:`~engine.errors.OutcomeUnknownError`,
    :class:`~engine.errors.BackendUnavailableError`, ``trio.ClosedResourceError``).
    """

    _timeout: float
    _direct: DirectInbox

    if TYPE_CHECKING:

        async def run(
            self, job: Callable[[Client], Awaitable[T]], *, fail_on_disconnect: bool = True
        ) -> T: ...

        async def request(
            self, subject: str, data: bytes = b"", *, headers: Mapping[str, str] | None = None
        ) -> StoredMsg: ...

    async def api(self, subject: str, body: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Call a JetStream API subject (``$JS.API....``) and return the parsed reply.

        Raises:
            JetStreamApiError: The server answered with an error.
        """
        payload = orjson.dumps(body) if body is not None else b""
        reply = await self.request(subject, payload)
        return _parse_api_reply(reply.data)

    async def ensure_stream(self, config: Mapping[str, Any]) -> None:
        """Create the stream ``config["name"]``, or bring an existing one's settings into line.

        It may exist with other settings (an older eskit, another node, an operator's
        edits): then the settings in ``config`` are applied to it.

        Raises:
            JetStreamApiError: The server refused to create or update it.
        """
        name = config["name"]
        try:
            await self.api(f"$JS.API.STREAM.CREATE.{name}", config)
        except JetStreamApiError as exc:
            if exc.err_code != ApiError.STREAM_NAME_IN_USE:
                raise
            await self.api(f"$JS.API.STREAM.UPDATE.{name}", config)

    async def delete_stream(self, name: str) -> None:
        """Delete the stream ``name`` and all its messages (nothing happens if there is none).

        Raises:
            JetStreamApiError: The server refused.
        """
        try:
            await self.api(f"$JS.API.STREAM.DELETE.{name}")
        except JetStreamApiError as exc:
            if exc.err_code != ApiError.STREAM_NOT_FOUND:
                raise

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
        direct = self._direct

        async def job(client: Client) -> tuple[list[Msg], Msg]:
            return await direct.collect(client, f"$JS.API.DIRECT.GET.{stream}", request, wait)

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


#: Error codes that mean "no room": the stream's limits, or the server's storage.
_STORAGE_FULL = frozenset({ApiError.STREAM_STORE_FAILED, ApiError.STORAGE_RESOURCES_EXCEEDED})


def _parse_api_reply(data: bytes) -> dict[str, Any]:
    try:
        reply = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise JetStreamApiError(0, 0, f"unreadable reply {data[:200]!r}") from None
    if not isinstance(reply, dict):
        raise JetStreamApiError(0, 0, f"unexpected reply {data[:200]!r}")
    error = reply.get("error")
    if error:
        err_code = int(error.get("err_code", 0))
        description = str(error.get("description"))
        if err_code in _STORAGE_FULL:
            raise StorageFullError(f"NATS JetStream could not store the message: {description}")
        raise JetStreamApiError(int(error.get("code", 0)), err_code, description)
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
