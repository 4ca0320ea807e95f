"""Snapshot and checkpoint stores in JetStream KV buckets (used by :mod:`engine.stores.nats`).

A bucket ``B`` is the stream ``KV_B`` with subjects ``$KV.B.<key>`` and one message per
key, as nats-py, the Go client and the ``nats`` CLI lay it out, so the buckets can be
inspected with ``nats kv``. Keys are the stream id or checkpoint name in base64url
without padding (any string becomes a valid key). Writes are compare-and-set on the
key's revision (its stream sequence) with ``Nats-Expected-Last-Subject-Sequence``.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

import attrs
import msgspec

from engine.codec import Codec
from engine.drivers.nats import NatsConnection
from engine.drivers.nats_jetstream import JetStreamApiError, OutMsg, StoredMsg
from engine.drivers.nats_vocabulary import (
    EXPECTED_LAST_SUBJECT_SEQUENCE,
    ApiError,
    is_kv_tombstone,
    kv_stream,
    subject_token,
)
from engine.errors import CheckpointConflictError
from engine.events import validate_stream_id
from engine.stores.base import Snapshot

__all__ = [
    "KV_RETRIES",
    "NatsCheckpointStore",
    "NatsSnapshotStore",
]

S = TypeVar("S")

#: Compare-and-set attempts before a writer that keeps losing races gives up.
KV_RETRIES = 64


def _kv_subject(bucket: str, key: str) -> str:
    # "=" is a valid KV key that base64url without padding never produces: the empty
    # name (allowed for checkpoints) gets a key of its own.
    return f"$KV.{bucket}.{subject_token(key) or '='}"


async def _kv_get(connection: NatsConnection, bucket: str, key: str) -> StoredMsg | None:
    message = await connection.direct_get_last(kv_stream(bucket), _kv_subject(bucket, key))
    if message is None or is_kv_tombstone(message.headers):
        return None
    return message


class _SnapshotBody(msgspec.Struct, array_like=True):
    version: int
    schema: int
    state: bytes


_encoder = msgspec.msgpack.Encoder()
_snapshot_decoder = msgspec.msgpack.Decoder(_SnapshotBody)


@attrs.define(eq=False)
class NatsSnapshotStore(Generic[S]):
    """A :class:`~engine.stores.base.SnapshotStore` in a JetStream KV bucket.

    Get one from :meth:`engine.stores.nats.NatsStore.snapshots`.
    """

    _connection: NatsConnection
    codec: Codec[Any]
    state_type: type[S]
    bucket: str

    async def save_snapshot(self, snapshot: Snapshot[S]) -> None:
        """Store ``snapshot`` unless a snapshot of a later version is stored already."""
        validate_stream_id(snapshot.stream_id)
        value = _encoder.encode(
            _SnapshotBody(
                snapshot.version, snapshot.schema, self.codec.encode_value(snapshot.state)
            )
        )
        subject = _kv_subject(self.bucket, snapshot.stream_id)
        for _ in range(KV_RETRIES):
            current = await _kv_get(self._connection, self.bucket, snapshot.stream_id)
            revision = 0
            if current is not None:
                if _snapshot_decoder.decode(current.data).version > snapshot.version:
                    return
                revision = current.sequence
            try:
                await self._connection.publish(
                    OutMsg(subject, value, {EXPECTED_LAST_SUBJECT_SEQUENCE: str(revision)})
                )
                return
            except JetStreamApiError as exc:
                if exc.err_code != ApiError.WRONG_LAST_SEQUENCE:
                    raise
        raise RuntimeError(f"snapshot of {snapshot.stream_id!r} kept losing races")

    async def load_snapshot(self, stream_id: str) -> Snapshot[S] | None:
        """The latest snapshot of ``stream_id``, or ``None``."""
        validate_stream_id(stream_id)
        message = await _kv_get(self._connection, self.bucket, stream_id)
        if message is None:
            return None
        body = _snapshot_decoder.decode(message.data)
        state = self.codec.decode_value(body.state, self.state_type)
        return Snapshot(stream_id, body.version, state, body.schema)


@attrs.define(eq=False)
class NatsCheckpointStore:
    """A :class:`~engine.stores.base.CheckpointStore` in a JetStream KV bucket.

    Values are positions in decimal ASCII. The client remembers the revision of each
    checkpoint it read or wrote, so a runner saving its own checkpoint again needs one
    request; a stale guess costs a second one, never a wrong write.
    """

    _connection: NatsConnection
    bucket: str
    _known: dict[str, tuple[int, int]] = attrs.field(factory=dict, init=False)

    async def load_checkpoint(self, name: str) -> int | None:
        """The saved position of ``name``, or ``None`` if it was never saved."""
        found = await self._read(name)
        return None if found is None else found[0]

    async def save_checkpoint(self, name: str, position: int, *, expected: int | None) -> None:
        """Save ``position`` for ``name`` if the stored value is still ``expected``.

        Raises:
            CheckpointConflictError: Another writer saved since ``expected`` was read.
            ValueError: ``position`` is negative.
        """
        known = self._known.get(name)
        for _ in range(KV_RETRIES):
            if known is None or known[0] != expected:
                known = await self._read(name)
                actual = None if known is None else known[0]
                if actual != expected:
                    raise CheckpointConflictError(name, expected, actual)
            if position < 0:
                raise ValueError(f"a checkpoint position must be >= 0, got {position}")
            revision = 0 if known is None else known[1]
            try:
                ack = await self._connection.publish(
                    OutMsg(
                        _kv_subject(self.bucket, name),
                        str(position).encode("ascii"),
                        {EXPECTED_LAST_SUBJECT_SEQUENCE: str(revision)},
                    )
                )
            except JetStreamApiError as exc:
                if exc.err_code != ApiError.WRONG_LAST_SEQUENCE:
                    raise
                # Written since: compare the value again (it may be ``expected`` still).
                known = None
                continue
            self._known[name] = (position, ack.sequence)
            return
        raise CheckpointConflictError(name, expected, None)

    async def _read(self, name: str) -> tuple[int, int] | None:
        message = await _kv_get(self._connection, self.bucket, name)
        if message is None:
            self._known.pop(name, None)
            return None
        found = (int(message.data), message.sequence)
        self._known[name] = found
        return found
