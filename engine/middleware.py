"""Ready-made middleware for :class:`~engine.handler.CommandHandler`.

A middleware is ``async def middleware(context, call_next) -> CommandResult``: it may look
at or change the :class:`~engine.handler.CommandContext`, call ``call_next(context)``
zero or one time, and return (or replace) its result. Add them with
``handler.use(...)`` or ``CommandHandler(middleware=[...])``; the first is outermost.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

import trio

from engine.handler import CommandContext, CommandResult, Middleware, NextHandler
from engine.locks.base import LockRegistry

__all__ = ["Profiler", "logging_middleware", "profiler_middleware", "single_writer_middleware"]


def logging_middleware(logger: logging.Logger | None = None) -> Middleware:
    """Log every command with its stream, type, id, outcome and duration.

    Commands that succeed log at INFO, rejected or failed ones at WARNING. Command
    payloads and metadata are never logged (they may hold personal data or secrets).
    """
    log = logger or logging.getLogger("eskit.commands")

    async def middleware(
        context: CommandContext[Any], call_next: NextHandler
    ) -> CommandResult[Any, Any]:
        started = trio.current_time()
        command_type = type(context.command).__qualname__
        try:
            result = await call_next(context)
        except Exception as exc:
            log.warning(
                "command %s on %r failed after %.2f ms: %s: %s",
                command_type,
                context.stream_id,
                (trio.current_time() - started) * 1000,
                type(exc).__qualname__,
                exc,
                extra={
                    "stream_id": context.stream_id,
                    "command_type": command_type,
                    "command_id": context.command_id,
                },
            )
            raise
        log.info(
            "command %s on %r -> %d event(s), v%d%s in %.2f ms",
            command_type,
            context.stream_id,
            len(result.events),
            result.version,
            " (duplicate)" if result.duplicate else "",
            (trio.current_time() - started) * 1000,
            extra={
                "stream_id": context.stream_id,
                "command_type": command_type,
                "command_id": context.command_id,
            },
        )
        return result

    return middleware


class Profiler(Protocol):
    """Anything that records how long an operation took."""

    def record(self, operation: str, seconds: float, *, ok: bool) -> None: ...


def profiler_middleware(profiler: Profiler, *, prefix: str = "command.") -> Middleware:
    """Record each command's duration as ``prefix + command class name`` on ``profiler``.

    Durations come from Trio's clock, so they are exact under a virtual clock in tests.
    """

    async def middleware(
        context: CommandContext[Any], call_next: NextHandler
    ) -> CommandResult[Any, Any]:
        started = trio.current_time()
        operation = prefix + type(context.command).__qualname__
        ok = False
        try:
            result = await call_next(context)
            ok = True
            return result
        finally:
            profiler.record(operation, trio.current_time() - started, ok=ok)

    return middleware


def single_writer_middleware(registry: LockRegistry) -> Middleware:
    """Hold the stream's lock from ``registry`` while its command is handled.

    Commands for one stream then run one at a time (on one node with
    :class:`~engine.locks.memory.MemoryLockRegistry`, across nodes with a distributed
    registry), so they stop conflicting and retrying. Optimistic concurrency stays on
    underneath: it is the final fence against a holder whose lease has expired.
    """

    async def middleware(
        context: CommandContext[Any], call_next: NextHandler
    ) -> CommandResult[Any, Any]:
        async with registry.hold(context.stream_id):
            return await call_next(context)

    return middleware
