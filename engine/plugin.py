"""What a plugin declares: its events, its deciders and commands, read models, automations.

A plugin is a plain value. Publish it under the ``eskit.plugins`` entry-point group::

    [project.entry-points."eskit.plugins"]
    bank = "eskit_bank.plugin:plugin"

and the engine loads it (or name it in the config as ``module:attribute``). Nothing in a
plugin knows which store, bus or node it runs on: the same plugin runs on every tier.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from engine.codec import ORJSON, Codec, EventRegistry, make_converter
from engine.codec_types import type_problems
from engine.decider import Decider
from engine.errors import CodecError, PluginError
from engine.reactor import START_POSITIONS, Reactor, Start
from engine.stores.base import EventStore, SqlDatabase

__all__ = [
    "CommandBinding",
    "Plugin",
    "ProjectionContext",
    "ProjectionDefinition",
    "ProjectionSetup",
    "Query",
]

#: ``async def query(params) -> JSON-able value``; params are the URL's query parameters.
Query = Callable[[Mapping[str, str]], Awaitable[Any]]

_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")


def _check_name(_: object, attribute: attrs.Attribute[Any], value: str) -> None:
    if not _NAME.match(value):
        raise ValueError(
            f"{attribute.name} {value!r} must be lowercase letters, digits, '-' or '_', "
            "starting with a letter (at most 63 characters)"
        )


def _internal(value: bool | Collection[type]) -> bool | frozenset[type]:
    return value if isinstance(value, bool) else frozenset(value)


@attrs.frozen(kw_only=True)
class CommandBinding:
    """A decider and how the engine finds the stream of each of its commands.

    Args:
        decider: Must declare ``command_types`` (each becomes an HTTP command, by class name).
        stream_id: ``stream_id(command) -> str``, when the stream follows from the command;
            otherwise the request names the stream.
        snapshot_every: Save a state snapshot every N events of a stream (0 = never).
        names: Override the HTTP names of command classes (default: the class name).
        internal: Commands only the plugin's automations may send: ``True`` for all of
            the decider's commands, or a collection of command classes. The HTTP ingress
            (and a command forwarded by another node) answers them 404
            ``unknown_command``, as if they did not exist; reactors send them as usual.
    """

    decider: Decider[Any, Any, Any]
    stream_id: Callable[[Any], str] | None = None
    snapshot_every: int = 0
    names: Mapping[type, str] = attrs.field(factory=dict)
    internal: bool | frozenset[type] = attrs.field(default=False, converter=_internal)

    def __attrs_post_init__(self) -> None:
        if not self.decider.command_types:
            raise ValueError("a plugin's decider must declare its command_types")
        if not isinstance(self.internal, bool):
            strangers = [cls for cls in self.internal if cls not in self.decider.command_types]
            if strangers:
                names = ", ".join(getattr(cls, "__qualname__", repr(cls)) for cls in strangers)
                raise ValueError(f"internal names commands the decider does not handle: {names}")

    def is_internal(self, cls: type) -> bool:
        """True when ``cls`` may only be sent by the plugin's automations."""
        if isinstance(self.internal, bool):
            return self.internal
        return cls in self.internal

    def public_command_names(self) -> dict[str, type]:
        """HTTP name -> command class, for the commands the ingress accepts."""
        return {
            name: cls for name, cls in self.command_names().items() if not self.is_internal(cls)
        }

    def command_names(self) -> dict[str, type]:
        """HTTP name -> command class."""
        return {self.names.get(cls, cls.__name__): cls for cls in self.decider.command_types}


@attrs.frozen(kw_only=True)
class ProjectionContext:
    """What a projection gets to set itself up.

    Attributes:
        store: The engine's event store (read-only use: the runner feeds the events).
        data_dir: The engine's data folder, for read models kept in files.
        node_id: This node's id.
        sql: The SQL database of the engine's event store (SQLite or PostgreSQL), for a
            durable read model whose writes commit with its runner's checkpoint (hand
            a :class:`~engine.runners.base.TransactionalProjection` over it to the
            runner); ``None`` on stores without SQL (memory, NATS).
        name: The projection's name (``plugin.projection``).
        version: The projection's version: name a durable read model's tables after it
            (``balances_v2``), so a new version is built from the start of the log in
            tables of its own while the old ones stay as they were.
    """

    store: EventStore[Any]
    data_dir: Path
    node_id: str
    sql: SqlDatabase | None = None
    name: str = ""
    version: int = 1


@attrs.frozen(kw_only=True)
class ProjectionSetup:
    """A projection as set up by its plugin.

    Attributes:
        handler: What the runner feeds (an ``async def handle(event)``, a
            :class:`~engine.runners.base.BatchProjection` or a
            :class:`~engine.runners.base.TransactionalProjection`).
        queries: Named queries answering from this read model.
        durable: True when the read model survives a restart (a database table); then the
            runner's checkpoint is saved in the store. An in-memory read model is not
            durable: it is rebuilt from the start of the log on every start, and its
            checkpoint is kept in memory so that it is never skipped ahead.
        shared: For a durable read model: every node can read it (a table in the
            store's database, an external database), so a node whose runner stands by
            answers its queries (and waits for positions on the checkpoint the active
            node saves). When False, only the node whose runner is active has the read
            model, and the others refuse its queries with ``not_active``. By default
            True for a :class:`~engine.runners.base.TransactionalProjection` (its
            tables are in the store's database), False otherwise.
    """

    handler: Any
    queries: Mapping[str, Query] = attrs.field(factory=dict)
    durable: bool = False
    shared: bool | None = None


@attrs.frozen(kw_only=True)
class ProjectionDefinition:
    """A named read model: ``setup(context)`` builds it when the engine starts.

    Args:
        name: The projection's name (``plugin.name`` in URLs and ``/runners``).
        setup: Builds the read model for a :class:`ProjectionContext`.
        version: The read model's code version: bump it when its shape or meaning
            changes, and the engine builds it anew from the start of the log.
        start: Where its runner starts with no checkpoint yet: ``"beginning"`` (the
            whole log) or ``"end"`` (only events stored after it first starts; an
            in-memory read model, which starts without a checkpoint every time,
            then sees only what is stored after each start). A rebuild always reads
            the whole log.
    """

    name: str = attrs.field(validator=_check_name)
    setup: Callable[[ProjectionContext], ProjectionSetup | Awaitable[ProjectionSetup]]
    version: int = 1
    start: Start = attrs.field(default="beginning", validator=attrs.validators.in_(START_POSITIONS))


@attrs.frozen(kw_only=True)
class Plugin:
    """A domain plugin.

    Args:
        name: The plugin's name in URLs and config (lowercase).
        events: The registry of its event types (names must not clash with other plugins').
        commands: Its deciders, each with its command routing.
        projections: Its read models.
        reactors: Its automations, by name.
        queries: Queries that need no projection of their own.
        description: One line for ``eskit plugins``.
    """

    name: str = attrs.field(validator=_check_name)
    events: EventRegistry
    commands: Sequence[CommandBinding] = ()
    projections: Sequence[ProjectionDefinition] = ()
    reactors: Mapping[str, Reactor[Any]] = attrs.field(factory=dict)
    queries: Mapping[str, Query] = attrs.field(factory=dict)
    description: str = ""

    def __attrs_post_init__(self) -> None:
        seen: dict[str, type] = {}
        for binding in self.commands:
            for name, cls in binding.command_names().items():
                if name in seen:
                    raise ValueError(f"plugin {self.name!r}: two commands are named {name!r}")
                seen[name] = cls
        names = [p.name for p in self.projections]
        if len(names) != len(set(names)):
            raise ValueError(f"plugin {self.name!r}: projection names must be unique")
        for reactor_name in self.reactors:
            _check_name(None, attrs.fields(ProjectionDefinition).name, reactor_name)
        self.check_codec()

    def check_codec(self) -> None:
        """Check that every event, command and state type of the plugin can be encoded
        and decoded by the engine's codec, before anything runs.

        Each class's field types are checked without an instance (see
        :func:`~engine.codec_types.type_problems`); each decider's initial state is also
        encoded and decoded for real (as a snapshot would be) and must come back equal.

        Raises:
            PluginError: One line naming the plugin, the class and the field.
        """
        converter = make_converter()
        checked: set[type] = set()
        problems: list[str] = []

        def check(kind: str, cls: type) -> None:
            if cls in checked:
                return
            checked.add(cls)
            # An attrs class's or dataclass's problems start with the field's path.
            fields = attrs.has(cls) or dataclasses.is_dataclass(cls)
            for problem in type_problems(cls, converter):
                where = "field " if fields else ""
                problems.append(f"{kind} {cls.__qualname__}: {where}{problem}")

        for name in self.events.names():
            check("event", self.events.class_for(name))
        codec: Codec[Any] = Codec(EventRegistry(), format=ORJSON)
        for binding in self.commands:
            for cls in binding.decider.command_types:
                check("command", cls)
            state = binding.decider.initial_state()
            state_type = type(state)
            check("state", state_type)
            if problems:
                continue
            try:
                again = codec.decode_value(codec.encode_value(state), state_type)
            except CodecError as exc:
                problems.append(f"state {state_type.__qualname__}: {exc}")
                continue
            if getattr(state_type, "__eq__", None) is not object.__eq__ and again != state:
                problems.append(
                    f"state {state_type.__qualname__}: the initial state does not survive "
                    f"encoding and decoding ({state!r} came back as {again!r})"
                )
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise PluginError(f"plugin {self.name!r}: {problems[0]}{more}")
