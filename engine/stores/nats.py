"""Event, snapshot and checkpoint stores on NATS JetStream.

The layout (the stream, its subjects and message bodies, the KV buckets) is described
and built in :mod:`engine.stores.nats_layout`.

An append is one JetStream publish (one event) or one atomic batch (ADR-50; several
events, or any events with an idempotency key). The first event carries
``Nats-Expected-Last-Subject-Sequence``: the sequence of the stream's last event as the
store believes it, so the server itself refuses a concurrent write; the key message
carries ``0`` on its own subject, so a key is stored once. Every event carries
``Nats-Msg-Id`` = its event id (JetStream's duplicate window).

Reads use batched direct gets (one request per page, no consumer to create). ``read_all``
asks for bare payloads (no headers, about twice as fast in nats-py) and infers each
sequence from the batch's first and last; it falls back to headers when the stream has
gaps. JetStream makes a message visible only after every lower sequence is stored, so
readers never see a position appear behind one they have read.
"""

from __future__ import annotations

import collections
import contextlib
import datetime as dt
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Generic, TypeVar

import attrs
import trio

from engine.codec import Codec
from engine.drivers.nats import NatsConnection, open_nats
from engine.drivers.nats_jetstream import JetStreamApiError
from engine.drivers.nats_vocabulary import (
    ApiError,
    digest_token,
)
from engine.drivers.nats_vocabulary import subject_token as stream_subject_token
from engine.errors import (
    ConcurrencyError,
    IdempotencyConflictError,
)
from engine.events import (
    Event,
    ExpectedVersion,
    NewEvent,
    check_expected_version,
    utc_now,
    validate_stream_id,
)
from engine.groups import unwrap_lone_errors
from engine.stores.base import DEFAULT_MAX_EVENT_BYTES, DEFAULT_READ_LIMIT
from engine.stores.encoding import EncodedNewEvent, decode_row, encode_batch
from engine.stores.nats_kv import (
    KV_RETRIES,
    NatsCheckpointStore,
    NatsSnapshotStore,
)
from engine.stores.nats_layout import (
    DEFAULT_DUPLICATE_WINDOW,
    DEFAULT_NAMESPACE,
    EventBody,
    KeyBody,
    Names,
    append_messages,
    body_decoder,
    decode_body_event,
    delete_nats_store,
    ensure_nats_store,
)

__all__ = [
    "DEFAULT_DUPLICATE_WINDOW",
    "DEFAULT_NAMESPACE",
    "MAX_ATOMIC_EVENTS",
    "NatsCheckpointStore",
    "NatsSnapshotStore",
    "NatsStore",
    "delete_nats_store",
    "ensure_nats_store",
    "open_nats_store",
    "stream_subject_token",
]

E = TypeVar("E")
S = TypeVar("S")

#: The most events one append can write atomically (the server's batch limit is 1000
#: messages, and a keyed append needs one more for its key).
MAX_ATOMIC_EVENTS = 999
#: How many streams' last (version, sequence) each store client remembers.
HEAD_CACHE_SIZE = 10_000
#: Messages per direct-get request while loading a stream.
LOAD_PAGE = 1000
#: From this ``after_version`` on, ``load`` seeks the first event instead of scanning.
SEEK_AFTER_VERSION = 256
#: Probes a seek may take before it settles for a longer scan.
MAX_SEEK_PROBES = 64
#: Retries of an ANY / STREAM_EXISTS append that keeps losing races, and of a batch
#: refused because the server has too many batches in flight.
MAX_RETRIES = KV_RETRIES


@attrs.frozen
class _Head:
    """A stream's last event as seen by this client."""

    version: int
    sequence: int
    event_id: uuid.UUID | None = None


_NO_HEAD = _Head(0, 0)


def _translate_api_error(exc: JetStreamApiError) -> Exception:
    """The one place JetStream API errors that are not handled in place become engine errors.

    Any other stays what it is: a :class:`~engine.errors.BackendRefusedError`.
    """
    if exc.err_code == ApiError.BATCH_TOO_LARGE:
        return ValueError(f"the append is larger than the server's atomic batch limit: {exc}")
    return exc


@attrs.define(eq=False)
class NatsStore(Generic[E]):
    """An :class:`~engine.stores.base.EventStore` and
    :class:`~engine.stores.base.CheckpointStore` on JetStream.

    Get one from :func:`open_nats_store`. Snapshot stores come from :meth:`snapshots`.
    """

    _connection: NatsConnection
    codec: Codec[E]
    _names: Names
    _checkpoints: NatsCheckpointStore
    max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES
    now: Callable[[], dt.datetime] = utc_now
    _heads: collections.OrderedDict[str, _Head] = attrs.field(
        factory=collections.OrderedDict, init=False
    )

    @property
    def namespace(self) -> str:
        """The namespace that names this store's stream, subjects and buckets."""
        return self._names.namespace

    # -- appends --------------------------------------------------------------------

    async def append(
        self,
        stream_id: str,
        events: Sequence[NewEvent[E]],
        *,
        expected_version: int | ExpectedVersion = ExpectedVersion.ANY,
        idempotency_key: str | None = None,
    ) -> list[Event[E]]:
        """Append ``events`` atomically (see :class:`~engine.stores.base.EventStore`).

        Raises:
            ConcurrencyError: The stream's version does not satisfy ``expected_version``.
            InvalidStreamIdError: The stream id is refused.
            EventTooLargeError: An event is over ``max_event_bytes`` (nothing written).
            IdempotencyConflictError: The key (or, within JetStream's duplicate
                window, an event id) was used for another stream.
            ValueError: More than :data:`MAX_ATOMIC_EVENTS` events.
            OutcomeUnknownError: NATS did not answer, or the connection was lost; the
                append may or may not have been stored (retrying with the same events
                is safe: a stored event id is recognised).
            BackendUnavailableError: NATS cannot be reached (nothing was stored).
            BackendRefusedError: JetStream refused the append (nothing was stored).
        """
        encoded = encode_batch(self.codec, stream_id, events, max_event_bytes=self.max_event_bytes)
        if len(encoded) > MAX_ATOMIC_EVENTS:
            raise ValueError(
                f"a NATS append writes at most {MAX_ATOMIC_EVENTS} events atomically, "
                f"got {len(encoded)}"
            )
        if idempotency_key is None and not encoded:
            if expected_version is not ExpectedVersion.ANY:
                head = await self._fetch_head(stream_id)
                check_expected_version(stream_id, expected_version, head.version)
            return []
        try:
            return await self._append_checked(stream_id, encoded, expected_version, idempotency_key)
        except ConcurrencyError:
            # A repeated key wins over the version check, as in every store: it is
            # looked up only now, so that a first use of a key costs no extra request.
            if idempotency_key is None:
                raise
            known = await self._find_key(idempotency_key)
            if known is None:
                raise
            return await self._replay_key(idempotency_key, stream_id, *known)
        except JetStreamApiError as exc:
            raise _translate_api_error(exc) from exc

    async def _append_checked(
        self,
        stream_id: str,
        encoded: list[EncodedNewEvent],
        expected: int | ExpectedVersion,
        key: str | None,
    ) -> list[Event[E]]:
        if encoded:
            head = self._head_hint(stream_id, expected)
        else:
            # Only a key is written: no event message carries the version check to the
            # server, so check against the server's head (a short window remains
            # between this read and the key's write).
            head = _NO_HEAD if expected is ExpectedVersion.ANY else None
        for _ in range(MAX_RETRIES):
            if head is None:
                head = await self._fetch_head(stream_id)
            check_expected_version(stream_id, expected, head.version)
            try:
                return await self._write(stream_id, encoded, head, key)
            except JetStreamApiError as exc:
                if exc.err_code == ApiError.TOO_MANY_BATCHES_IN_FLIGHT:
                    await trio.sleep(0.01)
                    continue
                if exc.err_code == ApiError.BATCH_DUPLICATE_MSG_ID:
                    return await self._already_stored(stream_id, encoded)
                if exc.err_code != ApiError.WRONG_LAST_SEQUENCE:
                    raise
            # Someone wrote first: to the stream, or (a keyed append) to the key.
            if key is not None:
                known = await self._find_key(key)
                if known is not None:
                    return await self._replay_key(key, stream_id, *known)
            head = await self._fetch_head(stream_id)
            if encoded and head.event_id == encoded[-1].event_id:
                # Our own earlier attempt (a lost acknowledgement) got there.
                return await self._already_stored(stream_id, encoded)
            # Check again against the fresh head: an exact version now fails (unless
            # only the cached sequence was stale); ANY / STREAM_EXISTS retry.
        raise ConcurrencyError(stream_id, expected, head.version if head else 0)

    def _head_hint(self, stream_id: str, expected: int | ExpectedVersion) -> _Head | None:
        """What to assume about the stream without asking the server, if anything.

        A wrong guess costs one refused publish, never a wrong write: the server checks
        the sequence the guess implies.
        """
        if expected == 0 or expected is ExpectedVersion.NO_STREAM:
            return _NO_HEAD
        cached = self._heads.get(stream_id)
        if cached is None:
            return None
        if isinstance(expected, int) and expected != cached.version:
            return None  # the cache may be stale; the server may agree with the caller
        return cached

    async def _write(
        self, stream_id: str, encoded: list[EncodedNewEvent], head: _Head, key: str | None
    ) -> list[Event[E]]:
        recorded_at = self.now()
        messages = append_messages(
            self._names, stream_id, encoded, head.version, head.sequence, key, recorded_at
        )
        if len(messages) == 1:
            ack = await self._connection.publish(messages[0])
        else:
            ack = await self._connection.publish_atomic(messages)
        if ack.duplicate:
            # Only a single-event publish is deduplicated silently (batches refuse);
            # the acknowledgement names the original's sequence.
            return await self._stored_duplicate(stream_id, encoded[0], ack.sequence)
        first = ack.sequence - len(encoded) + 1
        if encoded:
            self._remember(
                stream_id,
                _Head(head.version + len(encoded), ack.sequence, encoded[-1].event_id),
            )
        return [
            decode_row(
                self.codec,
                stream_id,
                head.version + offset + 1,
                first + offset,
                event.type,
                event.schema_version,
                event.data,
                event.metadata,
                event.event_id,
                recorded_at,
            )
            for offset, event in enumerate(encoded)
        ]

    async def _already_stored(
        self, stream_id: str, encoded: list[EncodedNewEvent]
    ) -> list[Event[E]]:
        """The stored copies of ``encoded``, whose ids JetStream says it has seen.

        A retried append whose first attempt was stored returns those events. Event ids
        stored elsewhere are refused.
        """
        wanted = [event.event_id for event in encoded]
        stored = await self.load(stream_id)
        ids = [event.event_id for event in stored]
        for start in range(len(ids) - len(wanted), -1, -1):
            if ids[start : start + len(wanted)] == wanted:
                return stored[start : start + len(wanted)]
        raise IdempotencyConflictError(
            f"event id {wanted[0]}", stream_id, "another stream or an earlier append"
        )

    async def _stored_duplicate(
        self, stream_id: str, event: EncodedNewEvent, sequence: int
    ) -> list[Event[E]]:
        message = await self._connection.direct_get(self._names.stream, sequence)
        body = None if message is None else body_decoder.decode(message.data)
        if not isinstance(body, EventBody) or body.event_id != event.event_id.bytes:
            raise RuntimeError(f"JetStream reported a duplicate at {sequence}, but it is not")
        if body.stream_id != stream_id:
            raise IdempotencyConflictError(f"event id {event.event_id}", stream_id, body.stream_id)
        return [decode_body_event(self.codec, body, sequence)]

    # -- idempotency keys --------------------------------------------------------------

    async def _find_key(self, key: str) -> tuple[KeyBody, int] | None:
        message = await self._connection.direct_get_last(
            self._names.stream, self._names.keys + digest_token(key)
        )
        if message is None:
            return None
        body = body_decoder.decode(message.data)
        if not isinstance(body, KeyBody) or body.key != key:
            raise RuntimeError(f"idempotency key record {message.sequence} does not match {key!r}")
        return body, message.sequence

    async def _replay_key(
        self, key: str, stream_id: str, body: KeyBody, sequence: int
    ) -> list[Event[E]]:
        if body.stream_id != stream_id:
            raise IdempotencyConflictError(key, stream_id, body.stream_id)
        return await self._events_after_key(body, sequence)

    async def _events_after_key(self, body: KeyBody, sequence: int) -> list[Event[E]]:
        if body.count == 0:
            return []
        # The key was the first message of its batch; its events follow it directly.
        events = await self._read_range(sequence + 1, body.count)
        return [event for event in events if event.stream_id == body.stream_id][: body.count]

    async def find_idempotent(self, idempotency_key: str) -> list[Event[E]] | None:
        """The events stored by the append that carried ``idempotency_key``, or ``None``."""
        known = await self._find_key(idempotency_key)
        if known is None:
            return None
        return await self._events_after_key(*known)

    # -- reads -----------------------------------------------------------------------

    async def load(
        self, stream_id: str, *, after_version: int = 0, limit: int | None = None
    ) -> list[Event[E]]:
        """The stream's events with a version above ``after_version``, in order.

        Far into a stream (``after_version`` of :data:`SEEK_AFTER_VERSION` or more, as
        after a snapshot) the first wanted event is found by a few probes instead of
        reading every event before it.
        """
        validate_stream_id(stream_id)
        subject = self._names.events + stream_subject_token(stream_id)
        start, to_skip = 1, max(after_version, 0)
        if after_version >= SEEK_AFTER_VERSION:
            found = await self._seek(stream_id, subject, after_version + 1)
            if found is None:
                return []
            start, to_skip = found, 0
        out: list[Event[E]] = []
        while limit is None or len(out) < limit:
            # Versions are 1, 2, 3... in sequence order: the next to_skip + wanted
            # messages of the subject hold everything asked for.
            size = LOAD_PAGE if limit is None else min(LOAD_PAGE, to_skip + limit - len(out))
            batch = await self._connection.direct_get_batch(
                self._names.stream, start=start, batch=max(size, 1), subject=subject
            )
            assert batch.headers is not None
            for data, headers in zip(batch.data, batch.headers, strict=True):
                body = body_decoder.decode(data)
                if not isinstance(body, EventBody):
                    continue
                if body.version > after_version:
                    out.append(decode_body_event(self.codec, body, int(headers["Nats-Sequence"])))
                else:
                    to_skip -= 1
            if not batch.data or batch.num_pending == 0:
                break
            start = batch.last_sequence + 1
        if out:
            last = out[-1]
            if limit is None or len(out) < limit:
                self._remember(stream_id, _Head(last.version, last.position, last.event_id))
        return out if limit is None else out[:limit]

    async def _seek(self, stream_id: str, subject: str, version: int) -> int | None:
        """The sequence of the stream's event ``version`` (``None`` if it has none yet).

        Probes "the last event at or before sequence q", which tells the version there:
        interpolation between what is known, every other probe a bisection so that the
        number of probes stays logarithmic in the length of the log.
        """
        head = await self._fetch_head(stream_id)
        if head.version < version:
            return None
        # Every sequence <= low holds a version < version; high holds high_version.
        low, low_version, high, high_version = 0, 0, head.sequence, head.version
        for probe in range(MAX_SEEK_PROBES):
            if high_version == version or high - low <= 1:
                return high
            if probe % 2:
                guess = (low + high) // 2
            else:
                span = (version - low_version) * (high - low) // (high_version - low_version)
                guess = low + span
            guess = min(max(guess, low + 1), high - 1)
            found = await self._connection.direct_get_last_before(
                self._names.stream, subject, guess
            )
            body = None if found is None else body_decoder.decode(found.data)
            found_version = body.version if isinstance(body, EventBody) else 0
            if found is None or found_version < version:
                low, low_version = guess, found_version
            else:
                high, high_version = found.sequence, found_version
        return low + 1  # a scan from here is still right, only longer

    async def stream_version(self, stream_id: str) -> int:
        """The stream's current version (0 when it has no events)."""
        validate_stream_id(stream_id)
        return (await self._fetch_head(stream_id)).version

    async def _fetch_head(self, stream_id: str) -> _Head:
        message = await self._connection.direct_get_last(
            self._names.stream, self._names.events + stream_subject_token(stream_id)
        )
        if message is None:
            return _NO_HEAD
        body = body_decoder.decode(message.data)
        if not isinstance(body, EventBody):
            raise RuntimeError(f"message {message.sequence} on an event subject is not an event")
        head = _Head(body.version, message.sequence, uuid.UUID(bytes=body.event_id))
        self._remember(stream_id, head)
        return head

    def _remember(self, stream_id: str, head: _Head) -> None:
        heads = self._heads
        cached = heads.get(stream_id)
        if cached is not None and cached.version > head.version:
            return  # a concurrent append of this client got further
        heads[stream_id] = head
        heads.move_to_end(stream_id)
        if len(heads) > HEAD_CACHE_SIZE:
            heads.popitem(last=False)

    async def read_all(
        self, *, after_position: int = 0, limit: int = DEFAULT_READ_LIMIT
    ) -> list[Event[E]]:
        """Up to ``limit`` events of all streams after ``after_position``, in order."""
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        start = max(after_position, 0) + 1
        while True:
            events, last = await self._read_page(start, limit)
            # A page of key records only: read on, or a follower would stop early.
            if events or last == 0:
                return events
            start = last + 1

    async def _read_range(self, start: int, count: int) -> list[Event[E]]:
        events, _ = await self._read_page(start, count)
        return events

    async def _read_page(self, start: int, limit: int) -> tuple[list[Event[E]], int]:
        """Events from sequence ``start`` on (at most ``limit`` messages) and the last
        sequence read (0 when there was nothing)."""
        connection, stream = self._connection, self._names.stream
        everything = self._names.namespace + ".>"
        batch = await connection.direct_get_batch(
            stream, start=start, batch=limit, subject=everything, headers=False
        )
        if not batch.data:
            return [], 0
        if batch.last_sequence - start + 1 == len(batch.data):
            sequences: Sequence[int] = range(start, batch.last_sequence + 1)
        else:
            # A gap (deleted messages) in the range: ask again, with sequences.
            batch = await connection.direct_get_batch(
                stream, start=start, batch=limit, subject=everything
            )
            assert batch.headers is not None
            sequences = [int(headers["Nats-Sequence"]) for headers in batch.headers]
        events = []
        for data, sequence in zip(batch.data, sequences, strict=True):
            body = body_decoder.decode(data)
            if isinstance(body, EventBody):
                events.append(decode_body_event(self.codec, body, sequence))
        return events, batch.last_sequence

    async def head_position(self) -> int:
        """The position of the newest event (0 for an empty store)."""
        message = await self._connection.direct_get_last(
            self._names.stream, self._names.events + "*"
        )
        return 0 if message is None else message.sequence

    # -- snapshots and checkpoints --------------------------------------------------------

    def snapshots(self, state_type: type[S]) -> NatsSnapshotStore[S]:
        """A :class:`~engine.stores.base.SnapshotStore` for states of ``state_type``."""
        return NatsSnapshotStore(self._connection, self.codec, state_type, self._names.snapshots)

    async def load_checkpoint(self, name: str) -> int | None:
        """The saved position of ``name``, or ``None`` if it was never saved."""
        return await self._checkpoints.load_checkpoint(name)

    async def save_checkpoint(self, name: str, position: int, *, expected: int | None) -> None:
        """Save ``position`` for ``name`` if the stored value is still ``expected``.

        Raises:
            CheckpointConflictError: Another writer saved since ``expected`` was read.
        """
        await self._checkpoints.save_checkpoint(name, position, expected=expected)


@unwrap_lone_errors
@contextlib.asynccontextmanager
async def open_nats_store(
    url_or_connection: str | NatsConnection,
    codec: Codec[E],
    *,
    namespace: str = DEFAULT_NAMESPACE,
    max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
    replicas: int = 1,
    duplicate_window: float = DEFAULT_DUPLICATE_WINDOW,
    now: Callable[[], dt.datetime] = utc_now,
    **connect_options: Any,
) -> AsyncIterator[NatsStore[E]]:
    """Open a JetStream event store (and its snapshot and checkpoint buckets).

    Args:
        url_or_connection: A NATS URL (the store opens and closes its own connection)
            or an open :class:`~engine.drivers.nats.NatsConnection` to share.
        codec: Encodes and decodes events and snapshot states.
        namespace: Names the stream (``<namespace>_events``), its subjects
            (``<namespace>.ev.*``, ``<namespace>.key.*``) and the KV buckets.
        max_event_bytes: Size limit per encoded event.
        replicas: JetStream replicas for the stream and buckets (when creating them).
        duplicate_window: Seconds JetStream remembers event ids to drop a repeated
            event. The server keeps every id of that window in memory: at high
            rates, shorten it.
        now: Wall clock for ``recorded_at``.
        **connect_options: Passed to :func:`~engine.drivers.nats.open_nats` with a URL.

    Raises:
        ValueError: The namespace is not a valid name, or ``max_event_bytes`` does not
            fit the server's ``max_payload``.
    """
    names = Names.of(namespace)
    async with contextlib.AsyncExitStack() as stack:
        if isinstance(url_or_connection, str):
            connection = await stack.enter_async_context(
                open_nats(url_or_connection, **connect_options)
            )
        else:
            connection = url_or_connection
        # Room for the envelope: stream id (<= 512 bytes), type name, headers.
        if max_event_bytes + 16 * 1024 > connection.max_payload:
            raise ValueError(
                f"max_event_bytes={max_event_bytes} does not fit the server's max_payload "
                f"of {connection.max_payload} bytes (less 16 KiB for the envelope)"
            )
        await ensure_nats_store(
            connection, namespace, replicas=replicas, duplicate_window=duplicate_window
        )
        checkpoints = NatsCheckpointStore(connection, names.checkpoints)
        yield NatsStore(connection, codec, names, checkpoints, max_event_bytes, now)
