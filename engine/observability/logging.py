"""Structured logging: the standard library's ``logging`` with a JSON formatter option.

The engine logs under ``eskit.*`` loggers (``eskit.commands``, ``eskit.store``,
``eskit.runners``, ...) and passes structured fields as ``extra`` (``stream_id``,
``command_type``, ``command_id``, ``duration_ms``...). :class:`JsonFormatter` writes one
JSON object per line with those fields, the level, the logger, the message and the
node id; :func:`configure_logging` installs it (or a text formatter) on a logger.

Secrets never reach the output: fields whose name looks like a secret (``password``,
``token``, ``dsn``, ``authorization``...) are replaced by ``"[redacted]"``, and the text
of messages and tracebacks is scrubbed of URL credentials (``postgresql://u:PASS@h``),
``password=...``-style pairs and bearer tokens (:func:`redact_text`). Command payloads
and event data are never passed to the log in the first place.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import sys
from collections.abc import Mapping
from typing import IO, Any

__all__ = [
    "REDACTED",
    "JsonFormatter",
    "TextFormatter",
    "configure_logging",
    "is_secret_key",
    "redact_text",
]

#: What a secret is replaced with.
REDACTED = "[redacted]"

_SECRET_KEY = re.compile(
    r"pass(word|wd|phrase)?|secret|token|authori[sz]ation|api[-_]?key|dsn|credential|"
    r"cookie|private[-_]?key|session[-_]?key",
    re.IGNORECASE,
)
_URL_CREDENTIALS = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^:/@\s]*):(?P<secret>[^@\s/]+)@")
_KEY_VALUE = re.compile(
    r"(?P<key>\b(?:password|passwd|pwd|secret|token|api[-_]?key|access[-_]?key)\b\s*[=:]\s*)"
    r"(?P<quote>['\"]?)(?P<secret>[^\s'\"&;,]+)",
    re.IGNORECASE,
)
_BEARER = re.compile(r"(?P<head>\b(?:Bearer|Basic)\s+)[A-Za-z0-9._~+/=-]+", re.IGNORECASE)

# Attributes every LogRecord has; anything else on a record came in through ``extra``.
_RECORD_FIELDS = frozenset(
    vars(logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None)).keys()
) | {"message", "asctime", "taskName"}


def is_secret_key(name: str) -> bool:
    """Whether a field called ``name`` may hold a secret (and is therefore redacted)."""
    return _SECRET_KEY.search(name) is not None


def redact_text(text: str) -> str:
    """``text`` with URL passwords, ``password=...`` pairs and bearer tokens redacted."""
    if not text:
        return text
    text = _URL_CREDENTIALS.sub(lambda m: f"{m['head']}:{REDACTED}@", text)
    text = _KEY_VALUE.sub(lambda m: f"{m['key']}{m['quote']}{REDACTED}", text)
    return _BEARER.sub(lambda m: f"{m['head']}{REDACTED}", text)


def _clean(key: str, value: Any) -> Any:
    if is_secret_key(key):
        return REDACTED
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, Mapping):
        return {str(k): _clean(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(key, v) for v in value]
    return redact_text(str(value))


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``time``, ``level``, ``logger``, ``message``, the
    static fields (``node_id``...), every ``extra`` field, and ``exception``.

    Args:
        static: Fields added to every line (for example ``{"node_id": "node-1"}``);
            a record's own field of the same name wins.
    """

    def __init__(self, static: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.static = dict(static or {})

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON, secrets redacted."""
        line: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact_text(record.getMessage()),
        }
        for key, value in self.static.items():
            line[key] = _clean(key, value)
        for key, value in vars(record).items():
            if key not in _RECORD_FIELDS and not key.startswith("_"):
                line[key] = _clean(key, value)
        if record.exc_info:
            line["exception"] = redact_text(self.formatException(record.exc_info))
        elif record.exc_text:
            line["exception"] = redact_text(record.exc_text)
        if record.stack_info:
            line["stack"] = redact_text(self.formatStack(record.stack_info))
        return json.dumps(line, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """A classic one-line text format (with the node id), secrets redacted."""

    def __init__(self, node_id: str = "") -> None:
        prefix = f"[{node_id}] " if node_id else ""
        super().__init__(f"%(asctime)s %(levelname)-7s {prefix}%(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        """The record as text, secrets redacted."""
        return redact_text(super().format(record))


def configure_logging(
    *,
    json_format: bool | None = None,
    level: str | int | None = None,
    node_id: str = "",
    stream: IO[str] | None = None,
    logger: logging.Logger | None = None,
    environ: Mapping[str, str] | None = None,
) -> logging.Handler:
    """Send log records to ``stream`` as JSON lines or text; replace an earlier setup.

    Args:
        json_format: JSON lines (``True``) or text; by default ``ESKIT_LOG_FORMAT=json``
            selects JSON.
        level: The logger's level; by default ``ESKIT_LOG_LEVEL``, else ``INFO``.
        node_id: Added to every line.
        stream: Where lines go (standard error by default).
        logger: The logger to configure (the root logger by default).
        environ: Where the defaults are read (``os.environ`` by default).

    Returns:
        The installed handler (remove it with ``logger.removeHandler``).
    """
    env = os.environ if environ is None else environ
    if json_format is None:
        json_format = env.get("ESKIT_LOG_FORMAT", "text").strip().lower() == "json"
    if level is None:
        level = env.get("ESKIT_LOG_LEVEL", "INFO").strip().upper() or "INFO"
    target = logger if logger is not None else logging.getLogger()
    for old in list(target.handlers):
        if getattr(old, "_eskit", False):
            target.removeHandler(old)
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler._eskit = True  # type: ignore[attr-defined]  # marks the handler we replace
    formatter: logging.Formatter = (
        JsonFormatter({"node_id": node_id} if node_id else None)
        if json_format
        else TextFormatter(node_id)
    )
    handler.setFormatter(formatter)
    target.addHandler(handler)
    target.setLevel(level)
    return handler
