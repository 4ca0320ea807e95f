"""The engine: one Trio nursery hosting the store, bus, locks, runners and HTTP ingress.

``async with open_engine(config) as engine:`` opens the store, loads the plugins, builds a
command handler per decider, starts a supervised runner per projection and automation,
then the HTTP server. Leaving the block shuts down in reverse order: the ingress stops
taking requests, the runners are cancelled (their checkpoints make that safe), the store
closes.

Backends come from tables of ``open_*`` factories keyed by the config
(:data:`STORE_BACKENDS`, :data:`BUS_BACKENDS`, :data:`LOCK_BACKENDS`). One NATS
connection is shared by every NATS backend and by cluster command routing; with
``[nats] embedded = true`` it goes to a ``nats-server`` the engine runs under its
supervisor (:mod:`engine.drivers.nats_server`). With shared locks and NATS, commands are
routed to the node that owns their stream (:mod:`engine.cluster`).

Observability (:mod:`engine.observability`): the store and the lock registry are
wrapped so that every store call is profiled, counted and logged and the held leases are
known; every command handler logs, counts and profiles its commands; the metrics live in
the engine's own Prometheus registry; a sampler keeps the runners' recent lag and
throughput for the status page.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import Any

import attrs
import cattrs
import trio

from engine.bus.base import EventBus
from engine.cluster import ClusterRouter, CommandRequest, open_cluster_router
from engine.codec import ORJSON, Codec, explain_structure_error, make_converter
from engine.daemon.assembly import (
    CommandEntry,
    LoadedPlugin,
    Parts,
    ProjectionEntry,
    assemble_runners,
    command_handlers,
    engine_version,
    open_parts,
)
from engine.daemon.backends import (
    BUS_BACKENDS,
    DEAD_LETTER_BACKENDS,
    LOCK_BACKENDS,
    NATS_SERVER_POLICY,
    STORE_BACKENDS,
    nats_connect_options,
    open_nats_from_config,
    open_store_from_config,
)
from engine.daemon.config import Config
from engine.daemon.http import run_ingress
from engine.daemon.plugins import load_plugins, merged_registry
from engine.daemon.presenters import StatusSources, status_document
from engine.daemon.raw_events import UnknownEventData
from engine.daemon.rebuilds import Rebuilds, RebuildStatus
from engine.errors import (
    ConfigError,
    EskitError,
    InvalidCommandError,
    InvalidParameterError,
    NotActiveError,
    NotCaughtUpError,
    StreamIdRequiredError,
    UnknownCommandError,
    UnknownPluginError,
    UnknownQueryError,
    UnknownStreamError,
)
from engine.events import Event
from engine.groups import unwrap_lone_errors
from engine.locks.memory import MemoryLockRegistry
from engine.observability.instrumented import (
    InstrumentedLocks,
)
from engine.observability.logging import redact_text
from engine.observability.metrics import CONTENT_TYPE, EngineMetrics, MetricSources
from engine.observability.profiler import Profiler
from engine.observability.status import (
    EventModel,
    RecentErrors,
    RunnerHistory,
)
from engine.plugin import (
    Plugin,
)
from engine.router import CommandRouter
from engine.runners.base import (
    RunnerState,
    RunnerStatistics,
)
from engine.runners.memory import MemoryDeadLetterStore
from engine.runners.runner import ProjectionRunner, Runner
from engine.runners.supervisor import run_supervised
from engine.stores.base import (
    DeadLetter,
    DeadLetterStore,
)
from engine.stores.dead_letter_encoding import letter_document

__all__ = [
    "BUS_BACKENDS",
    "DEAD_LETTER_BACKENDS",
    "LOCK_BACKENDS",
    "NATS_SERVER_POLICY",
    "STORE_BACKENDS",
    "Engine",
    "merged_registry",
    "nats_connect_options",
    "open_engine",
    "open_nats_from_config",
    "open_store_from_config",
]

logger = logging.getLogger("eskit.engine")

#: How long a query with ``wait_for_position`` waits for its read model (seconds).
READ_YOUR_WRITES_TIMEOUT = 5.0


@attrs.define(eq=False)
class Engine:
    """A running engine (what :func:`open_engine` yields). Implements the HTTP ingress's
    :class:`~engine.daemon.http.EngineApi`."""

    config: Config
    store: Any
    codec: Codec[Any]
    bus: EventBus[Any]
    router: CommandRouter
    plugins: dict[str, LoadedPlugin]
    runners: dict[str, Runner[Any]] = attrs.field(factory=dict)
    http_urls: list[str] = attrs.field(factory=list)
    #: Leases this node holds (the lock registry the runners use).
    locks: InstrumentedLocks = attrs.field(
        factory=lambda: InstrumentedLocks(MemoryLockRegistry()), kw_only=True
    )
    #: Where the runners park events (durable beside the events, see
    #: :data:`DEAD_LETTER_BACKENDS`).
    dead_letters: DeadLetterStore = attrs.field(factory=MemoryDeadLetterStore, kw_only=True)
    profiler: Profiler = attrs.field(factory=Profiler, kw_only=True)
    metrics: EngineMetrics = attrs.field(factory=EngineMetrics, kw_only=True)
    model: EventModel = attrs.field(factory=EventModel, kw_only=True)
    errors: RecentErrors = attrs.field(factory=RecentErrors, kw_only=True)
    history: RunnerHistory = attrs.field(factory=RunnerHistory, kw_only=True)
    #: Runner name -> ``projection`` or ``automation``.
    runner_kinds: dict[str, str] = attrs.field(factory=dict, kw_only=True)
    #: When the engine started (Trio clock).
    started_at: float = attrs.field(default=0.0, kw_only=True)
    #: Routes commands to their stream's owner (``None`` on a single node).
    cluster: ClusterRouter | None = attrs.field(default=None, kw_only=True)
    #: Projection name -> how it was set up.
    projections: dict[str, ProjectionEntry] = attrs.field(factory=dict, kw_only=True)
    #: Projection name -> its last rebuild on this node (state, versions, progress).
    #: The store as GET /events and /streams read it (unknown types shown raw).
    reader: Any = attrs.field(default=None, kw_only=True)
    #: Rebuilds and version switches of the projections (a service open_engine runs).
    projection_versions: Rebuilds = attrs.field(kw_only=True)
    _commands_converter: cattrs.Converter = attrs.field(
        factory=lambda: make_converter(forbid_extra_keys=True)
    )

    # -- commands and queries ---------------------------------------------------------

    async def send_command(
        self,
        plugin: str,
        command: str,
        *,
        stream_id: str | None,
        data: Mapping[str, Any],
        command_id: str | None,
    ) -> dict[str, Any]:
        """Structure ``data`` into the named command, handle it, and describe the result.

        In a cluster the command runs on the node that owns its stream (see
        :mod:`engine.cluster`); the result looks the same wherever it ran.

        Raises:
            UnknownOutcomeError: It was forwarded to its owner and no reply came in
                time; send it again with the error's ``command_id``.
        """
        entry, value, stream_id = self._prepare(plugin, command, stream_id, data)
        if self.cluster is not None:
            return await self.cluster.send(
                CommandRequest(
                    plugin=plugin,
                    command=command,
                    stream_id=stream_id,
                    data=dict(data),
                    command_id=command_id,
                )
            )
        return await self._handle(entry, value, stream_id, command_id)

    async def handle_local(self, request: CommandRequest) -> dict[str, Any]:
        """Handle a command on this node (what the cluster router calls)."""
        entry, value, stream_id = self._prepare(
            request.plugin, request.command, request.stream_id, request.data
        )
        return await self._handle(entry, value, stream_id, request.command_id)

    def describe_error(self, error: BaseException) -> str:
        """The message sent back for a forwarded command's error (its codes go with it):
        an engine error's own, an internal error's logged here and not sent."""
        if not isinstance(error, EskitError):
            logger.error("a forwarded command failed", exc_info=error)
            return f"internal error on node {self.config.engine.node_id!r}"
        return getattr(error, "message", None) or str(error)

    def cluster_status(self) -> dict[str, Any]:
        """What command routing did on this node (``GET /cluster``)."""
        if self.cluster is None:
            return {"node_id": self.config.engine.node_id, "routing": False}
        return {
            "node_id": self.config.engine.node_id,
            "routing": True,
            **attrs.asdict(self.cluster.statistics()),
        }

    def _prepare(
        self, plugin: str, command: str, stream_id: str | None, data: Mapping[str, Any]
    ) -> tuple[CommandEntry, Any, str]:
        loaded = self._plugin(plugin)
        entry = loaded.commands.get(command)
        if entry is None or entry.binding.is_internal(entry.cls):
            # An internal command is for the plugin's automations: from outside it does
            # not exist.
            public = (n for n, e in loaded.commands.items() if not e.binding.is_internal(e.cls))
            known = ", ".join(sorted(public)) or "none"
            raise UnknownCommandError(
                f"plugin {plugin!r} has no command {command!r} (has: {known})"
            )
        try:
            value: Any = self._commands_converter.structure(dict(data), entry.cls)
        except Exception as exc:
            raise InvalidCommandError(command, explain_structure_error(exc, path="data")) from None
        if stream_id is None:
            if entry.binding.stream_id is None:
                raise StreamIdRequiredError(f"{command} needs a stream_id")
            stream_id = entry.binding.stream_id(value)
        return entry, value, stream_id

    async def _handle(
        self, entry: CommandEntry, value: Any, stream_id: str, command_id: str | None
    ) -> dict[str, Any]:
        result = await entry.handler.handle(stream_id, value, command_id=command_id)
        return {
            "stream_id": stream_id,
            "version": result.version,
            "duplicate": result.duplicate,
            "state": self._plain(result.state),
            "events": [self.event_json(event) for event in result.events],
        }

    async def run_query(self, plugin: str, query: str, params: Mapping[str, str]) -> Any:
        """Run a plugin's named query.

        With the parameter ``wait_for_position=P`` (a position a command returned), the
        query first waits until its read model has handled position P: read-your-writes.
        It waits at most ``READ_YOUR_WRITES_TIMEOUT`` seconds.

        On a node whose runner stands by (another node's runner is active), a shared
        read model (a table in the store's database) answers as on the active node: the
        query first follows a version switch made elsewhere, and waits on the checkpoint
        the active runner saves. A read model that only the active node has is refused.

        Raises:
            NotCaughtUpError: The read model did not reach ``wait_for_position`` in time.
            NotActiveError: The read model is kept only on the node whose runner is
                active, and that is another node.
            UnknownPluginError: No plugin of that name.
            UnknownQueryError: The plugin has no such query.
            InvalidParameterError: ``wait_for_position`` is not an integer.
        """
        loaded = self._plugin(plugin)
        func = loaded.queries.get(query)
        if func is None:
            known = ", ".join(sorted(loaded.queries)) or "none"
            raise UnknownQueryError(f"plugin {plugin!r} has no query {query!r} (has: {known})")
        params = dict(params)
        wanted = params.pop("wait_for_position", None)
        runner_name = loaded.query_runners.get(query)
        position = None
        if wanted is not None and runner_name is not None:
            try:
                position = int(wanted)
            except ValueError:
                raise InvalidParameterError(
                    "wait_for_position", "wait_for_position must be an integer"
                ) from None
        if runner_name is not None:
            runner = self.runners[runner_name]
            entry = self.projections[runner_name]
            if entry.leased and runner.following:
                if not entry.shared:
                    owner = await self.locks.owner(runner.lease_key)
                    if owner is not None and owner != self.config.engine.node_id:
                        raise NotActiveError(runner_name, owner)
                else:
                    # Serve (and wait on) the version switched to elsewhere, if any.
                    await self.follow_projection(runner_name)
            if position is not None:
                with trio.move_on_after(READ_YOUR_WRITES_TIMEOUT) as waited:
                    await runner.wait_caught_up(position, shared=entry.shared)
                if waited.cancelled_caught:
                    reached = runner.statistics().checkpoint
                    raise NotCaughtUpError(position, reached, what=runner_name)
            # Looked up again after the waits: a switch to another version while this
            # query waited swapped the query with the checkpoint it waited on (the one
            # looked up before would read the old version's tables, fed no more).
            func = loaded.queries[query]
        return self._plain(await func(params))

    async def read_stream(self, stream_id: str, *, after: int, limit: int) -> dict[str, Any]:
        """A page of one stream's events, as JSON-ready dicts.

        Raises:
            UnknownStreamError: The stream has no events at all (a page past the end of
                a stream that has events is empty, not an error).
        """
        events = await (self.reader or self.store).load(stream_id, after_version=after, limit=limit)
        # No events from the start of a page of at least one: the stream has none.
        settled = after <= 0 and limit > 0
        if not events and (settled or await self.store.stream_version(stream_id) == 0):
            raise UnknownStreamError(f"no stream {stream_id!r}: it has no events")
        return {"stream_id": stream_id, "events": [self.event_json(e) for e in events]}

    async def read_log(self, *, after: int, limit: int) -> dict[str, Any]:
        """A page of the global log, as JSON-ready dicts."""
        events = await (self.reader or self.store).read_all(
            after_position=after, limit=max(limit, 1)
        )
        head = await self.store.head_position()
        return {"head": head, "events": [self.event_json(e) for e in events]}

    # -- dead letters -----------------------------------------------------------------

    async def list_dead_letters(self, runner: str | None = None) -> dict[str, Any]:
        """The parked events, JSON-ready, with their count per runner (``GET /dead-letters``).

        Args:
            runner: Only this runner's: its checkpoint name as listed (``plugin.name@1``
                for a projection), or the runner's name (``plugin.name``) for its current
                version.
        """
        if runner is not None and runner in self.runners:
            runner = self.runners[runner].checkpoint_name
        try:
            letters = await self.dead_letters.dead_letters(runner)
        except ValueError as exc:
            raise InvalidParameterError("runner", str(exc)) from None
        counts: dict[str, int] = {}
        for letter in letters:
            counts[letter.runner] = counts.get(letter.runner, 0) + 1
        return {
            "total": len(letters),
            "runners": counts,
            "dead_letters": [self.dead_letter_json(letter) for letter in letters],
        }

    async def discard_dead_letter(self, runner: str, position: int) -> bool:
        """Forget one parked event once it was dealt with (``DELETE
        /dead-letters/{runner}/{position}``); ``False`` if there is none at that key."""
        try:
            discarded = await self.dead_letters.discard(runner, position)
        except ValueError as exc:
            raise InvalidParameterError("runner", str(exc)) from None
        if discarded:
            logger.info("dead letter of %r at position %d discarded", runner, position)
        return discarded

    @staticmethod
    def dead_letter_json(letter: DeadLetter) -> dict[str, Any]:
        """A dead letter as a JSON-ready dict (the reason redacted like the logs')."""
        return {**letter_document(letter), "reason": redact_text(letter.reason)}

    # -- status -----------------------------------------------------------------------

    def runners_status(self) -> dict[str, Any]:
        """Every runner's statistics, JSON-ready (projections with their live version
        and their last rebuild on this node)."""
        status = {}
        for name, runner in self.runners.items():
            entry = self._plain(runner.statistics())
            if isinstance(runner, ProjectionRunner):
                entry["version"] = runner.version
                rebuild = self.rebuilds.get(name)
                entry["rebuild"] = None if rebuild is None else rebuild.to_json()
            status[name] = entry
        return status

    # -- rebuilding ---------------------------------------------------------------------

    @property
    def rebuilds(self) -> Mapping[str, RebuildStatus]:
        """The last rebuild of each projection on this node."""
        return self.projection_versions.statuses

    async def rebuild_projection(self, name: str) -> dict[str, Any]:
        """Start building projection ``name`` again from position 0, beside the live one.

        The new version (a number never used before, taken durably first, see
        :class:`~engine.runners.versions.ProjectionVersions`) is set up afresh by its
        plugin (for a SQL read model, in tables of that version) and fed from the start
        of the log while the live version keeps answering. Once it has caught up the
        runner switches to it, and the projection's queries with it, between two
        batches; the switch is recorded beside the checkpoints first, so restarts and
        the other nodes serve the new version too. Progress is in
        :meth:`runners_status` (``rebuild``).

        Raises:
            UnknownProjectionError: No projection of that name.
            RebuildInProgressError: A rebuild of it runs already.
            RebuildNotActiveError: This node is not its active runner (another node
                holds its lease).
            NotRunningError: The engine is not running its runners.
        """
        status = await self.projection_versions.start(name)
        return {"projection": name, **status.to_json()}

    async def follow_projection(self, name: str) -> bool:
        """Bring projection ``name`` on this node to the version recorded as live (see
        :meth:`~engine.daemon.rebuilds.Rebuilds.follow`); ``True`` when it switched."""
        return await self.projection_versions.follow(name)

    def ready(self) -> tuple[bool, dict[str, Any]]:
        """Ready when every runner runs (or stands by) and lags at most ``runners.ready_lag``."""
        details = {}
        ready = True
        for name, runner in self.runners.items():
            stats = runner.statistics()
            ok = stats.state in (
                RunnerState.LIVE,
                RunnerState.CATCHING_UP,
                RunnerState.STANDBY,
            ) and (stats.lag <= self.config.runners.ready_lag)
            ready = ready and ok
            details[name] = {"ready": ok, "state": stats.state.value, "lag": stats.lag}
        return ready, details

    def runner_statistics(self) -> dict[str, RunnerStatistics]:
        """Every runner's statistics, by name."""
        return {name: runner.statistics() for name, runner in self.runners.items()}

    def metrics_text(self) -> str:
        """Prometheus exposition text of the engine's metrics (see
        :mod:`engine.observability.metrics`)."""
        return self.metrics.exposition().decode()

    def metrics_content_type(self) -> str:
        """The ``content-type`` of :meth:`metrics_text`."""
        return CONTENT_TYPE

    async def status(self) -> dict[str, Any]:
        """What the status page shows (``GET /status.json``)."""
        return await status_document(
            StatusSources(
                node_id=self.config.engine.node_id,
                backend=self.config.store.backend,
                started_at=self.started_at,
                store=self.store,
                locks=self.locks,
                runners=self.runners,
                runner_kinds=self.runner_kinds,
                dead_letters=self.dead_letters,
                history=self.history,
                model=self.model,
                errors=self.errors,
                profiler=self.profiler,
            )
        )

    def profiler_json(self) -> dict[str, Any]:
        """The profiler's percentiles and degradations (``GET /profiler``)."""
        return self.profiler.to_json()

    # -- helpers ----------------------------------------------------------------------

    def event_json(self, event: Event[Any]) -> dict[str, Any]:
        """A stored event as a JSON-ready dict (a type no plugin knows: its payload as
        stored, with ``"unknown_type": true``)."""
        unknown = isinstance(event.data, UnknownEventData)
        document = {
            "stream_id": event.stream_id,
            "version": event.version,
            "position": event.position,
            "type": event.type,
            "data": event.data.payload if unknown else self._plain(event.data),
            "metadata": dict(event.metadata),
            "event_id": str(event.event_id),
            "recorded_at": event.recorded_at.isoformat(),
        }
        if unknown:
            document["unknown_type"] = True
        return document

    def _plain(self, value: Any) -> Any:
        return self.codec._conv.unstructure(value)

    def _plugin(self, name: str) -> LoadedPlugin:
        loaded = self.plugins.get(name)
        if loaded is None:
            known = ", ".join(sorted(self.plugins)) or "none"
            raise UnknownPluginError(f"no plugin {name!r} (loaded: {known})")
        return loaded


def _configured_plugins(config: Config) -> Sequence[Plugin]:
    """The plugins ``[plugins]`` selects (entry points, paths and modules)."""
    return load_plugins(
        config.plugins.enabled,
        paths=config.plugins.paths,
        modules=config.plugins.modules,
        settings=config.plugins.settings,
    )


def _open_routing(engine: Engine, parts: Parts) -> AbstractAsyncContextManager[ClusterRouter]:
    """Cluster command routing: this node's commands go to their stream's owner."""
    config = engine.config
    if parts.nats is None:
        raise ConfigError("cluster command routing needs a NATS connection ([nats] url)")
    return open_cluster_router(
        parts.nats,
        parts.locks,
        node_id=config.engine.node_id,
        namespace=config.store.namespace,
        handle_local=engine.handle_local,
        describe_error=engine.describe_error,
        forward_timeout=config.cluster.forward_timeout,
        idle_release=config.cluster.idle_release,
        take_timeout=config.cluster.take_timeout,
    )


async def _start_runners(nursery: trio.Nursery, engine: Engine, rebuilds: Rebuilds) -> None:
    """Every runner under the supervisor, the history sampler, the followers of version
    switches made elsewhere (where a runner is leased) and the rebuild service."""
    for name, runner in engine.runners.items():
        await nursery.start(functools.partial(run_supervised, name=name), runner.run)
    await nursery.start(engine.history.run, engine.runner_statistics, engine.errors)
    if any(entry.leased for entry in engine.projections.values()) or any(
        runner.locks is not None for runner in engine.runners.values()
    ):
        await nursery.start(
            functools.partial(run_supervised, name="followers"), rebuilds.run_followers
        )
    await nursery.start(rebuilds.run)


@unwrap_lone_errors
@asynccontextmanager
async def open_engine(
    config: Config, *, plugins: Sequence[Plugin] | None = None
) -> AsyncIterator[Engine]:
    """Run an engine for the duration of the ``async with`` block.

    Args:
        config: The configuration (``Config()`` is the embedded default).
        plugins: The plugins to run; by default those the config selects from the
            installed ``eskit.plugins`` entry points (plus ``plugins.modules``).

    Resource handling:
        The store opens first and closes last; runners run under the supervisor in a
        nursery owned by this context manager; the HTTP server runs in an inner nursery
        that is cancelled first on the way out.

    Error handling:
        A plugin that fails to load raises :class:`~engine.errors.PluginError` before
        anything starts. A runner that fails more often than its restart policy allows
        raises :class:`~engine.runners.supervisor.ServiceFailedError` out of the block.
    """
    if plugins is None:
        plugins = _configured_plugins(config)
    codec: Codec[Any] = Codec(merged_registry(plugins), format=ORJSON)
    node_id = config.engine.node_id
    profiler = Profiler()
    metrics = EngineMetrics(node_id=node_id, version=engine_version())
    model = EventModel.from_plugins(plugins)
    errors = RecentErrors()
    async with AsyncExitStack() as stack:
        parts = await open_parts(stack, config, codec, profiler, metrics)
        router = CommandRouter()
        loaded, handlers = command_handlers(
            plugins, parts, router, node_id=node_id, observed=(metrics, model, errors, profiler)
        )
        assembly = await assemble_runners(config, plugins, loaded, parts, router, model)
        rebuilds = Rebuilds(
            parts.store,
            loaded,
            assembly.projections,
            assembly.runners,
            poll_interval=config.runners.poll_interval,
        )
        # Built once, with every plugin, projection and runner in place.
        engine = Engine(
            config,
            parts.store,
            codec,
            parts.bus,
            router,
            loaded,
            assembly.runners,
            locks=parts.locks,
            dead_letters=parts.dead_letters,
            profiler=profiler,
            metrics=metrics,
            model=model,
            errors=errors,
            runner_kinds=assembly.kinds,
            started_at=trio.current_time(),
            projections=assembly.projections,
            reader=parts.reader,
            projection_versions=rebuilds,
        )
        if config.routes_commands():
            engine.cluster = await stack.enter_async_context(_open_routing(engine, parts))
        metrics.watch(
            MetricSources(
                runners=engine.runner_statistics,
                handlers=lambda: [(name, h.statistics()) for name, h in handlers],
                locks=parts.locks,
                bus=parts.bus,
                profiler=profiler,
            )
        )
        async with trio.open_nursery() as runners:
            await _start_runners(runners, engine, rebuilds)
            async with trio.open_nursery() as ingress:
                if config.http.enabled:
                    engine.http_urls = await ingress.start(
                        functools.partial(
                            run_ingress,
                            engine,
                            config.http,
                            grace_period=config.engine.grace_period,
                        )
                    )
                try:
                    yield engine
                finally:
                    ingress.cancel_scope.cancel()
            runners.cancel_scope.cancel()
