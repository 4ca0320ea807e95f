"""How a NATS store lays out its data: names, message bodies, stream settings.

Layout, for a ``namespace`` such as ``eskit``:

* One stream ``<namespace>_events`` (file storage, ``allow_atomic``, ``allow_direct``,
  ``deny_delete``, ``deny_purge``) holds every event. Each event stream is one subject
  ``<namespace>.ev.<token>``, where the token is the stream id's UTF-8 bytes in base64url
  without padding: always a valid single subject token, so ``a.*`` never matches
  ``a.b``. The message body (MessagePack) keeps the stream id verbatim, the version, the
  event id, type, schema version, metadata, data and ``recorded_at``; the event's global
  position is the message's stream sequence.
* Idempotency keys live in the same stream on ``<namespace>.key.<sha256 of the key>``,
  so that a key is written in the *same atomic batch* as the events it stands for.
* Snapshots and checkpoints are KV buckets ``<namespace>_snapshots`` and
  ``<namespace>_checkpoints`` (one value per key, revision compare-and-set; see
  :mod:`engine.stores.nats_kv`).

The subject tokens, codes and headers come from :mod:`engine.drivers.nats_vocabulary`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any, TypeVar

import attrs
import msgspec

from engine.codec import Codec
from engine.drivers.nats import NatsConnection
from engine.drivers.nats_jetstream import OutMsg
from engine.drivers.nats_vocabulary import (
    EXPECTED_LAST_SUBJECT_SEQUENCE,
    MSG_ID,
    check_namespace,
    digest_token,
    kv_bucket_config,
    kv_stream,
    subject_token,
)
from engine.events import Event
from engine.stores.encoding import EncodedNewEvent, decode_row

__all__ = [
    "DEFAULT_DUPLICATE_WINDOW",
    "DEFAULT_NAMESPACE",
    "EPOCH",
    "MICROSECOND",
    "EventBody",
    "KeyBody",
    "Names",
    "append_messages",
    "body_decoder",
    "body_encoder",
    "decode_body_event",
    "delete_nats_store",
    "ensure_nats_store",
    "event_stream_config",
]

E = TypeVar("E")

#: The namespace used when none is given.
DEFAULT_NAMESPACE = "eskit"
#: Seconds JetStream remembers event ids (``Nats-Msg-Id``), its own default.
DEFAULT_DUPLICATE_WINDOW = 120.0

#: ``recorded_at`` is stored as microseconds since this instant.
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
MICROSECOND = dt.timedelta(microseconds=1)


class EventBody(msgspec.Struct, array_like=True, tag_field="kind", tag=1):
    """The body of an event message."""

    stream_id: str
    version: int
    event_id: bytes
    type: str
    schema: int
    recorded_at: int  # microseconds since the Unix epoch, UTC
    metadata: bytes
    data: bytes


class KeyBody(msgspec.Struct, array_like=True, tag_field="kind", tag=2):
    """The body of an idempotency key's message: the key, its stream, how many events."""

    key: str
    stream_id: str
    count: int


body_encoder = msgspec.msgpack.Encoder()
body_decoder = msgspec.msgpack.Decoder(EventBody | KeyBody)


def append_messages(
    names: Names,
    stream_id: str,
    encoded: Sequence[EncodedNewEvent],
    version: int,
    sequence: int,
    key: str | None,
    recorded_at: dt.datetime,
) -> list[OutMsg]:
    """The messages of one append: its idempotency key's (if any), then one per event.

    The key's message may only be the first on its subject (expected sequence 0); the
    first event's carries ``sequence``, the stream's last sequence as the store believes
    it, so the server refuses the append if anyone wrote since; every event carries its
    id as ``Nats-Msg-Id``.

    Args:
        names: The store's names.
        stream_id: The stream appended to.
        encoded: The events.
        version: The stream's version before the append.
        sequence: The stream sequence of the stream's last event (0 for none).
        key: The idempotency key.
        recorded_at: When the events are recorded.
    """
    micros = (recorded_at - EPOCH) // MICROSECOND
    messages: list[OutMsg] = []
    if key is not None:
        body = body_encoder.encode(KeyBody(key, stream_id, len(encoded)))
        expect_new = {EXPECTED_LAST_SUBJECT_SEQUENCE: "0"}
        messages.append(OutMsg(names.keys + digest_token(key), body, expect_new))
    subject = names.events + subject_token(stream_id)
    for offset, event in enumerate(encoded):
        headers = {MSG_ID: str(event.event_id)}
        if offset == 0:
            headers[EXPECTED_LAST_SUBJECT_SEQUENCE] = str(sequence)
        body = body_encoder.encode(
            EventBody(
                stream_id,
                version + offset + 1,
                event.event_id.bytes,
                event.type,
                event.schema_version,
                micros,
                event.metadata,
                event.data,
            )
        )
        messages.append(OutMsg(subject, body, headers))
    return messages


def decode_body_event(codec: Codec[E], body: EventBody, position: int) -> Event[E]:
    """The event stored as ``body`` at ``position``."""
    recorded_at = EPOCH + body.recorded_at * MICROSECOND
    return decode_row(
        codec,
        body.stream_id,
        body.version,
        position,
        body.type,
        body.schema,
        body.data,
        body.metadata,
        body.event_id,
        recorded_at,
    )


@attrs.frozen
class Names:
    """The names of a namespace's stream, subject prefixes and buckets."""

    namespace: str
    stream: str
    events: str  # subject prefix, token appended
    keys: str
    snapshots: str  # KV bucket names
    checkpoints: str

    @classmethod
    def of(cls, namespace: str) -> Names:
        """The names of ``namespace``.

        Raises:
            ValueError: The namespace is not a valid name.
        """
        check_namespace(namespace)
        return cls(
            namespace=namespace,
            stream=f"{namespace}_events",
            events=f"{namespace}.ev.",
            keys=f"{namespace}.key.",
            snapshots=f"{namespace}_snapshots",
            checkpoints=f"{namespace}_checkpoints",
        )


def event_stream_config(names: Names, replicas: int, duplicate_window: float) -> dict[str, Any]:
    """The settings of the event stream."""
    return {
        "name": names.stream,
        "subjects": [names.events + "*", names.keys + "*"],
        "storage": "file",
        "retention": "limits",
        "num_replicas": replicas,
        "allow_atomic": True,
        "allow_direct": True,
        "duplicate_window": int(duplicate_window * 1e9),
        # An event log is append-only: nothing may be removed from the middle.
        "deny_delete": True,
        "deny_purge": True,
    }


async def ensure_nats_store(
    connection: NatsConnection,
    namespace: str = DEFAULT_NAMESPACE,
    *,
    replicas: int = 1,
    duplicate_window: float = DEFAULT_DUPLICATE_WINDOW,
) -> None:
    """Create (or update) the event stream and the two KV buckets of ``namespace``."""
    names = Names.of(namespace)
    await connection.ensure_stream(event_stream_config(names, replicas, duplicate_window))
    await connection.ensure_stream(kv_bucket_config(names.snapshots, replicas))
    await connection.ensure_stream(kv_bucket_config(names.checkpoints, replicas))


async def delete_nats_store(connection: NatsConnection, namespace: str) -> None:
    """Delete the event stream and KV buckets of ``namespace`` (all its data)."""
    names = Names.of(namespace)
    for stream in (names.stream, kv_stream(names.snapshots), kv_stream(names.checkpoints)):
        await connection.delete_stream(stream)
