"""Instrumented stores and locks: every operation timed, profiled, counted and logged.

:class:`InstrumentedStore` wraps any :class:`~engine.stores.base.EventStore` (memory,
SQLite, PostgreSQL, NATS: it only uses the port) and is one itself, so it passes the same
contract suite. Each call is timed on Trio's clock and

* recorded on a :class:`~engine.observability.profiler.Profiler` as ``store.<method>``;
* counted on :class:`~engine.observability.metrics.EngineMetrics` (append latency,
  events appended, errors by operation);
* logged on ``eskit.store`` at DEBUG (operation, stream, event count, duration), and at
  WARNING when it fails for a reason other than the caller's (a conflict, a refused
  stream id or an oversize event are the caller's and stay at DEBUG).

Event payloads and metadata are never logged. The wrapper also times the checkpoint
methods and the snapshot stores of backends that have them, and passes every other
attribute (``transactional``, ``database``...) through to the wrapped store.

:class:`InstrumentedLocks` wraps a :class:`~engine.locks.base.LockRegistry` and keeps
which leases this node holds now (the engine's lock ownership), how many it acquired and
how many it lost.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar, cast

import attrs
import trio

from engine.errors import (
    CodecError,
    ConcurrencyError,
    EventTooLargeError,
    IdempotencyConflictError,
    InvalidStreamIdError,
    LockNotHeldError,
)
from engine.events import Event, ExpectedVersion, NewEvent
from engine.locks.base import Lease, LockRegistry
from engine.observability.logging import redact_text
from engine.stores.base import (
    DEFAULT_READ_LIMIT,
    CheckpointStore,
    EventStore,
    Snapshot,
    SnapshotStore,
)

if TYPE_CHECKING:
    from engine.observability.profiler import Profiler

__all__ = [
    "HeldLease",
    "InstrumentedCheckpointStore",
    "InstrumentedLocks",
    "InstrumentedSnapshotStore",
    "InstrumentedStore",
    "LockStatistics",
    "StoreMetrics",
]

E = TypeVar("E")
S = TypeVar("S")
T = TypeVar("T")


class StoreMetrics(Protocol):
    """What the wrappers count (:class:`~engine.observability.metrics.EngineMetrics`
    is one): a port, so that metrics may know the wrappers and not the other way."""

    def appended(self, seconds: float, events: int) -> None:
        """Count one append that took ``seconds`` and wrote ``events`` events."""

    def store_error(self, operation: str, error: str) -> None:
        """Count a store call that raised ``error`` (a type name)."""


store_logger = logging.getLogger("eskit.store")
lock_logger = logging.getLogger("eskit.locks")

# The caller's mistakes and expected races: logged at DEBUG, never as a store failure.
_REFUSALS: tuple[type[BaseException], ...] = (
    ConcurrencyError,
    IdempotencyConflictError,
    EventTooLargeError,
    InvalidStreamIdError,
    CodecError,
)


_OWN = frozenset({"inner", "profiler", "metrics", "clock"})


@attrs.define(eq=False, kw_only=True)
class _Instruments:
    """What every instrumented wrapper shares: where timings and failures go."""

    profiler: Profiler | None = None
    metrics: StoreMetrics | None = None
    logger: logging.Logger = store_logger
    prefix: str = "store."
    clock: Callable[[], float] = trio.current_time

    def done(
        self,
        operation: str,
        started: float,
        error: BaseException | None,
        stream_id: str | None = None,
        events: int | None = None,
    ) -> float:
        seconds = self.clock() - started
        name = self.prefix + operation
        if self.profiler is not None:
            self.profiler.record(name, seconds, ok=error is None)
        if error is not None and self.metrics is not None:
            self.metrics.store_error(name, type(error).__qualname__)
        log = self.logger
        if error is not None and not isinstance(error, _REFUSALS):
            log.warning(
                "%s failed after %.2f ms: %s: %s",
                name,
                seconds * 1000,
                type(error).__qualname__,
                redact_text(str(error)),
                extra={"operation": name, "stream_id": stream_id, "duration_ms": seconds * 1000},
            )
        elif log.isEnabledFor(logging.DEBUG):
            log.debug(
                "%s%s%s in %.3f ms%s",
                name,
                "" if stream_id is None else f" {stream_id!r}",
                "" if events is None else f" {events} event(s)",
                seconds * 1000,
                "" if error is None else f" (refused: {type(error).__qualname__})",
                extra={
                    "operation": name,
                    "stream_id": stream_id,
                    "events": events,
                    "duration_ms": seconds * 1000,
                },
            )
        return seconds

    async def timed(
        self, operation: str, call: Callable[[], Any], stream_id: str | None = None
    ) -> Any:
        started = self.clock()
        try:
            result = await call()
        except BaseException as error:
            if isinstance(error, Exception):
                self.done(operation, started, error, stream_id)
            raise
        self.done(
            operation,
            started,
            None,
            stream_id,
            len(result) if isinstance(result, list) else None,
        )
        return result


@attrs.define(eq=False)
class InstrumentedCheckpointStore:
    """A :class:`~engine.stores.base.CheckpointStore` whose calls are timed and logged.

    Args:
        inner: The checkpoint store to wrap.
        profiler: Where durations are recorded (``store.load_checkpoint``...).
        metrics: Where errors are counted.
    """

    inner: CheckpointStore
    profiler: Profiler | None = attrs.field(default=None, kw_only=True)
    metrics: StoreMetrics | None = attrs.field(default=None, kw_only=True)
    _instruments: _Instruments = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._instruments = _Instruments(profiler=self.profiler, metrics=self.metrics)

    async def load_checkpoint(self, name: str) -> int | None:
        result: int | None = await self._instruments.timed(
            "load_checkpoint", lambda: self.inner.load_checkpoint(name), name
        )
        return result

    async def save_checkpoint(self, name: str, position: int, *, expected: int | None) -> None:
        await self._instruments.timed(
            "save_checkpoint",
            lambda: self.inner.save_checkpoint(name, position, expected=expected),
            name,
        )


@attrs.define(eq=False)
class InstrumentedSnapshotStore(Generic[S]):
    """A :class:`~engine.stores.base.SnapshotStore` whose calls are timed and logged."""

    inner: SnapshotStore[S]
    profiler: Profiler | None = attrs.field(default=None, kw_only=True)
    metrics: StoreMetrics | None = attrs.field(default=None, kw_only=True)
    _instruments: _Instruments = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._instruments = _Instruments(profiler=self.profiler, metrics=self.metrics)

    async def save_snapshot(self, snapshot: Snapshot[S]) -> None:
        await self._instruments.timed(
            "save_snapshot", lambda: self.inner.save_snapshot(snapshot), snapshot.stream_id
        )

    async def load_snapshot(self, stream_id: str) -> Snapshot[S] | None:
        result: Snapshot[S] | None = await self._instruments.timed(
            "load_snapshot", lambda: self.inner.load_snapshot(stream_id), stream_id
        )
        return result


@attrs.define(eq=False)
class InstrumentedStore(Generic[E]):
    """An :class:`~engine.stores.base.EventStore` that times, counts and logs every call.

    Args:
        inner: The store to wrap (any backend).
        profiler: Where each call's duration goes, as ``store.<method>``.
        metrics: Where append latency, events appended and errors are counted.

    The wrapper is also a :class:`~engine.stores.base.CheckpointStore` when ``inner``
    is one, and ``wrapper.snapshots(state_type)`` returns an instrumented snapshot store
    when ``inner`` has ``snapshots``. Any other attribute is the inner store's.

    Example:
        >>> async with open_sqlite_store(path, codec) as raw:
        ...     store = InstrumentedStore(raw, profiler=profiler, metrics=metrics)
    """

    inner: EventStore[E]
    profiler: Profiler | None = attrs.field(default=None, kw_only=True)
    metrics: StoreMetrics | None = attrs.field(default=None, kw_only=True)
    _instruments: _Instruments = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._instruments = _Instruments(profiler=self.profiler, metrics=self.metrics)

    async def append(
        self,
        stream_id: str,
        events: Sequence[NewEvent[E]],
        *,
        expected_version: int | ExpectedVersion = ExpectedVersion.ANY,
        idempotency_key: str | None = None,
    ) -> list[Event[E]]:
        """Append through the wrapped store; see :meth:`EventStore.append`."""
        instruments = self._instruments
        started = instruments.clock()
        try:
            stored = await self.inner.append(
                stream_id,
                events,
                expected_version=expected_version,
                idempotency_key=idempotency_key,
            )
        except Exception as error:
            seconds = instruments.done("append", started, error, stream_id, len(events))
            if self.metrics is not None:
                self.metrics.appended(seconds, 0)
            raise
        seconds = instruments.done("append", started, None, stream_id, len(stored))
        if self.metrics is not None:
            # A repeated idempotency key returns the first append's events: nothing new.
            fresh = bool(stored) and bool(events) and stored[0].event_id == events[0].event_id
            self.metrics.appended(seconds, len(stored) if fresh else 0)
        return stored

    async def load(
        self, stream_id: str, *, after_version: int = 0, limit: int | None = None
    ) -> list[Event[E]]:
        """See :meth:`EventStore.load`."""
        result: list[Event[E]] = await self._instruments.timed(
            "load",
            lambda: self.inner.load(stream_id, after_version=after_version, limit=limit),
            stream_id,
        )
        return result

    async def stream_version(self, stream_id: str) -> int:
        """See :meth:`EventStore.stream_version`."""
        result: int = await self._instruments.timed(
            "stream_version", lambda: self.inner.stream_version(stream_id), stream_id
        )
        return result

    async def read_all(
        self, *, after_position: int = 0, limit: int = DEFAULT_READ_LIMIT
    ) -> list[Event[E]]:
        """See :meth:`EventStore.read_all`."""
        result: list[Event[E]] = await self._instruments.timed(
            "read_all", lambda: self.inner.read_all(after_position=after_position, limit=limit)
        )
        return result

    async def head_position(self) -> int:
        """See :meth:`EventStore.head_position`."""
        result: int = await self._instruments.timed("head_position", self.inner.head_position)
        return result

    async def find_idempotent(self, idempotency_key: str) -> list[Event[E]] | None:
        """See :meth:`EventStore.find_idempotent`."""
        result: list[Event[E]] | None = await self._instruments.timed(
            "find_idempotent", lambda: self.inner.find_idempotent(idempotency_key)
        )
        return result

    async def load_checkpoint(self, name: str) -> int | None:
        """See :meth:`CheckpointStore.load_checkpoint` (the inner store must be one)."""
        inner = cast(CheckpointStore, self.inner)
        result: int | None = await self._instruments.timed(
            "load_checkpoint", lambda: inner.load_checkpoint(name), name
        )
        return result

    async def save_checkpoint(self, name: str, position: int, *, expected: int | None) -> None:
        """See :meth:`CheckpointStore.save_checkpoint` (the inner store must be one)."""
        inner = cast(CheckpointStore, self.inner)
        await self._instruments.timed(
            "save_checkpoint",
            lambda: inner.save_checkpoint(name, position, expected=expected),
            name,
        )

    def __getattr__(self, name: str) -> Any:
        # Only reached for attributes the wrapper does not define itself (or before
        # attrs has set its own, hence the guard against recursing on them).
        if name.startswith("_") or name in _OWN:
            raise AttributeError(name)
        value = getattr(self.inner, name)
        if name == "snapshots" and callable(value):
            make = value

            def snapshots(state_type: type[S]) -> InstrumentedSnapshotStore[S]:
                return InstrumentedSnapshotStore(
                    make(state_type), profiler=self.profiler, metrics=self.metrics
                )

            return snapshots
        return value


@attrs.frozen(kw_only=True)
class HeldLease:
    """A lease this node holds.

    Attributes:
        key: The locked key (``runner/<name>`` for a runner's leadership).
        owner: The holder's id (this node).
        token: The lease's fencing token.
        since: When it was acquired (Trio clock, seconds).
    """

    key: str
    owner: str
    token: int
    since: float


@attrs.frozen(kw_only=True)
class LockStatistics:
    """Counters of an :class:`InstrumentedLocks`.

    Attributes:
        held: Leases held now.
        acquired: Leases acquired since the wrapper was created.
        lost: Leases lost while held (a TTL ran out, or another node took over).
        waiting: Holders waiting for a lease now.
    """

    held: int
    acquired: int
    lost: int
    waiting: int


@attrs.define(eq=False)
class InstrumentedLocks:
    """A :class:`~engine.locks.base.LockRegistry` that knows which leases it holds.

    Args:
        inner: The registry to wrap.
        clock: Seconds, monotonic (Trio's clock).
    """

    inner: LockRegistry
    clock: Callable[[], float] = attrs.field(default=trio.current_time, kw_only=True)
    _held: dict[str, HeldLease] = attrs.field(factory=dict, init=False)
    _acquired: int = attrs.field(default=0, init=False)
    _lost: int = attrs.field(default=0, init=False)
    _waiting: int = attrs.field(default=0, init=False)

    @asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[Lease]:
        """Hold ``key`` through the wrapped registry; see :meth:`LockRegistry.hold`."""
        self._waiting += 1
        entered = False
        try:
            async with self.inner.hold(key) as lease:
                self._waiting -= 1
                entered = True
                self._acquired += 1
                self._held[key] = HeldLease(
                    key=key, owner=lease.owner, token=lease.token, since=self.clock()
                )
                lock_logger.debug("acquired %r (token %d)", key, lease.token)
                try:
                    yield lease
                finally:
                    self._held.pop(key, None)
        except LockNotHeldError:
            self._lost += 1
            lock_logger.warning("lost the lease on %r", key)
            raise
        finally:
            if not entered:
                self._waiting -= 1

    async def owner(self, key: str) -> str | None:
        """See :meth:`LockRegistry.owner`."""
        return await self.inner.owner(key)

    def held(self) -> list[HeldLease]:
        """The leases this node holds now, by key."""
        return [self._held[key] for key in sorted(self._held)]

    def statistics(self) -> LockStatistics:
        """Counters since the wrapper was created."""
        return LockStatistics(
            held=len(self._held), acquired=self._acquired, lost=self._lost, waiting=self._waiting
        )

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name in _OWN:
            raise AttributeError(name)
        return getattr(self.inner, name)
