"""Projection versions on this node: rebuilds, and following a switch made elsewhere.

:class:`Rebuilds` is a service (``await nursery.start(rebuilds.run)``) owning the nursery
its rebuilds run in: cancelling it stops them (a rebuild is started again by hand; its
version number is never reused). Each rebuild's progress is a :class:`RebuildStatus`.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from typing import Any, Literal

import attrs
import trio

from engine.daemon.assembly import LoadedPlugin, ProjectionEntry, setup_projection
from engine.errors import (
    NotRunningError,
    RebuildInProgressError,
    RebuildNotActiveError,
    UnknownProjectionError,
)
from engine.observability.logging import redact_text
from engine.plugin import ProjectionSetup
from engine.runners.base import RunnerState
from engine.runners.runner import ProjectionRunner, Runner
from engine.stores.base import EventStore

__all__ = ["RebuildStatus", "Rebuilds"]

logger = logging.getLogger("eskit.engine")


@attrs.define(kw_only=True)
class RebuildStatus:
    """The progress of one rebuild (``rebuild`` in ``GET /runners``).

    Attributes:
        state: ``running``, then ``done`` or ``failed``.
        from_version: The version live when it started.
        version: The version being built (taken durably before anything is set up).
        done: The position the new version has handled.
        head: The head of the log it catches up with.
        error: Why it failed (redacted), or ``None``.
    """

    state: Literal["running", "done", "failed"] = "running"
    from_version: int
    version: int | None = None
    done: int = 0
    head: int = 0
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The status as a JSON-ready dict."""
        return attrs.asdict(self)


@attrs.define(eq=False)
class Rebuilds:
    """Rebuilds projections beside their live version and follows switches made elsewhere.

    Resource handling:
        :meth:`run` owns the nursery rebuilds run in; :meth:`run_followers` is a loop
        the engine runs under its supervisor.
    """

    store: EventStore[Any]
    plugins: Mapping[str, LoadedPlugin]
    projections: Mapping[str, ProjectionEntry]
    runners: Mapping[str, Runner[Any]]
    poll_interval: float
    statuses: dict[str, RebuildStatus] = attrs.field(factory=dict)
    _nursery: trio.Nursery | None = attrs.field(default=None, init=False)

    async def run(
        self, *, task_status: trio.TaskStatus[Rebuilds] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Take rebuilds until cancelled (which cancels the ones running)."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            try:
                task_status.started(self)
                await trio.sleep_forever()
            finally:
                self._nursery = None

    def running(self, name: str) -> bool:
        """Whether a rebuild of projection ``name`` runs on this node."""
        status = self.statuses.get(name)
        return status is not None and status.state == "running"

    async def start(self, name: str) -> RebuildStatus:
        """Start building projection ``name`` again from position 0, beside the live one.

        Raises:
            UnknownProjectionError: No projection of that name.
            RebuildInProgressError: A rebuild of it runs already.
            RebuildNotActiveError: This node is not its active runner (another node
                holds its lease).
            NotRunningError: The engine is not running its runners.
        """
        entry = self.projections.get(name)
        runner = self.runners.get(name)
        if entry is None or not isinstance(runner, ProjectionRunner):
            raise UnknownProjectionError(f"no projection {name!r}")
        if self.running(name):
            raise RebuildInProgressError(f"{name!r} is being rebuilt already")
        if runner.locks is not None and runner.statistics().state is RunnerState.STANDBY:
            owner = await runner.locks.owner(runner.lease_key)
            raise RebuildNotActiveError(name, owner)
        if self._nursery is None:
            raise NotRunningError("the engine is not running its runners")
        current = self.statuses.get(name)
        status = RebuildStatus(from_version=runner.version)
        self.statuses[name] = status
        try:
            # Taken for good before anything is set up: a version is never built twice,
            # whatever happens to this rebuild or this process.
            status.version = await entry.versions.allocate(name, above=runner.version)
            status.head = await self.store.head_position()
        except BaseException:
            if current is None:
                del self.statuses[name]
            else:
                self.statuses[name] = current
            raise
        self._nursery.start_soon(self._rebuild, name, entry, runner, status, status.version)
        await trio.lowlevel.checkpoint()
        return status

    async def _rebuild(
        self,
        name: str,
        entry: ProjectionEntry,
        runner: ProjectionRunner[Any],
        status: RebuildStatus,
        version: int,
    ) -> None:
        loaded = self.plugins[entry.plugin]

        def progress(done: int, head: int) -> None:
            status.done, status.head = done, head

        try:
            setup = await setup_projection(
                entry.definition.setup, attrs.evolve(entry.context, version=version)
            )

            old = runner.version

            async def commit() -> None:
                # Durable before the switch: a restart, or any other node, serves the
                # new version from now on (a conflict means another node switched).
                await entry.versions.switch(name, entry.definition.version, old=old, new=version)

            logger.info("rebuilding projection %r as version %d", name, version)
            position = await runner.rebuild(
                setup.handler,
                version=version,
                progress=progress,
                on_switch=functools.partial(_swap_queries, loaded, name, setup),
                commit=commit,
            )
        except Exception as exc:
            logger.exception("rebuilding projection %r failed", name)
            status.state, status.error = "failed", redact_text(f"{type(exc).__name__}: {exc}")
        else:
            status.state, status.done = "done", position
            logger.info("projection %r switched to version %d at %d", name, version, position)

    async def follow(self, name: str) -> bool:
        """Bring projection ``name`` on this node to the version recorded as live.

        A rebuild on another node (or before a restart) switches the record; this node
        then sets that version up (its plugin's setup, for a SQL read model the new
        tables) and switches its runner and queries to it. Only for a durable read model
        whose runner is leased (one active node at a time); others are per node.

        Returns:
            True when this node switched.
        """
        entry = self.projections[name]
        runner = self.runners[name]
        if not entry.leased or not isinstance(runner, ProjectionRunner):
            await trio.lowlevel.checkpoint()
            return False
        # A code version's live version only ever grows (each rebuild takes a new,
        # higher one), so a stale read can never switch a node back.
        live = await entry.versions.live(name, entry.definition.version)
        if live is None or live <= runner.version:
            return False  # the common case: no lock, so queries never queue here
        async with entry.switching:
            if live <= runner.version or self.running(name):
                return False
            loaded = self.plugins[entry.plugin]
            setup = await setup_projection(
                entry.definition.setup, attrs.evolve(entry.context, version=live)
            )
            switched = await runner.follow(
                setup.handler,
                version=live,
                on_switch=functools.partial(_swap_queries, loaded, name, setup),
            )
        if switched:
            logger.info("projection %r follows version %d (switched elsewhere)", name, live)
        return switched

    async def run_followers(self, *, task_status: trio.TaskStatus[None]) -> None:
        """Every ``poll_interval``: follow version switches made elsewhere and, where a
        runner stands by, read the active node's checkpoint (for ``/runners`` and
        read-your-writes). A service: runs until cancelled."""
        task_status.started()
        while True:
            await trio.sleep(self.poll_interval)
            for name, entry in self.projections.items():
                if entry.leased:
                    await self.follow(name)
            for name, runner in self.runners.items():
                projection = self.projections.get(name)
                # A read model only the active node has keeps its own (local) progress.
                if runner.following and (projection is None or projection.shared):
                    await runner.refresh(head=True)


def _swap_queries(loaded: LoadedPlugin, name: str, setup: ProjectionSetup) -> None:
    # Under the runner's batch lock: no reader sees the new checkpoint with the old
    # read model's queries.
    for query_name, query in setup.queries.items():
        if loaded.query_runners.get(query_name) == name:
            loaded.queries[query_name] = query
