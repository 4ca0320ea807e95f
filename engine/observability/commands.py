"""A command middleware that logs, counts and maps every command.

:func:`command_middleware` wraps a :class:`~engine.handler.CommandHandler` (it is a
:data:`~engine.handler.Middleware`). For each command it:

* logs one line on ``eskit.commands`` with the structured fields ``stream_id``,
  ``command_type``, ``command_id``, ``node_id``, ``plugin``, ``outcome``,
  ``duration_ms`` (and ``events``/``version`` when handled, ``error`` otherwise):
  INFO when handled or rejected by the domain, WARNING when it failed. The command's
  payload and metadata are never logged, nor a domain rejection's message (it may quote
  the payload): a rejection shows its type and code;
* counts it on :class:`~engine.observability.metrics.EngineMetrics` as handled,
  rejected or failed, with its duration;
* records which event types the command produced on an
  :class:`~engine.observability.status.EventModel` (the status page's diagram);
* keeps failed and rejected commands in :class:`~engine.observability.status.RecentErrors`.

Durations come from Trio's clock. Profiling is the separate
:func:`~engine.middleware.profiler_middleware`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import trio

from engine.errors import DomainError
from engine.handler import CommandContext, CommandResult, Middleware, NextHandler
from engine.observability.logging import MAX_MESSAGE_CHARS, shorten

if TYPE_CHECKING:
    from engine.observability.metrics import EngineMetrics
    from engine.observability.status import EventModel, RecentErrors

__all__ = ["command_middleware"]


def command_middleware(
    *,
    plugin: str = "",
    names: Mapping[type, str] | None = None,
    node_id: str = "",
    metrics: EngineMetrics | None = None,
    model: EventModel | None = None,
    errors: RecentErrors | None = None,
    logger: logging.Logger | None = None,
    clock: Callable[[], float] = trio.current_time,
) -> Middleware:
    """A middleware that logs, counts and records every command it sees.

    Args:
        plugin: The plugin the handler belongs to (a label and a log field).
        names: Command class -> its name (the HTTP name); the class name otherwise.
        node_id: This node's id, added to every log line.
        metrics: Where commands are counted.
        model: Where command -> event type observations go.
        errors: Where failed and rejected commands are kept for the status page.
        logger: Defaults to ``eskit.commands``.
        clock: Seconds, monotonic (Trio's clock).
    """
    log = logger or logging.getLogger("eskit.commands")
    known = dict(names or {})

    async def middleware(
        context: CommandContext[Any], call_next: NextHandler
    ) -> CommandResult[Any, Any]:
        started = clock()
        command_type = known.get(type(context.command)) or type(context.command).__qualname__
        fields: dict[str, Any] = {
            "stream_id": context.stream_id,
            "command_type": command_type,
            "command_id": context.command_id,
            "node_id": node_id,
            "plugin": plugin,
        }
        try:
            result = await call_next(context)
        except Exception as exc:
            seconds = clock() - started
            rejected = isinstance(exc, DomainError)
            outcome = "rejected" if rejected else "failed"
            # A domain rejection's message may quote the command's payload ("balance 100,
            # withdrawal 500"): only its type and code are logged, never its text.
            reason = (
                f"{type(exc).__qualname__} ({exc.code})"
                if isinstance(exc, DomainError)
                else shorten(f"{type(exc).__qualname__}: {exc}", MAX_MESSAGE_CHARS)
            )
            if metrics is not None:
                metrics.command(plugin, command_type, outcome, seconds)
            if errors is not None:
                errors.add(
                    f"command {plugin}.{command_type}",
                    outcome,
                    f"{shorten(context.stream_id)!r}: {reason}",
                )
            log.log(
                logging.INFO if rejected else logging.WARNING,
                "command %s on %r %s after %.2f ms: %s",
                command_type,
                context.stream_id,
                outcome,
                seconds * 1000,
                reason,
                extra={
                    **fields,
                    "outcome": outcome,
                    "error": getattr(exc, "code", type(exc).__qualname__),
                    "duration_ms": seconds * 1000,
                },
            )
            raise
        seconds = clock() - started
        if metrics is not None:
            metrics.command(plugin, command_type, "handled", seconds)
        if model is not None and result.events and not result.duplicate:
            model.record_command(type(context.command), [event.type for event in result.events])
        if log.isEnabledFor(logging.INFO):
            log.info(
                "command %s on %r -> %d event(s), v%d%s in %.2f ms",
                command_type,
                context.stream_id,
                len(result.events),
                result.version,
                " (duplicate)" if result.duplicate else "",
                seconds * 1000,
                extra={
                    **fields,
                    "outcome": "handled",
                    "events": len(result.events),
                    "version": result.version,
                    "duplicate": result.duplicate,
                    "duration_ms": seconds * 1000,
                },
            )
        return result

    return middleware
