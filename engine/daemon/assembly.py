"""Assembling an engine from its config: the backends it opens, the command handlers
and the runners of its plugins, each projection set up as its live version.

:func:`open_engine <engine.daemon.engine.open_engine>` calls these in order and builds the
:class:`~engine.daemon.engine.Engine` once from what they return.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import attrs
import trio

from engine.bus.base import EventBus
from engine.codec import Codec
from engine.daemon.backends import (
    BUS_BACKENDS,
    LOCK_BACKENDS,
    SnapshotFactory,
    backend,
    open_nats_from_config,
    open_storage,
)
from engine.daemon.config import Config
from engine.drivers.nats import NatsConnection
from engine.errors import (
    PluginError,
)
from engine.handler import CommandHandler
from engine.middleware import profiler_middleware
from engine.observability.commands import command_middleware
from engine.observability.instrumented import (
    InstrumentedCheckpointStore,
    InstrumentedLocks,
    InstrumentedSnapshotStore,
    InstrumentedStore,
)
from engine.observability.metrics import EngineMetrics
from engine.observability.profiler import Profiler
from engine.observability.status import (
    EventModel,
    RecentErrors,
    observe_reactor,
)
from engine.plugin import (
    CommandBinding,
    Plugin,
    ProjectionContext,
    ProjectionDefinition,
    ProjectionSetup,
    Query,
)
from engine.reactor import ReactorRegistry
from engine.router import CommandRouter
from engine.runners.base import (
    ErrorPolicy,
    OnFailure,
    StartAt,
    TransactionalProjection,
)
from engine.runners.runner import AutomationRunner, ProjectionRunner, Runner
from engine.runners.versions import ProjectionVersions
from engine.stores.base import (
    CheckpointStore,
    DeadLetterStore,
    EventStore,
    SnapshotStore,
    SqlDatabase,
)
from engine.stores.memory import MemoryCheckpointStore

__all__ = [
    "CommandEntry",
    "LoadedPlugin",
    "Parts",
    "ProjectionEntry",
    "Runners",
    "assemble_runners",
    "command_handlers",
    "engine_version",
    "error_policy",
    "open_parts",
    "open_projection",
    "setup_projection",
]


def engine_version() -> str:
    from engine import __version__

    return __version__


def error_policy(config: Config) -> ErrorPolicy:
    policy = config.runners.error_policy
    if policy == "stop":
        return ErrorPolicy(retries=0, on_failure=OnFailure.STOP)
    on_failure = OnFailure.PARK if policy == "retry-then-park" else OnFailure.STOP
    return ErrorPolicy(retries=config.runners.max_retries, on_failure=on_failure)


@attrs.define(eq=False)
class CommandEntry:
    cls: type
    binding: CommandBinding
    handler: CommandHandler[Any, Any, Any]


@attrs.define(eq=False)
class LoadedPlugin:
    plugin: Plugin
    commands: dict[str, CommandEntry] = attrs.field(factory=dict)
    queries: dict[str, Query] = attrs.field(factory=dict)
    # query name -> the runner whose read model answers it (read-your-writes waits on it)
    query_runners: dict[str, str] = attrs.field(factory=dict)


@attrs.define(eq=False)
class ProjectionEntry:
    """What the engine needs to build a projection again (a rebuild, or following a
    switch made on another node)."""

    plugin: str
    definition: ProjectionDefinition
    context: ProjectionContext
    #: Where the live version is recorded (durable for a durable read model).
    versions: ProjectionVersions
    #: The read model is durable and its runner active on one node at a time.
    leased: bool = False
    #: Every node can read it (a table in the store's database); else only the node
    #: whose runner is active has it.
    shared: bool = False
    #: Serializes switching this node to another version.
    switching: trio.Lock = attrs.field(factory=trio.Lock)


async def setup_projection(
    definition_setup: Callable[[ProjectionContext], Any], context: ProjectionContext
) -> ProjectionSetup:
    setup = definition_setup(context)
    if inspect.isawaitable(setup):
        setup = await setup
    if not isinstance(setup, ProjectionSetup):
        raise PluginError(
            f"a projection setup returned {type(setup).__qualname__}, not ProjectionSetup"
        )
    return setup


async def open_projection(
    plugin: str,
    definition: ProjectionDefinition,
    context: ProjectionContext,
    checkpoints: CheckpointStore,
) -> tuple[ProjectionEntry, ProjectionSetup]:
    """Set a projection up as the version that is live for its code version.

    A durable read model serves and feeds the version recorded beside the checkpoints
    (the one the last rebuild switched to, on any node); an in-memory one starts afresh
    as the definition's version, with its checkpoint (and version record) in memory.
    """
    code = definition.version
    recorded = ProjectionVersions(checkpoints)
    live = await recorded.live(context.name, code)
    version = code if live is None else live
    setup = await setup_projection(definition.setup, attrs.evolve(context, version=version))
    # A transactional read model keeps its checkpoint with its rows: durable.
    transactional = isinstance(setup.handler, TransactionalProjection)
    durable = setup.durable or transactional
    if durable:
        versions = recorded
        resolved = await recorded.resolve(context.name, code)
    else:
        versions = ProjectionVersions(MemoryCheckpointStore())
        resolved = code
    if resolved != version:
        version = resolved
        setup = await setup_projection(definition.setup, attrs.evolve(context, version=version))
    shared = transactional if setup.shared is None else setup.shared
    entry = ProjectionEntry(
        plugin,
        definition,
        attrs.evolve(context, version=version),
        versions,
        leased=durable,
        shared=durable and shared,
    )
    return entry, setup


@attrs.frozen
class Parts:
    """The backends :func:`open_parts` opened, each wrapped by the instrumentation."""

    nats: NatsConnection | None
    store: InstrumentedStore[Any]
    #: The same store with a codec tolerant of unknown event types (``GET /events``).
    reader: EventStore[Any]
    checkpoints: CheckpointStore
    snapshots: SnapshotFactory | None
    bus: EventBus[Any]
    locks: InstrumentedLocks
    dead_letters: DeadLetterStore
    sql: SqlDatabase | None


async def open_parts(
    stack: AsyncExitStack,
    config: Config,
    codec: Codec[Any],
    profiler: Profiler,
    metrics: EngineMetrics,
) -> Parts:
    """Open NATS, the store's bundle, the bus and the locks on ``stack``; wrap each part
    of the bundle field by field (a backend without checkpoints gets them in memory)."""
    nats = await stack.enter_async_context(open_nats_from_config(config))
    storage = await stack.enter_async_context(open_storage(config, codec, nats=nats))
    store: InstrumentedStore[Any] = InstrumentedStore(
        storage.events, profiler=profiler, metrics=metrics
    )
    reader: EventStore[Any] = store
    if storage.reader is not storage.events:
        reader = InstrumentedStore(storage.reader, profiler=profiler, metrics=metrics)
    checkpoints = InstrumentedCheckpointStore(
        storage.checkpoints or MemoryCheckpointStore(), profiler=profiler, metrics=metrics
    )
    snapshots: SnapshotFactory | None = None
    if storage.snapshots is not None:
        make = storage.snapshots

        def snapshots(state_type: type[Any]) -> SnapshotStore[Any]:
            return InstrumentedSnapshotStore(make(state_type), profiler=profiler, metrics=metrics)

    bus: EventBus[Any] = await stack.enter_async_context(
        backend(BUS_BACKENDS, "bus", config.bus.backend)(config, nats)
    )
    locks = InstrumentedLocks(
        await stack.enter_async_context(
            backend(LOCK_BACKENDS, "locks", config.locks.backend)(config, nats, storage.native)
        )
    )
    return Parts(
        nats=nats,
        store=store,
        reader=reader,
        checkpoints=checkpoints,
        snapshots=snapshots,
        bus=bus,
        locks=locks,
        dead_letters=storage.dead_letters,
        sql=storage.sql,
    )


def command_handlers(
    plugins: Sequence[Plugin],
    parts: Parts,
    router: CommandRouter,
    *,
    node_id: str,
    observed: tuple[EngineMetrics, EventModel, RecentErrors, Profiler],
) -> tuple[dict[str, LoadedPlugin], list[tuple[str, CommandHandler[Any, Any, Any]]]]:
    """A command handler per decider binding, routed, and each plugin's commands."""
    metrics, model, errors, profiler = observed
    store = parts.store
    loaded_plugins: dict[str, LoadedPlugin] = {}
    handlers: list[tuple[str, CommandHandler[Any, Any, Any]]] = []
    for plugin in plugins:
        loaded = LoadedPlugin(plugin, queries=dict(plugin.queries))
        for binding in plugin.commands:
            state_types = {type(binding.decider.initial_state())}
            snapshots = None
            if binding.snapshot_every and parts.snapshots is not None:
                snapshots = parts.snapshots(state_types.pop())
            handler: CommandHandler[Any, Any, Any] = CommandHandler(
                decider=binding.decider,
                store=store,
                snapshots=snapshots,
                snapshot_every=binding.snapshot_every if snapshots is not None else 0,
                after_append=[parts.bus.publish],
                middleware=[
                    command_middleware(
                        plugin=plugin.name,
                        names={cls: name for name, cls in binding.command_names().items()},
                        node_id=node_id,
                        metrics=metrics,
                        model=model,
                        errors=errors,
                    ),
                    profiler_middleware(profiler),
                ],
            )
            handlers.append((plugin.name, handler))
            router.route_decider(handler)
            for name, cls in binding.command_names().items():
                loaded.commands[name] = CommandEntry(cls, binding, handler)
        loaded_plugins[plugin.name] = loaded
    return loaded_plugins, handlers


@attrs.frozen
class Runners:
    runners: dict[str, Runner[Any]]
    kinds: dict[str, str]
    projections: dict[str, ProjectionEntry]


async def assemble_runners(
    config: Config,
    plugins: Sequence[Plugin],
    loaded_plugins: Mapping[str, LoadedPlugin],
    parts: Parts,
    router: CommandRouter,
    model: EventModel,
) -> Runners:
    """A runner per projection (set up as its live version) and per automation.

    Raises:
        PluginError: A plugin names two queries alike.
    """
    context = ProjectionContext(
        store=parts.store,
        data_dir=Path(config.engine.data_dir),
        node_id=config.engine.node_id,
        sql=parts.sql,
    )
    common: dict[str, Any] = {
        "store": parts.store,
        "bus": parts.bus,
        "dead_letters": parts.dead_letters,
        "error_policy": error_policy(config),
        "batch_size": config.runners.batch_size,
        "poll_interval": config.runners.poll_interval,
    }
    made = Runners(runners={}, kinds={}, projections={})
    for plugin in plugins:
        loaded = loaded_plugins[plugin.name]
        for definition in plugin.projections:
            name = f"{plugin.name}.{definition.name}"
            entry, setup = await open_projection(
                plugin.name, definition, attrs.evolve(context, name=name), parts.checkpoints
            )
            made.projections[name] = entry
            for query_name, query in setup.queries.items():
                if query_name in loaded.queries:
                    raise PluginError(f"plugin {plugin.name!r}: two queries named {query_name!r}")
                loaded.queries[query_name] = query
                loaded.query_runners[query_name] = name
            made.kinds[name] = "projection"
            made.runners[name] = ProjectionRunner(
                name=name,
                handler=setup.handler,
                version=entry.context.version,
                # An in-memory read model starts empty, so it must start from the
                # beginning: its checkpoint lives in memory too. Only a durable read
                # model may resume from a stored checkpoint (under a lease).
                checkpoints=entry.versions.checkpoints,
                locks=parts.locks if entry.leased else None,
                start_at=StartAt(definition.start),
                **common,
            )
        for reactor_name, reactor in plugin.reactors.items():
            name = f"{plugin.name}.{reactor_name}"
            observed, sender = observe_reactor(reactor, router, model, name)
            registry: ReactorRegistry[Any] = ReactorRegistry(sender)
            registry.register(name, observed)
            made.kinds[name] = "automation"
            made.runners[name] = AutomationRunner(
                name=name,
                handler=registry.handle,
                checkpoints=parts.checkpoints,
                locks=parts.locks,
                start_at=StartAt(reactor.start),
                **common,
            )
    return made
