"""The NATS vocabulary every NATS adapter shares: error codes, headers, names, subject tokens.

One place for what the store, the KV buckets, the dead letters, the locks and the bus
all say to a NATS server, so that two adapters cannot spell one thing two ways. Pure
values and functions: no I/O (creating and deleting streams is
:meth:`~engine.drivers.nats_jetstream.JetStream.ensure_stream` and
:meth:`~engine.drivers.nats_jetstream.JetStream.delete_stream`).

Subject tokens: text chosen by users (stream ids, lock keys, runner names) never
becomes a subject as it is; it is encoded into one token that cannot hold ``.``,
``*``, ``>`` or whitespace, so a hostile name cannot reach another subject.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import re
from collections.abc import Mapping
from typing import Any, Final

__all__ = [
    "BATCH_COMMIT",
    "BATCH_ID",
    "BATCH_SEQUENCE",
    "EXPECTED_LAST_SUBJECT_SEQUENCE",
    "KV_OPERATION",
    "MAX_TOKEN_LENGTH",
    "MSG_ID",
    "ApiError",
    "bounded_subject_token",
    "check_namespace",
    "digest_token",
    "is_kv_tombstone",
    "kv_bucket_config",
    "kv_stream",
    "subject_token",
]


class ApiError(enum.IntEnum):
    """The JetStream API error codes (``err_code`` of an error reply) eskit reacts to."""

    #: A stream of that name exists already (with other settings).
    STREAM_NAME_IN_USE = 10058
    #: No stream of that name.
    STREAM_NOT_FOUND = 10059
    #: A ``Nats-Expected-Last-*`` check failed (someone wrote first).
    WRONG_LAST_SEQUENCE = 10071
    #: The stream could not store a message: it is at its limits (``max_msgs``,
    #: ``max_bytes`` with ``discard: new``) or its storage failed.
    STREAM_STORE_FAILED = 10077
    #: The server's JetStream storage is used up.
    STORAGE_RESOURCES_EXCEEDED = 10047
    #: An atomic batch has more messages than the server allows.
    BATCH_TOO_LARGE = 10199
    #: An atomic batch holds a message id already stored.
    BATCH_DUPLICATE_MSG_ID = 10201
    #: The server has too many atomic batches in flight; retry.
    TOO_MANY_BATCHES_IN_FLIGHT = 10210


# -- Headers -----------------------------------------------------------------------------

MSG_ID: Final = "Nats-Msg-Id"
EXPECTED_LAST_SUBJECT_SEQUENCE: Final = "Nats-Expected-Last-Subject-Sequence"
BATCH_ID: Final = "Nats-Batch-Id"
BATCH_SEQUENCE: Final = "Nats-Batch-Sequence"
BATCH_COMMIT: Final = "Nats-Batch-Commit"
#: Set by ``nats kv del`` / ``purge`` on a KV tombstone.
KV_OPERATION: Final = "KV-Operation"

# -- Names -------------------------------------------------------------------------------

_NAMESPACE_RE: Final = re.compile(r"[A-Za-z0-9_-]+")

#: The longest subject token :func:`bounded_subject_token` makes (longer text is hashed).
MAX_TOKEN_LENGTH: Final = 200


def check_namespace(namespace: str) -> str:
    """``namespace`` if it can name streams, buckets and subjects; else ``ValueError``.

    Raises:
        ValueError: It is empty or holds a character outside ``[A-Za-z0-9_-]``.
    """
    if not _NAMESPACE_RE.fullmatch(namespace):
        raise ValueError(f"a NATS namespace must match [A-Za-z0-9_-]+, got {namespace!r}")
    return namespace


def kv_stream(bucket: str) -> str:
    """The JetStream stream behind the KV bucket ``bucket`` (as nats-py and ``nats kv`` name it)."""
    return f"KV_{bucket}"


def kv_bucket_config(
    bucket: str, replicas: int, *, per_message_ttl: bool = False
) -> dict[str, Any]:
    """The stream settings of a KV bucket: one value per key, on file storage.

    Laid out as nats-py, the Go client and ``nats kv`` lay a bucket out, so ``nats kv``
    can show it. Values are never deleted from the middle (``deny_delete``), except in
    a bucket with ``per_message_ttl`` (the lock bucket), where each lease carries its
    own ``Nats-TTL`` and the server removes it when that runs out.
    """
    config: dict[str, Any] = {
        "name": kv_stream(bucket),
        "subjects": [f"$KV.{bucket}.>"],
        "storage": "file",
        "retention": "limits",
        "num_replicas": replicas,
        "max_msgs_per_subject": 1,
        "discard": "new",
        "allow_direct": True,
        "allow_rollup_hdrs": True,
    }
    if per_message_ttl:
        config["allow_msg_ttl"] = True
    else:
        config["deny_delete"] = True
    return config


def is_kv_tombstone(headers: Mapping[str, str] | None) -> bool:
    """Whether a KV entry with these headers was deleted or purged (``nats kv del``)."""
    return bool(headers) and headers is not None and headers.get(KV_OPERATION) in ("DEL", "PURGE")


# -- Subject tokens ----------------------------------------------------------------------


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def subject_token(text: str) -> str:
    """``text`` as one subject token: base64url of its UTF-8 bytes, unpadded.

    Stream ids and checkpoint names (the empty text gives ``""``). Raises
    :class:`UnicodeEncodeError` for a lone surrogate, which stream ids refuse anyway.
    """
    return _b64(text.encode("utf-8"))


def digest_token(text: str) -> str:
    """The base64url of the SHA-256 of ``text``: a short token for text of any length.

    The text itself must be stored beside it and compared on read.
    """
    return _b64(hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest())


def bounded_subject_token(text: str) -> str:
    """``text`` as one subject token of at most :data:`MAX_TOKEN_LENGTH` characters.

    The base64url of its UTF-8 bytes (lone surrogates kept), or ``=`` and the base64url
    of its SHA-256 when that would exceed :data:`MAX_TOKEN_LENGTH`. Base64url never
    produces ``=`` unpadded, so a digest cannot meet a plain token; the empty text is
    ``=`` alone. Lock keys and runner names.
    """
    raw = text.encode("utf-8", "surrogatepass")
    token = _b64(raw)
    if not token:
        return "="
    if len(token) > MAX_TOKEN_LENGTH:
        return "=" + _b64(hashlib.sha256(raw).digest())
    return token
