"""The state change pattern at run time: load, decide, append, with retries and snapshots."""

from __future__ import annotations

import collections
import logging
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Generic, TypeVar

import attrs
import trio

from engine.decider import Decider
from engine.errors import (
    CodecError,
    ConcurrencyError,
    IdempotencyConflictError,
    RetriesExhaustedError,
)
from engine.events import Event, NewEvent
from engine.stores.base import EventStore, Snapshot, SnapshotStore

__all__ = [
    "DEFAULT_CACHE_SIZE",
    "DEFAULT_MAX_ATTEMPTS",
    "CommandContext",
    "CommandHandler",
    "CommandResult",
    "HandlerStatistics",
    "Middleware",
    "NextHandler",
    "StateCache",
]

S = TypeVar("S")
C = TypeVar("C")
E = TypeVar("E")

logger = logging.getLogger("eskit.handler")

#: How many times a command is decided and appended before a conflict is given up on.
DEFAULT_MAX_ATTEMPTS = 25
#: How many streams' states a handler keeps in memory by default.
DEFAULT_CACHE_SIZE = 1024
#: First retry delay (seconds); doubles per attempt up to ``DEFAULT_BACKOFF_MAX``, full jitter.
DEFAULT_BACKOFF_BASE = 0.001
DEFAULT_BACKOFF_MAX = 0.1
#: Events read per page when a stream is loaded (folded page by page).
LOAD_PAGE = 1000


@attrs.frozen
class CommandResult(Generic[S, E]):
    """What handling a command produced.

    Attributes:
        state: The stream's state after the command's events.
        events: The stored events (empty when the decider decided nothing).
        version: The stream's version after the command.
        duplicate: True when the command id had been handled before and the original
            events were returned instead of deciding again.
    """

    state: S
    events: list[Event[E]]
    version: int
    duplicate: bool = False


@attrs.frozen
class HandlerStatistics:
    """Counters of a :class:`CommandHandler` since it was created.

    Attributes:
        handled: Commands that completed (including duplicates and no-op decisions).
        duplicates: Commands answered from a stored idempotency key.
        conflicts: Appends that hit a concurrency conflict and were retried.
        cache_hits: Loads that started from a cached state.
        cache_misses: Loads that started from a snapshot or from scratch.
        cached_streams: Streams currently in the state cache.
    """

    handled: int
    duplicates: int
    conflicts: int
    cache_hits: int
    cache_misses: int
    cached_streams: int


@attrs.frozen
class CommandContext(Generic[C]):
    """A command on its way through the middleware chain."""

    stream_id: str
    command: C
    command_id: str | None = None
    metadata: Mapping[str, str] = attrs.field(factory=dict)


#: The rest of the chain, as seen by a middleware.
NextHandler = Callable[[CommandContext[Any]], Awaitable[CommandResult[Any, Any]]]
#: ``async def middleware(context, call_next) -> CommandResult``.
Middleware = Callable[[CommandContext[Any], NextHandler], Awaitable[CommandResult[Any, Any]]]


@attrs.define
class StateCache(Generic[S]):
    """A bounded LRU of ``stream_id -> (version, state)``.

    A cached state is only ever a starting point: the handler still reads the events
    after its version before deciding, so a stale entry costs a small read (or a
    conflict and a reload), never a wrong decision.
    """

    max_size: int = DEFAULT_CACHE_SIZE
    _entries: collections.OrderedDict[str, tuple[int, S]] = attrs.field(
        factory=collections.OrderedDict, init=False
    )

    def get(self, stream_id: str) -> tuple[int, S] | None:
        entry = self._entries.get(stream_id)
        if entry is not None:
            self._entries.move_to_end(stream_id)
        return entry

    def put(self, stream_id: str, version: int, state: S) -> None:
        if self.max_size <= 0:
            return
        self._entries[stream_id] = (version, state)
        self._entries.move_to_end(stream_id)
        while len(self._entries) > self.max_size:
            self._entries.popitem(last=False)

    def pop(self, stream_id: str) -> tuple[int, S] | None:
        return self._entries.pop(stream_id, None)

    def __len__(self) -> int:
        return len(self._entries)


@attrs.define(kw_only=True)
class CommandHandler(Generic[S, C, E]):
    """Runs commands against a decider and an event store.

    For each command: load the stream's state (cache, else snapshot, plus the events
    after it), decide, append with the loaded version as the expected version; on a
    concurrency conflict reload and decide again (bounded, with jittered exponential
    backoff). Then save a snapshot every ``snapshot_every`` events, run the inline
    projector and the ``after_append`` hooks.

    Args:
        decider: The domain logic.
        store: Where the events go.
        snapshots: Optional snapshot store; used with ``snapshot_every``.
        snapshot_every: Save a snapshot each time the stream crosses a multiple of this
            many events (0 = never).
        snapshot_schema: The state shape's version; snapshots of another schema are
            ignored (and replaced) instead of being decoded into the wrong shape.
        projector: Optional inline projector (``await projector.project(event)``) run
            after each append. For durable read models use a runner instead.
        middleware: Wrappers around :meth:`handle`, outermost first.
        after_append: Async callbacks given the stored events (publish to a bus...).
        max_attempts: How many decide+append attempts before
            :class:`~engine.errors.RetriesExhaustedError`.
        cache_size: How many stream states to keep in memory (0 disables the cache).
            A state is never shared by two commands at once, so ``evolve`` may
            mutate its state in place.

    Example:
        >>> handler = CommandHandler(decider=bank, store=MemoryStore())
        >>> result = await handler.handle("acc-1", OpenAccount(initial_balance=100))
        >>> result.state.balance
        100
    """

    decider: Decider[S, C, E]
    store: EventStore[E]
    snapshots: SnapshotStore[S] | None = None
    snapshot_every: int = 0
    snapshot_schema: int = 1
    projector: Any = None
    middleware: list[Middleware] = attrs.field(factory=list)
    after_append: list[Callable[[Sequence[Event[E]]], Awaitable[None]]] = attrs.field(factory=list)
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    backoff_base: float = DEFAULT_BACKOFF_BASE
    backoff_max: float = DEFAULT_BACKOFF_MAX
    cache_size: int = DEFAULT_CACHE_SIZE
    random: random.Random = attrs.field(factory=random.Random)
    _cache: StateCache[S] = attrs.field(init=False)
    _counts: collections.Counter[str] = attrs.field(factory=collections.Counter, init=False)

    def __attrs_post_init__(self) -> None:
        # Own copies, so that use() never changes a list the caller still holds.
        self.middleware = list(self.middleware)
        self.after_append = list(self.after_append)
        self._cache = StateCache(self.cache_size)
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")
        if self.snapshot_every < 0:
            raise ValueError(f"snapshot_every must be >= 0, got {self.snapshot_every}")

    def statistics(self) -> HandlerStatistics:
        """A snapshot of the handler's counters."""
        counts = self._counts
        return HandlerStatistics(
            handled=counts["handled"],
            duplicates=counts["duplicates"],
            conflicts=counts["conflicts"],
            cache_hits=counts["cache_hits"],
            cache_misses=counts["cache_misses"],
            cached_streams=len(self._cache),
        )

    def use(self, middleware: Middleware) -> None:
        """Add ``middleware`` inside the ones already added."""
        self.middleware.append(middleware)

    async def handle(
        self,
        stream_id: str,
        command: C,
        *,
        command_id: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> CommandResult[S, E]:
        """Handle ``command`` for ``stream_id``.

        Args:
            stream_id: The stream the command is about.
            command: The command value.
            command_id: An idempotency key: a command id handled before returns the
                original result (``duplicate=True``) and appends nothing, even when the
                first attempt's reply was lost.
            metadata: Stored with every event the command produces.

        Returns:
            The new state, the stored events and the stream version.

        Raises:
            DomainError: The decider rejected the command (or any error ``decide`` raised).
            RetriesExhaustedError: Conflicts outlasted ``max_attempts``.
        """
        context: CommandContext[C] = CommandContext(
            stream_id, command, command_id, dict(metadata or {})
        )
        call: NextHandler = self._handle
        for middleware in reversed(self.middleware):
            call = _bind(middleware, call)
        result = await call(context)
        self._counts["handled"] += 1
        if result.duplicate:
            self._counts["duplicates"] += 1
        return result

    async def load(self, stream_id: str) -> tuple[S, int]:
        """The stream's current state and version (through the cache and snapshots)."""
        state, version = await self._take(stream_id)
        self._cache.put(stream_id, version, state)
        return state, version

    async def _take(self, stream_id: str) -> tuple[S, int]:
        # The cache entry is popped, not copied: while a command works on a state no
        # other command can pick up the same object, so an evolve() that mutates its
        # state in place is as safe as one that returns a new state. A concurrent
        # command on the same stream simply misses the cache and reads the store.
        cached = self._cache.pop(stream_id)
        if cached is not None:
            version, state = cached
        else:
            state, version = await self._load_snapshot(stream_id)
        # Page by page: a long stream's events are folded and dropped while young, so
        # they never reach the collector's oldest generation (whose full scans cost a
        # 10,000-event load 30-40% of its time) and memory stays bounded.
        while True:
            events = await self.store.load(stream_id, after_version=version, limit=LOAD_PAGE)
            if events:
                state = self._fold(state, events)
                version = events[-1].version
            if len(events) < LOAD_PAGE:
                return state, version

    async def _decide(self, stream_id: str, command: C) -> tuple[S, int, list[E]]:
        """Decide ``command`` on the stream's state; return the state, its version, the events.

        With a cached state the store is not read at all when the decision produces
        events: the append's expected version proves the state was current (a stale
        state fails the append with a conflict, and the retry reads the store). A
        rejection or an empty decision proves nothing, so those are only trusted on a
        state brought up to date from the store first.
        """
        cached = self._cache.pop(stream_id)
        if cached is not None:
            self._counts["cache_hits"] += 1
            version, state = cached
            try:
                decided = list(self.decider.decide(state, command))
            except Exception:
                decided = []
            if decided:
                return state, version, decided
            events = await self.store.load(stream_id, after_version=version)
            if events:
                state = self._fold(state, events)
                version = events[-1].version
        else:
            self._counts["cache_misses"] += 1
            state, version = await self._take(stream_id)
        try:
            return state, version, list(self.decider.decide(state, command))
        except BaseException:
            self._cache.put(stream_id, version, state)
            raise

    async def _handle(self, context: CommandContext[Any]) -> CommandResult[S, E]:
        stream_id, command, command_id = context.stream_id, context.command, context.command_id
        if command_id is not None:
            previous = await self.store.find_idempotent(command_id)
            if previous is not None:
                return await self._replayed(stream_id, command_id, previous)
        actual = 0
        for attempt in range(1, self.max_attempts + 1):
            try:
                state, version, decided = await self._decide(stream_id, command)
            except Exception:
                # A copy of this command that missed the lookup above may be deciding on
                # the state the original already changed (a second OpenAccount is
                # refused): that copy answers the original result, not the rejection.
                if command_id is not None:
                    previous = await self.store.find_idempotent(command_id)
                    if previous is not None:
                        return await self._replayed(stream_id, command_id, previous)
                raise
            if not decided and command_id is None:
                self._cache.put(stream_id, version, state)
                return CommandResult(state, [], version)
            new_events = [NewEvent(data, context.metadata) for data in decided]
            try:
                stored = await self.store.append(
                    stream_id, new_events, expected_version=version, idempotency_key=command_id
                )
            except ConcurrencyError as conflict:
                self._counts["conflicts"] += 1
                actual = conflict.actual
                if command_id is not None:
                    # The stream moved on: perhaps through a copy of this very command.
                    previous = await self.store.find_idempotent(command_id)
                    if previous is not None:
                        return await self._replayed(stream_id, command_id, previous)
                if attempt < self.max_attempts:
                    ceiling = min(self.backoff_max, self.backoff_base * 2 ** (attempt - 1))
                    await trio.sleep(self.random.uniform(0, ceiling))
                continue
            if [event.event_id for event in stored] != [event.event_id for event in new_events]:
                # Another attempt with the same command id won the race.
                assert command_id is not None
                return await self._replayed(stream_id, command_id, stored)
            return await self._after_append(stream_id, state, version, stored)
        raise RetriesExhaustedError(stream_id, "the loaded version", actual, self.max_attempts)

    async def _after_append(
        self, stream_id: str, state: S, version: int, stored: list[Event[E]]
    ) -> CommandResult[S, E]:
        if stored:
            state = self._fold(state, stored)
            new_version = stored[-1].version
            self._cache.put(stream_id, new_version, state)
            await self._maybe_snapshot(stream_id, version, new_version, state)
            if self.projector is not None:
                for event in stored:
                    await self.projector.project(event)
            for hook in self.after_append:
                await hook(stored)
            version = new_version
        return CommandResult(state, stored, version)

    async def _replayed(
        self, stream_id: str, command_id: str, previous: list[Event[E]]
    ) -> CommandResult[S, E]:
        if previous and previous[0].stream_id != stream_id:
            # The store checks this on append; find_idempotent has no stream to check.
            raise IdempotencyConflictError(command_id, stream_id, previous[0].stream_id)
        if not previous:
            state, version = await self.load(stream_id)
            return CommandResult(state, [], version, duplicate=True)
        version = previous[-1].version
        events = await self.store.load(stream_id, limit=version)
        return CommandResult(self._fold(None, events), previous, version, duplicate=True)

    def _fold(self, state: S | None, events: Sequence[Event[E]]) -> S:
        current = self.decider.initial_state() if state is None else state
        evolve = self.decider.evolve
        for event in events:
            current = evolve(current, event.data)
        return current

    async def _load_snapshot(self, stream_id: str) -> tuple[S, int]:
        if self.snapshots is not None:
            try:
                snapshot = await self.snapshots.load_snapshot(stream_id)
            except CodecError as exc:
                logger.warning("ignoring an undecodable snapshot of %r: %s", stream_id, exc)
                snapshot = None
            if snapshot is not None and snapshot.schema == self.snapshot_schema:
                return snapshot.state, snapshot.version
        return self.decider.initial_state(), 0

    async def _maybe_snapshot(self, stream_id: str, before: int, after: int, state: S) -> None:
        every = self.snapshot_every
        if self.snapshots is None or every <= 0 or before // every == after // every:
            return
        try:
            await self.snapshots.save_snapshot(
                Snapshot(stream_id, after, state, schema=self.snapshot_schema)
            )
        except Exception as exc:  # the events are stored; a snapshot is only an optimisation
            logger.warning("could not save a snapshot of %r at v%d: %r", stream_id, after, exc)


def _bind(middleware: Middleware, call_next: NextHandler) -> NextHandler:
    async def call(context: CommandContext[Any]) -> CommandResult[Any, Any]:
        return await middleware(context, call_next)

    return call
