"""Structured logging: JSON lines with the command fields, and no secrets, ever."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from engine.codec import Codec, EventRegistry
from engine.decider import Decider
from engine.errors import DomainError
from engine.handler import CommandContext, CommandHandler, CommandResult, NextHandler
from engine.observability.commands import command_middleware
from engine.observability.logging import (
    MAX_VALUE_CHARS,
    REDACTED,
    JsonFormatter,
    TextFormatter,
    configure_logging,
    redact_text,
    shorten,
)
from engine.observability.metrics import EngineMetrics
from engine.observability.status import EventModel, RecentErrors
from engine.stores.memory import MemoryStore


def record(message: str, *args: Any, **extra: Any) -> logging.LogRecord:
    """A log record as ``logger.info(message, *args, extra=extra)`` makes it."""
    made = logging.LogRecord("eskit.test", logging.INFO, __file__, 1, message, args, None)
    for key, value in extra.items():
        setattr(made, key, value)
    return made


def test_json_lines_carry_the_extra_fields() -> None:
    """A JSON line has time, level, logger, message, the static fields and every extra."""
    line = json.loads(
        JsonFormatter({"node_id": "node-1"}).format(
            record("handled %s", "Deposit", stream_id="acc-1", duration_ms=1.5, command_id=None)
        )
    )
    assert line["time"].endswith("+00:00")
    del line["time"]
    assert line == {
        "level": "info",
        "logger": "eskit.test",
        "message": "handled Deposit",
        "node_id": "node-1",
        "stream_id": "acc-1",
        "duration_ms": 1.5,
        "command_id": None,
    }


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("connecting to postgresql://eskit:hunter2@db:5432/app failed", "hunter2"),
        ("nats://user:s3cr3t@nats.local:4222 is down", "s3cr3t"),
        ("conninfo host=db password=hunter2 user=eskit", "hunter2"),
        ("conninfo host=db password='hunter 2' user=eskit", "hunter"),
        ("header Authorization: Bearer abc.def-ghi", "abc.def-ghi"),
        ("api_key=AKIA1234 token: tok-987", "AKIA1234"),
        ("api_key=AKIA1234 token: tok-987", "tok-987"),
    ],
)
def test_secrets_in_text_are_redacted(text: str, secret: str) -> None:
    """URL passwords, key=value secrets and bearer tokens never survive redaction."""
    cleaned = redact_text(text)
    assert secret not in cleaned
    assert REDACTED in cleaned


def test_secret_fields_messages_and_tracebacks_are_redacted() -> None:
    """Secret-named fields, secrets in the message and in an exception's text are scrubbed."""
    try:
        raise ConnectionError("cannot reach postgresql://app:pa55word@db/app")
    except ConnectionError:
        import sys

        exc_info = sys.exc_info()
    made = record(
        "store url %s",
        "postgresql://app:pa55word@db/app",
        dsn="postgresql://app:pa55word@db/app",
        token="tok",
        headers={"Authorization": "Bearer xyz", "accept": "json"},
        password_hint=["x"],
    )
    made.exc_info = exc_info
    for formatter in (JsonFormatter(), TextFormatter("n1")):
        out = formatter.format(made)
        assert "pa55word" not in out
        assert "xyz" not in out
    line = json.loads(JsonFormatter().format(made))
    assert line["dsn"] == line["token"] == line["password_hint"] == REDACTED
    assert line["headers"] == {"Authorization": REDACTED, "accept": "json"}
    assert "ConnectionError" in line["exception"]


def test_configure_logging_replaces_its_own_handler() -> None:
    """Configuring twice leaves one handler; the environment picks JSON and the level."""
    logger = logging.getLogger("eskit.test.configure")
    first = io.StringIO()
    configure_logging(logger=logger, stream=first, environ={})
    second = io.StringIO()
    handler = configure_logging(
        logger=logger,
        stream=second,
        node_id="n7",
        environ={"ESKIT_LOG_FORMAT": "json", "ESKIT_LOG_LEVEL": "warning"},
    )
    try:
        assert logger.handlers == [handler]
        logger.info("hidden")
        logger.warning("shown %d", 1)
        assert first.getvalue() == ""
        [line] = [json.loads(text) for text in second.getvalue().splitlines()]
        assert (line["message"], line["node_id"], line["level"]) == ("shown 1", "n7", "warning")
    finally:
        logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)


@attrs.frozen
class Pay:
    amount: int
    password: str = "hunter2"


@attrs.frozen
class Paid:
    amount: int


def decide(state: int, command: Pay) -> Sequence[Paid]:
    if command.amount == 0:
        raise DomainError("nothing to pay")
    if command.amount > 1000:
        raise DomainError(f"over the limit: {command.amount}")
    if command.amount < 0:
        raise RuntimeError("the ledger is on fire")
    return [Paid(command.amount)]


payments: Decider[int, Pay, Paid] = Decider(
    initial_state=lambda: 0,
    decide=decide,
    evolve=lambda state, event: state + event.amount,
    command_types=(Pay,),
    event_types=(Paid,),
)


async def test_every_command_is_logged_with_its_fields(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Each command logs stream, type, id, node, outcome and its duration; never its payload."""
    registry = EventRegistry()
    registry.register(Paid, name="pay.Paid")
    stream = io.StringIO()
    logger = logging.getLogger("eskit.test.commands")
    handler = configure_logging(
        logger=logger, stream=stream, json_format=True, level="INFO", environ={}
    )
    metrics, errors = EngineMetrics(), RecentErrors()

    async def slow(context: CommandContext[Any], call_next: NextHandler) -> CommandResult[Any, Any]:
        await trio.sleep(0.125)
        return await call_next(context)

    commands: CommandHandler[int, Pay, Paid] = CommandHandler(
        decider=payments,
        store=MemoryStore(Codec(registry)),
        middleware=[
            command_middleware(
                plugin="pay",
                names={Pay: "PayNow"},
                node_id="node-9",
                metrics=metrics,
                errors=errors,
                model=EventModel(),
                logger=logger,
            ),
            slow,
        ],
    )
    try:
        await commands.handle("acct-1", Pay(5), command_id="cmd-1")
        with pytest.raises(DomainError):
            await commands.handle("acct-1", Pay(0))
        with pytest.raises(RuntimeError):
            await commands.handle("acct-1", Pay(-1), command_id="cmd-3")
    finally:
        logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)
    output = stream.getvalue()
    assert "hunter2" not in output
    handled, rejected, failed = [json.loads(line) for line in output.splitlines()]
    for line in (handled, rejected, failed):
        assert line["stream_id"] == "acct-1"
        assert line["command_type"] == "PayNow"
        assert line["node_id"] == "node-9"
        assert line["plugin"] == "pay"
        assert line["duration_ms"] == 125.0
    assert [line["command_id"] for line in (handled, rejected, failed)] == ["cmd-1", None, "cmd-3"]
    assert [line["outcome"] for line in (handled, rejected, failed)] == [
        "handled",
        "rejected",
        "failed",
    ]
    assert [line["level"] for line in (handled, rejected, failed)] == ["info", "info", "warning"]
    assert (handled["events"], handled["version"]) == (1, 1)
    assert rejected["error"] == "domain_rejected"
    assert failed["error"] == "RuntimeError"
    assert [(e.kind, e.source) for e in errors.entries()] == [
        ("failed", "command pay.PayNow"),
        ("rejected", "command pay.PayNow"),
    ]


#: Hostile megabytes: each made the old URL pattern try a scheme at every position.
HOSTILE = """{
    "letters": "a" * 1_000_000,
    "schemes": "a://" * 250_000,
    "colons": "a://x:" + "b:" * 500_000,
    "user": "a://" + "b" * 1_000_000,
    "password": "a://b:" + "c" * 1_000_000,
    "pairs": "password=" * 100_000,
    "bearer": "Bearer" + " " * 1_000_000,
    "mixed": "x.y+z-" * 150_000,
}"""


def test_redacting_a_hostile_megabyte_is_linear() -> None:
    """Redacting and logging 1 MB of each hostile shape ends within a generous guard (a child
    process, so the guard holds even while a regex holds the GIL); the old pattern took
    half an hour on the first one."""
    probe = (
        "import logging\n"
        "from engine.observability.logging import JsonFormatter, TextFormatter, redact_text\n"
        f"hostile = {HOSTILE}\n"
        "for text in hostile.values():\n"
        "    redact_text(text)\n"
        "    made = logging.LogRecord('eskit.x', 20, 'x', 1, 'on %r: ' + text, (text,), None)\n"
        "    made.stream_id = text\n"
        "    JsonFormatter().format(made)\n"
        "    TextFormatter().format(made)\n"
        "print('done')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=False
    )
    assert (result.returncode, result.stdout.strip()) == (0, "done"), result.stderr


def test_long_values_are_cut_with_a_marker() -> None:
    """A 1 MB stream id shows as its first 300 characters and a marker, in arguments and fields."""
    stream_id = "a" * 1_000_000
    made = record("command on %r rejected", stream_id, stream_id=stream_id)
    line = json.loads(JsonFormatter().format(made))
    cut = "a" * MAX_VALUE_CHARS + f"...[{1_000_000 - MAX_VALUE_CHARS} more chars]"
    assert line["stream_id"] == cut
    assert line["message"] == f"command on '{cut}' rejected"
    assert TextFormatter().format(made).endswith(f"eskit.test: command on '{cut}' rejected")
    assert shorten("short id") == "short id"


def test_a_secret_across_the_cut_is_redacted_not_half_shown() -> None:
    """A value cut in the middle of a URL password shows no part of the password."""
    value = "x" * (MAX_VALUE_CHARS - 20) + " postgresql://app:hunter2hunter2hunter2@db/app"
    shown = shorten(value)
    assert "hunter" not in shown
    assert shown.endswith(" more chars]")


async def test_a_domain_rejection_logs_its_code_not_its_message() -> None:
    """A rejection's message may quote the payload: the log and the status page get its code."""
    registry = EventRegistry()
    registry.register(Paid, name="pay.Paid")
    stream = io.StringIO()
    logger = logging.getLogger("eskit.test.rejections")
    handler = configure_logging(
        logger=logger, stream=stream, json_format=True, level="INFO", environ={}
    )
    errors = RecentErrors()
    commands: CommandHandler[int, Pay, Paid] = CommandHandler(
        decider=payments,
        store=MemoryStore(Codec(registry)),
        middleware=[command_middleware(plugin="pay", errors=errors, logger=logger)],
    )
    try:
        with pytest.raises(DomainError):
            await commands.handle("acct-1", Pay(4242))
    finally:
        logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)
    [line] = [json.loads(text) for text in stream.getvalue().splitlines()]
    assert line["outcome"] == "rejected"
    assert line["message"].endswith(": DomainError (domain_rejected)")
    assert "4242" not in stream.getvalue()
    assert all("4242" not in entry.message for entry in errors.entries())


def test_a_repeated_warning_is_said_once_then_summarised() -> None:
    """A warning every 0.5 s (NATS gone, runners waiting) makes one line, then one per
    window saying how many were dropped; other templates and the access log pass."""
    stream = io.StringIO()
    logger = logging.getLogger("eskit.test.repeats")
    handler = configure_logging(
        logger=logger, stream=stream, level="INFO", environ={}, repeat_window=30.0
    )
    try:

        def warn(at: float, message: str, *args: Any, name: str = "eskit.locks.nats") -> None:
            made = logging.LogRecord(name, logging.WARNING, __file__, 1, message, args, None)
            made.created = at
            handler.handle(made)

        for tick in range(130):  # 65 s of a warning every half second, from two runners
            runner = f"runner-{tick % 2}"
            warn(1000 + tick * 0.5, "waiting for %r: NATS unavailable (%s)", runner, "refused")
        warn(1001, "lost the lease on %r: %s", "runner-0", "expired")
        warn(1002, "command %s failed", "Deposit", name="eskit.commands")
        warn(1003, "command %s failed", "Deposit", name="eskit.commands")
    finally:
        logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)
    lines = stream.getvalue().splitlines()
    waiting = [line for line in lines if "NATS unavailable" in line]
    assert len(waiting) == 3  # at 0 s, at 30 s and at 60 s
    assert waiting[0].endswith("'runner-0': NATS unavailable (refused)")
    assert waiting[1].endswith("(and 59 more like it since its last line)")
    assert waiting[2].endswith("(and 59 more like it since its last line)")
    assert sum("lost the lease" in line for line in lines) == 1
    assert sum("eskit.commands" in line for line in lines) == 2
