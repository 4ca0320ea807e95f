"""Routing commands to their handlers by command class: the in-process command sender."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from engine.errors import UnknownCommandError
from engine.handler import CommandHandler, CommandResult

__all__ = ["CommandRouter"]


@attrs.define
class CommandRouter:
    """Sends each command to the :class:`~engine.handler.CommandHandler` of its class.

    A router is a :class:`~engine.reactor.CommandSender`, so reactors can send through it.
    """

    _routes: dict[type, CommandHandler[Any, Any, Any]] = attrs.field(factory=dict, init=False)

    def route(self, command_type: type, handler: CommandHandler[Any, Any, Any]) -> None:
        """Send commands of ``command_type`` (and its subclasses) to ``handler``.

        Raises:
            ValueError: ``command_type`` is routed already.
        """
        if command_type in self._routes:
            raise ValueError(f"{command_type.__qualname__} is routed already")
        self._routes[command_type] = handler

    def route_decider(self, handler: CommandHandler[Any, Any, Any]) -> None:
        """Route every class in ``handler.decider.command_types`` to ``handler``."""
        if not handler.decider.command_types:
            raise ValueError("the handler's decider declares no command_types")
        for command_type in handler.decider.command_types:
            self.route(command_type, handler)

    def handler_for(self, command: Any) -> CommandHandler[Any, Any, Any]:
        """The handler routed for ``command``'s class (or its nearest routed base class)."""
        for cls in type(command).__mro__:
            handler = self._routes.get(cls)
            if handler is not None:
                return handler
        raise UnknownCommandError(f"no handler is routed for {type(command).__qualname__}")

    async def __call__(
        self,
        stream_id: str,
        command: Any,
        *,
        command_id: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> CommandResult[Any, Any]:
        return await self.handler_for(command).handle(
            stream_id, command, command_id=command_id, metadata=metadata
        )
