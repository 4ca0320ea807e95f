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
import threading
import time
from collections.abc import Mapping, Sequence
from typing import IO, Any

import orjson

__all__ = [
    "ACCESS_LOGGERS",
    "DEFAULT_REPEAT_WINDOW",
    "MAX_MESSAGE_CHARS",
    "MAX_VALUE_CHARS",
    "REDACTED",
    "JsonFormatter",
    "RepeatFilter",
    "TextFormatter",
    "configure_logging",
    "is_secret_key",
    "redact_text",
    "shorten",
]

#: What a secret is replaced with.
REDACTED = "[redacted]"

_SECRET_KEY = re.compile(
    r"pass(word|wd|phrase)?|secret|token|authori[sz]ation|api[-_]?key|dsn|credential|"
    r"cookie|private[-_]?key|session[-_]?key",
    re.IGNORECASE,
)
# A scheme starts only where no scheme character precedes it (the lookbehind): without
# it, a long run of letters made the engine try a scheme at every one of its positions,
# each scanning to the run's end (quadratic: a 1 MB stream id froze the event loop for
# minutes). With it every character is scanned a bounded number of times.
_URL_CREDENTIALS = re.compile(
    r"(?<![a-z0-9+.-])(?P<head>[a-z][a-z0-9+.-]*://[^:/@\s]*):(?P<secret>[^@\s/]+)@",
    re.IGNORECASE,
)
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

#: The longest string value (a message argument or an ``extra`` field, such as a stream
#: id) a log line shows; longer ones are cut there, with a marker saying how much was cut.
MAX_VALUE_CHARS = 300
#: The longest message a log line shows (after its arguments were put in).
MAX_MESSAGE_CHARS = 4000
# Redact a little past a cut, so that a secret straddling it is redacted, not half shown.
_CUT_SLACK = 256
# Text none of whose characters can start a secret pattern skips the three patterns:
# URL credentials need ":", key=value pairs "=" or ":", and bearer tokens their keyword.
_MAY_HOLD_SECRET = re.compile(r"[:=]|bearer|basic", re.IGNORECASE)
_secret_keys: dict[str, bool] = {}


def is_secret_key(name: str) -> bool:
    """Whether a field called ``name`` may hold a secret (and is therefore redacted)."""
    known = _secret_keys.get(name)
    if known is None:
        known = _SECRET_KEY.search(name) is not None
        if len(_secret_keys) < 4096:  # field names are few; a hostile flood is not cached
            _secret_keys[name] = known
    return known


def redact_text(text: str) -> str:
    """``text`` with URL passwords, ``password=...`` pairs and bearer tokens redacted.

    Linear in the length of ``text`` (a hostile megabyte takes milliseconds, not minutes).
    """
    if not text or _MAY_HOLD_SECRET.search(text) is None:
        return text
    text = _URL_CREDENTIALS.sub(lambda m: f"{m['head']}:{REDACTED}@", text)
    text = _KEY_VALUE.sub(lambda m: f"{m['key']}{m['quote']}{REDACTED}", text)
    return _BEARER.sub(lambda m: f"{m['head']}{REDACTED}", text)


def shorten(text: str, limit: int = MAX_VALUE_CHARS) -> str:
    """``text`` redacted and cut to ``limit`` characters, with a marker if it was longer.

    Costs O(``limit``) whatever the length of ``text``: what log lines and the status
    page show of values a client chose (stream ids, error messages).
    """
    if len(text) <= limit:
        return redact_text(text)
    return f"{redact_text(text[: limit + _CUT_SLACK])[:limit]}...[{len(text) - limit} more chars]"


def _bounded_arg(value: Any) -> Any:
    return shorten(value) if isinstance(value, str) and len(value) > MAX_VALUE_CHARS else value


def _message(record: logging.LogRecord) -> str:
    """The record's message with long arguments cut, the whole capped, secrets redacted."""
    template = record.msg if isinstance(record.msg, str) else str(record.msg)
    args = record.args
    if not args:
        return shorten(template, MAX_MESSAGE_CHARS)
    message = template % args
    # A message no longer than the cap has no argument longer than it: the common case
    # formats once. Otherwise format again with every long string argument cut.
    if len(message) > MAX_VALUE_CHARS:
        if isinstance(args, tuple):
            message = template % tuple(_bounded_arg(arg) for arg in args)
        elif isinstance(args, Mapping):
            message = template % {key: _bounded_arg(value) for key, value in args.items()}
    return shorten(message, MAX_MESSAGE_CHARS)


_PLAIN = (bool, int, float, type(None))


def _clean(key: str, value: Any) -> Any:
    if _secret_keys.get(key, True) and is_secret_key(key):
        return REDACTED
    kind = type(value)
    if kind is str:
        if len(value) <= MAX_VALUE_CHARS and _MAY_HOLD_SECRET.search(value) is None:
            return value  # the common case, without a call
        return shorten(value)
    if kind in _PLAIN or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return shorten(value)
    if isinstance(value, Mapping):
        return {str(k): _clean(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(key, v) for v in value]
    return shorten(str(value))


class _SecondCache:
    """The formatted time of the current second (the expensive part), recomputed once a second."""

    def __init__(self, render: Any) -> None:
        self._render = render
        self._second = -1
        self._text = ""

    def __call__(self, created: float) -> str:
        second = int(created)
        if second != self._second:
            self._second, self._text = second, self._render(second)
        return self._text


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``time``, ``level``, ``logger``, ``message``, the
    static fields (``node_id``...), every ``extra`` field, and ``exception``.

    Args:
        static: Fields added to every line (for example ``{"node_id": "node-1"}``);
            a record's own field of the same name wins.
    """

    def __init__(self, static: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.static = {key: _clean(key, value) for key, value in (static or {}).items()}
        self._second = _SecondCache(
            lambda second: dt.datetime.fromtimestamp(second, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
        )

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON, long values cut, secrets redacted."""
        created = record.created
        line: dict[str, Any] = {
            "time": f"{self._second(created)}.{int(created * 1000) % 1000:03d}+00:00",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": _message(record),
        }
        line.update(self.static)
        for key, value in vars(record).items():
            if key not in _RECORD_FIELDS and key[:1] != "_":
                line[key] = _clean(key, value)
        if record.exc_info:
            line["exception"] = redact_text(self.formatException(record.exc_info))
        elif record.exc_text:
            line["exception"] = redact_text(record.exc_text)
        if record.stack_info:
            line["stack"] = redact_text(self.formatStack(record.stack_info))
        try:
            return orjson.dumps(line, default=str).decode()
        except TypeError:  # a key orjson refuses (not a str): the standard library's way
            return json.dumps(line, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """A classic one-line text format (with the node id), long values cut, secrets redacted:
    ``2026-01-02 10:11:12,345 INFO    [node-1] eskit.commands: command ...``."""

    def __init__(self, node_id: str = "") -> None:
        super().__init__()
        self._prefix = f"[{node_id}] " if node_id else ""
        self._second = _SecondCache(
            lambda second: time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
        )

    def format(self, record: logging.LogRecord) -> str:
        """The record as text, long values cut, secrets redacted."""
        created = record.created
        line = (
            f"{self._second(created)},{int(created * 1000) % 1000:03d} "
            f"{record.levelname:<7} {self._prefix}{record.name}: {_message(record)}"
        )
        repeated = getattr(record, "repeated", None)
        if repeated:
            line = f"{line} (and {repeated} more like it since its last line)"
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line = f"{line}\n{redact_text(record.exc_text)}"
        if record.stack_info:
            line = f"{line}\n{redact_text(self.formatStack(record.stack_info))}"
        return line


#: The loggers of the access log: one line per command (handled or rejected by the
#: domain; a failed command is a WARNING and always logged) and per HTTP request.
ACCESS_LOGGERS = ("eskit.commands", "eskit.http.access")

#: Seconds between two lines of one repeated warning (see :class:`RepeatFilter`).
DEFAULT_REPEAT_WINDOW = 30.0


class RepeatFilter(logging.Filter):
    """Says a repeated warning once, then once per ``window`` with how often it recurred.

    A warning (or error) is "the same" when its logger, level and message template are:
    ``waiting for %r: NATS unavailable (%s)`` from every runner of a node whose NATS
    server is gone is one problem, not a line every half second. The first record passes;
    the next ones within ``window`` seconds are counted and dropped; the first one after
    the window passes with ``repeated`` (an extra field, and a suffix of the text line)
    saying how many were dropped. The access log is never filtered. Time is the records'
    own ``created`` stamp.

    Args:
        window: Seconds between two lines of one repeated warning.
        level: Records below this level always pass.
        exempt: Loggers whose records always pass.
        max_keys: How many templates are tracked (the oldest is forgotten beyond it).
    """

    def __init__(
        self,
        window: float = DEFAULT_REPEAT_WINDOW,
        *,
        level: int = logging.WARNING,
        exempt: Sequence[str] = ACCESS_LOGGERS,
        max_keys: int = 1024,
    ) -> None:
        super().__init__()
        self.window = window
        self.level = level
        self.exempt = frozenset(exempt)
        self.max_keys = max_keys
        self._seen: dict[tuple[str, int, str], list[float]] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        """Whether ``record`` is written (and with what ``repeated`` count)."""
        if record.levelno < self.level or record.name in self.exempt:
            return True
        key = (record.name, record.levelno, str(record.msg))
        with self._lock:
            state = self._seen.get(key)
            if state is None:
                if len(self._seen) >= self.max_keys:
                    del self._seen[next(iter(self._seen))]
                self._seen[key] = [record.created, 0]
                return True
            if record.created - state[0] < self.window:
                state[1] += 1
                return False
            dropped = int(state[1])
            state[0], state[1] = record.created, 0
        if dropped:
            record.repeated = dropped
        return True


_ON = {"true", "yes", "on", "1"}


def configure_logging(
    *,
    json_format: bool | None = None,
    level: str | int | None = None,
    node_id: str = "",
    stream: IO[str] | None = None,
    logger: logging.Logger | None = None,
    environ: Mapping[str, str] | None = None,
    access_log: bool | None = None,
    lean_records: bool = False,
    repeat_window: float | None = DEFAULT_REPEAT_WINDOW,
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
        access_log: Whether the :data:`ACCESS_LOGGERS` log below WARNING (their INFO
            line per command costs a third of an in-process command's time); by
            default ``ESKIT_LOG_ACCESS`` (``on``/``off``) when set, else left as it is.
        lean_records: Skip what no eskit formatter shows (the caller's file and line,
            thread and process names) when records are made: the standard library's
            documented switches, process-wide, so only for a process eskit owns
            (``eskit run``).
        repeat_window: A repeated warning is written once, then once per this many
            seconds with its count (:class:`RepeatFilter`); ``None`` writes every one.

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
    if repeat_window is not None:
        handler.addFilter(RepeatFilter(repeat_window))
    target.addHandler(handler)
    target.setLevel(level)
    if access_log is None and env.get("ESKIT_LOG_ACCESS", "").strip():
        access_log = env["ESKIT_LOG_ACCESS"].strip().lower() in _ON
    if access_log is not None:
        for name in ACCESS_LOGGERS:
            logging.getLogger(name).setLevel(logging.NOTSET if access_log else logging.WARNING)
    if lean_records:
        # The "Optimization" switches of the logging HOWTO: no frame walk per record.
        logging._srcfile = None  # documented in the logging HOWTO, "Optimization"
        logging.logThreads = False
        logging.logProcesses = False
        logging.logMultiprocessing = False
    return handler
