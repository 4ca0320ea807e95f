"""What every durable dead-letter store keeps of a :class:`~engine.stores.base.DeadLetter`.

The SQLite, PostgreSQL and NATS dead-letter stores share these rules, so a letter reads
back the same whichever backend kept it:

* ``reason`` is kept verbatim (quotes, newlines, control characters, any script) up to
  :data:`MAX_REASON_LENGTH` characters. A longer reason is cut to that length, its last
  character being :data:`REASON_CUT_MARKER` (``…``), so that a reason quoting a huge
  payload cannot bloat the store or exceed a NATS message. NUL and unpaired surrogates,
  which PostgreSQL ``text`` and UTF-8 cannot hold, become U+FFFD: a reason is evidence
  to read, and refusing it would lose the letter.
* ``runner``, ``stream_id`` and ``type`` are keys and names, never altered: one that holds
  NUL or an unpaired surrogate is refused with :class:`ValueError` (stream ids never do;
  see :func:`~engine.events.validate_stream_id`).
* ``parked_at`` must be timezone-aware; it reads back in UTC with microsecond precision
  (the same instant). On the wire it is ISO-8601 UTC, ``event_id`` its canonical string.
* The JSON form (:func:`letter_to_json`) is for stores that keep a document per letter
  (NATS KV); never pickle.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any, Final

import attrs
import orjson

from engine.stores.base import DeadLetter

__all__ = [
    "MAX_REASON_LENGTH",
    "REASON_CUT_MARKER",
    "bounded_reason",
    "check_runner",
    "iso_utc",
    "letter_document",
    "letter_from_json",
    "letter_to_json",
    "parse_iso_utc",
    "storable_letter",
]

#: The most characters of a reason a durable store keeps.
MAX_REASON_LENGTH: Final = 4096
#: The last character of a reason that was cut.
REASON_CUT_MARKER: Final = "\u2026"
_REPLACEMENT: Final = "\ufffd"


def bounded_reason(reason: str) -> str:
    """``reason`` as a durable store keeps it (see the module docstring)."""
    if "\x00" in reason:
        reason = reason.replace("\x00", _REPLACEMENT)
    try:
        reason.encode("utf-8")
    except UnicodeEncodeError:
        reason = "".join(_REPLACEMENT if "\ud800" <= c <= "\udfff" else c for c in reason)
    if len(reason) > MAX_REASON_LENGTH:
        reason = reason[: MAX_REASON_LENGTH - 1] + REASON_CUT_MARKER
    return reason


def _check_name(field: str, value: str) -> None:
    if not isinstance(value, str):
        raise TypeError(f"a dead letter's {field} must be a str, got {value!r}")
    if "\x00" in value:
        raise ValueError(f"a dead letter's {field} must not contain NUL: {value!r}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(
            f"a dead letter's {field} must be valid Unicode (no lone surrogates): {value!r}"
        ) from None


def check_runner(runner: str) -> None:
    """Refuse a runner name no durable store can keep as a key.

    Raises:
        ValueError: It holds NUL or an unpaired surrogate.
    """
    _check_name("runner", runner)


def storable_letter(letter: DeadLetter) -> DeadLetter:
    """``letter`` as a durable store keeps it: names checked, reason bounded.

    Raises:
        ValueError: A name holds NUL or an unpaired surrogate, or ``parked_at`` is naive.
    """
    for field in ("runner", "stream_id", "type"):
        _check_name(field, getattr(letter, field))
    if letter.parked_at.utcoffset() is None:
        raise ValueError(f"a dead letter's parked_at must be timezone-aware: {letter.parked_at!r}")
    reason = bounded_reason(letter.reason)
    if reason == letter.reason:
        return letter
    return attrs.evolve(letter, reason=reason)


def iso_utc(moment: dt.datetime) -> str:
    """``moment`` (timezone-aware) as fixed-width ISO-8601 in UTC, to the microsecond, so
    that text order is time order."""
    return moment.astimezone(dt.UTC).isoformat(timespec="microseconds")


def parse_iso_utc(text: str) -> dt.datetime:
    """The instant :func:`iso_utc` wrote, in UTC."""
    return dt.datetime.fromisoformat(text).astimezone(dt.UTC)


def letter_document(letter: DeadLetter) -> dict[str, Any]:
    """A letter as a JSON-ready dict (event id as text, ``parked_at`` ISO-8601 UTC)."""
    return {
        "runner": letter.runner,
        "position": letter.position,
        "event_id": str(letter.event_id),
        "stream_id": letter.stream_id,
        "version": letter.version,
        "type": letter.type,
        "reason": letter.reason,
        "attempts": letter.attempts,
        "parked_at": iso_utc(letter.parked_at),
    }


def letter_to_json(letter: DeadLetter) -> bytes:
    """The JSON document of a letter already made :func:`storable_letter`."""
    return orjson.dumps(letter_document(letter))


def letter_from_json(data: bytes) -> DeadLetter:
    """The letter of a document :func:`letter_to_json` wrote.

    Raises:
        ValueError: ``data`` is not such a document.
    """
    try:
        body: Any = orjson.loads(data)
        return DeadLetter(
            runner=body["runner"],
            position=int(body["position"]),
            event_id=uuid.UUID(body["event_id"]),
            stream_id=body["stream_id"],
            version=int(body["version"]),
            type=body["type"],
            reason=body["reason"],
            attempts=int(body["attempts"]),
            parked_at=parse_iso_utc(body["parked_at"]),
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"not a dead letter document: {exc}") from None
