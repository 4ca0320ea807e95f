"""Checkpointed projection and automation runners.

A runner reads the store's global log after its checkpoint in batches, feeds each batch
to its handler, and saves the checkpoint. Caught up, it waits for a bus notification or
its poll interval and goes on. The store is the source of truth: a crash or a dropped
notification costs a re-read, never an event.
"""

from __future__ import annotations

import collections
import contextlib
import datetime as dt
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Generic, Self, TypeVar

import attrs
import trio

from engine.bus.base import EventBus, Subscription
from engine.errors import CheckpointConflictError, LockNotHeldError
from engine.events import Event, utc_now
from engine.locks.base import Lease, LockRegistry
from engine.runners.base import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_POLL_INTERVAL,
    DeadLetter,
    DeadLetterStore,
    ErrorPolicy,
    Handler,
    OnFailure,
    RunnerState,
    RunnerStatistics,
    RunnerStoppedError,
    StartAt,
)
from engine.runners.delivery import Sink, Track, make_sink
from engine.stores.base import CheckpointStore, EventStore

__all__ = ["DEFAULT_RATE_WINDOW", "AutomationRunner", "ProjectionRunner", "Runner"]

E = TypeVar("E")

logger = logging.getLogger("eskit.runners")

#: Seconds over which :attr:`RunnerStatistics.rate` is measured.
DEFAULT_RATE_WINDOW = 10.0
#: First wait (seconds) before re-reading when the bus announced events that ``read_all``
#: does not return yet (a late commit on PostgreSQL); doubles up to the poll interval.
_VISIBILITY_DELAY = 0.01
#: First wait (seconds) before a standby runner's waiter reads the shared checkpoint
#: again; doubles up to the poll interval. Waiters share each read.
_FOLLOW_DELAY = 0.002
#: Notifications a runner's subscription buffers; a runner only needs the wake-up.
_WAKEUP_BUFFER = 16
#: The rate is counted in this many buckets per window (bounded memory at any rate).
_RATE_BUCKETS = 64


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__qualname__}: {exc}"


@attrs.define(kw_only=True, eq=False)
class Runner(Generic[E]):
    """What projection and automation runners share: the catch-up/follow loop.

    The object is the runner's handle: it outlives restarts, so :meth:`statistics`
    (including ``restarts``) and :meth:`wait_caught_up` work across them. Start it with
    ``runner = await nursery.start(runner.run)``, or under a supervisor with
    ``await nursery.start(functools.partial(run_supervised, name=...), runner.run)``.

    Args:
        name: The runner's name (its lease key; the checkpoint name for automations,
            ``<name>@<version>`` for projections).
        handler: An ``async def handle(event)``, a :class:`BatchProjection` or a
            :class:`TransactionalProjection`.
        store: Where the events are read.
        checkpoints: Where the checkpoint is saved (not used with a
            :class:`TransactionalProjection`, which saves it in its own transaction).
        bus: Wakes the runner when events are stored; without one it only polls.
        locks: When given, the runner runs only while it holds the lease
            ``runner/<name>`` (at most one active runner per name in a cluster).
        dead_letters: Where :attr:`OnFailure.PARK` parks events.
        error_policy: Retries, backoff, then stop or park.
        batch_size: Events per ``read_all`` (and per checkpoint save).
        poll_interval: Seconds between store reads when no notification arrives.
        start_at: Where to start when no checkpoint is saved yet.
        rate_window: Seconds over which the rate statistic is measured.
        now: Wall clock for dead-letter timestamps.
    """

    name: str
    handler: Handler[E]
    store: EventStore[E]
    checkpoints: CheckpointStore | None = None
    bus: EventBus[E] | None = None
    locks: LockRegistry | None = None
    dead_letters: DeadLetterStore | None = None
    error_policy: ErrorPolicy = attrs.field(factory=ErrorPolicy)
    batch_size: int = DEFAULT_BATCH_SIZE
    poll_interval: float = DEFAULT_POLL_INTERVAL
    start_at: StartAt = StartAt.BEGINNING
    rate_window: float = DEFAULT_RATE_WINDOW
    now: Callable[[], dt.datetime] = utc_now

    _live: Track[E] = attrs.field(init=False)
    _rebuild: Track[E] | None = attrs.field(default=None, init=False)
    _state: RunnerState = attrs.field(default=RunnerState.IDLE, init=False)
    _running: bool = attrs.field(default=False, init=False)
    _runs: int = attrs.field(default=0, init=False)
    _lease: Lease | None = attrs.field(default=None, init=False)
    _head: int = attrs.field(default=0, init=False)
    _progress: trio.Event = attrs.field(factory=trio.Event, init=False)
    # Held by the live loop while it reads and handles a batch, so that a rebuild can
    # switch handlers between two batches.
    _batch_lock: trio.Lock = attrs.field(factory=trio.Lock, init=False)
    _visibility_delay: float = attrs.field(default=_VISIBILITY_DELAY, init=False)
    # Set while a standby runner reads the shared checkpoint (see refresh).
    _reading: trio.Event | None = attrs.field(default=None, init=False)
    # (bucket number, events) for the rate statistic, oldest first.
    _recent: collections.deque[tuple[int, int]] = attrs.field(
        factory=lambda: collections.deque(maxlen=_RATE_BUCKETS + 1), init=False
    )
    _counts: collections.Counter[str] = attrs.field(factory=collections.Counter, init=False)
    _last_error: str | None = attrs.field(default=None, init=False)

    def __attrs_post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.poll_interval <= 0 or self.rate_window <= 0:
            raise ValueError("poll_interval and rate_window must be > 0")
        if self.error_policy.on_failure is OnFailure.PARK and self.dead_letters is None:
            raise ValueError("an error policy that parks events needs a dead_letters store")
        self._live = Track(self.checkpoint_name, self._sink(self.handler))

    @property
    def checkpoint_name(self) -> str:
        """The name the checkpoint is saved under."""
        return self.name

    @property
    def lease_key(self) -> str:
        """The lock registry key this runner holds while active."""
        return f"runner/{self.name}"

    def _sink(self, handler: Handler[E]) -> Sink[E]:
        return make_sink(handler, self.checkpoints, self.name)

    # -- introspection -------------------------------------------------------------

    def statistics(self) -> RunnerStatistics:
        """A snapshot of the runner's progress and counters."""
        checkpoint = self._live.stored or 0
        head = max(self._head, checkpoint)
        counts = self._counts
        return RunnerStatistics(
            name=self._live.key,
            state=self._state,
            checkpoint=checkpoint,
            head=head,
            lag=head - checkpoint,
            rate=self._rate(),
            processed=counts["processed"],
            retries=counts["retries"],
            restarts=max(0, self._runs - 1),
            parked=counts["parked"],
            leases_lost=counts["leases_lost"],
            rebuild_checkpoint=None if self._rebuild is None else self._rebuild.stored,
            last_error=self._last_error,
        )

    async def wait_caught_up(self, position: int | None = None, *, shared: bool = True) -> int:
        """Wait until the runner is done with every event up to ``position``.

        Use it in tests and for read-your-writes (``position`` = the last stored
        event's position). It waits across restarts; bound it with ``trio.fail_after``.
        While :attr:`following`, it waits on the checkpoint the active runner (on
        another node) saves in the shared store.

        Args:
            position: The global position to wait for; by default the store's head
                at the time of the call.
            shared: False when the handler's effects stay on this node (a read model
                kept in memory): then only this runner's own progress counts, never
                another node's.

        Returns:
            The runner's checkpoint (``>= position``).
        """
        if position is None:
            position = await self.store.head_position()
        else:
            await trio.lowlevel.checkpoint()
        delay = _FOLLOW_DELAY
        while (self._live.stored or 0) < position:
            if not (shared and self.following):
                await self._progress.wait()
                continue
            # Another node's runner does the work: watch the checkpoint it saves.
            if await self.refresh() >= position:
                break
            with trio.move_on_after(delay):
                await self._progress.wait()
            delay = min(delay * 2, self.poll_interval)
        return self._live.stored or 0

    @property
    def following(self) -> bool:
        """True while the runner has ``locks`` and does not hold its lease: the runner
        of another node is (or will be) the active one, and this one's progress is the
        checkpoint that runner saves in the shared store (see :meth:`refresh`)."""
        return self.locks is not None and self._lease is None

    async def refresh(self, *, head: bool = False) -> int:
        """Read the active runner's progress from the shared checkpoint store.

        Only while :attr:`following` (a standby node); the active runner knows its own
        progress. Wakes :meth:`wait_caught_up` when the checkpoint moved on.

        Args:
            head: Also read the store's head (for :meth:`statistics`' lag).

        Returns:
            The checkpoint now known.
        """
        track = self._live
        if not self.following:
            await trio.lowlevel.checkpoint()
            return track.stored or 0
        if self._reading is not None:
            # Many waiters, one read: share the one in flight.
            await self._reading.wait()
            return self._live.stored or 0
        self._reading = reading = trio.Event()
        try:
            stored = await track.sink.load(track.key)
            if head:
                self._head = max(self._head, await self.store.head_position())
        finally:
            self._reading = None
            reading.set()
        # Only while still standing by: an active runner's own view is authoritative
        # (its compare-and-set expects it), and a switch may have replaced the track.
        if (
            self.following
            and track is self._live
            and stored is not None
            and stored > (track.stored or 0)
        ):
            track.stored = track.checkpoint = stored
            self._notify()
        return self._live.stored or 0

    # -- the service ---------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[Self] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until cancelled (or until the error policy stops it).

        Resource handling:
            Opens a bus subscription (before the first read, so that no notification
            is lost between catch-up and follow) and, with ``locks``, holds the lease
            while active. Calls ``task_status.started(self)`` once the checkpoint is
            loaded, or, with ``locks``, as soon as it waits for the lease (a standby
            node must not hold up start-up).

        Error handling:
            Handler failures follow :attr:`error_policy`; with :attr:`OnFailure.STOP`
            :class:`RunnerStoppedError` is raised. A lost lease sends the runner back
            to standby (counted in ``leases_lost``). A
            :class:`~engine.errors.CheckpointConflictError` (someone else advanced the
            checkpoint) is raised: restarting reloads the checkpoint. A cancellation
            mid-batch leaves the checkpoint before the batch (at-least-once) or rolls
            the transaction back (transactional).

        Raises:
            RuntimeError: The runner is running already.
        """
        if self._running:
            raise RuntimeError(f"runner {self.name!r} is running already")
        self._running = True
        self._runs += 1
        try:
            if self.locks is None:
                await self._run_active(task_status)
            else:
                await self._run_leader(self.locks, task_status)
        except Exception:
            self._state = RunnerState.FAILED
            raise
        finally:
            self._running = False
            if self._state is not RunnerState.FAILED:
                self._state = RunnerState.IDLE

    async def _run_leader(self, locks: LockRegistry, task_status: trio.TaskStatus[Self]) -> None:
        self._state = RunnerState.STANDBY
        task_status.started(self)
        while True:
            try:
                async with locks.hold(self.lease_key) as lease:
                    self._lease = lease
                    logger.info("runner %r is active (lease token %d)", self.name, lease.token)
                    try:
                        await self._run_active(trio.TASK_STATUS_IGNORED)
                    finally:
                        self._lease = None
            except LockNotHeldError:
                self._counts["leases_lost"] += 1
                self._state = RunnerState.STANDBY
                self._notify()  # waiters watch the shared checkpoint from now on
                logger.warning("runner %r lost its lease; back to standby", self.name)

    async def _run_active(self, task_status: trio.TaskStatus[Self]) -> None:
        async with self._wakeups() as wakeups:
            await self._open(self._live, start_at=self.start_at)
            self._notify()
            self._state = RunnerState.CATCHING_UP
            task_status.started(self)
            while True:
                self._head = max(self._head, await self.store.head_position())
                while await self._step_live() == self.batch_size:
                    pass
                self._state = RunnerState.LIVE
                await self._wait(wakeups)
                self._state = RunnerState.CATCHING_UP

    @contextlib.asynccontextmanager
    async def _wakeups(self) -> AsyncIterator[Subscription[E] | None]:
        if self.bus is None:
            await trio.lowlevel.checkpoint()
            yield None
            return
        async with self.bus.subscribe(buffer_size=_WAKEUP_BUFFER) as subscription:
            yield subscription

    async def _open(self, track: Track[E], *, start_at: StartAt) -> None:
        stored = await track.sink.load(track.key)
        if stored is None and start_at is StartAt.END:
            head = await self.store.head_position()
            await track.sink.save(track.key, head, expected=None)
            stored = head
        track.stored = stored
        track.checkpoint = stored or 0

    async def _wait(self, wakeups: Subscription[E] | None) -> None:
        if self._head > self._live.checkpoint:
            # Announced but not readable yet: look again soon, less often each time.
            timeout = min(self._visibility_delay, self.poll_interval)
            self._visibility_delay = timeout * 2
        else:
            timeout = self.poll_interval
            self._visibility_delay = _VISIBILITY_DELAY
        with trio.move_on_after(timeout):
            if wakeups is None:
                await trio.sleep_forever()
            notification = await wakeups.receive()
            self._head = max(self._head, notification.head)
            # Many notifications, one wake-up: the next read covers them all.
            while True:
                try:
                    notification = wakeups.receive_nowait()
                except trio.WouldBlock:
                    break
                self._head = max(self._head, notification.head)

    # -- processing ----------------------------------------------------------------

    async def _step_live(self) -> int:
        async with self._batch_lock:
            # Read the track under the lock: a rebuild may have switched it.
            return await self._step(self._live)

    async def _step(self, track: Track[E]) -> int:
        """Read and handle one batch after ``track``'s checkpoint; return its size."""
        batch = await self.store.read_all(after_position=track.checkpoint, limit=self.batch_size)
        if batch:
            self._head = max(self._head, batch[-1].position)
            await self._process(track, batch)
        return len(batch)

    async def _process(self, track: Track[E], batch: Sequence[Event[E]]) -> None:
        sink = track.sink
        if sink.batched and len(batch) > 1:
            try:
                await sink.apply(track, batch)
            except CheckpointConflictError:
                raise
            except Exception as exc:
                # Find the failing event: the error policy applies per event.
                logger.info(
                    "runner %r: a batch of %d failed (%s); retrying event by event",
                    track.key,
                    len(batch),
                    _reason(exc),
                )
            else:
                self._advance(track, batch[-1].position, len(batch))
                await self._finish(track)
                return
        for event in batch:
            await self._deliver(track, event)
        await self._finish(track)

    async def _finish(self, track: Track[E]) -> None:
        await track.sink.finish(track)
        if track is self._live:
            self._notify()

    async def _deliver(self, track: Track[E], event: Event[E]) -> None:
        policy = self.error_policy
        attempts = 0
        while True:
            attempts += 1
            try:
                await track.sink.apply(track, [event])
            except CheckpointConflictError:
                raise
            except Exception as exc:
                reason = _reason(exc)
                self._last_error = reason
                if attempts <= policy.retries:
                    self._counts["retries"] += 1
                    delay = policy.delay(attempts)
                    logger.warning(
                        "runner %r: event at position %d failed (attempt %d, retrying in %gs): %s",
                        track.key,
                        event.position,
                        attempts,
                        delay,
                        reason,
                    )
                    if track is self._live:
                        state, self._state = self._state, RunnerState.RETRYING
                        await trio.sleep(delay)
                        self._state = state
                    else:
                        await trio.sleep(delay)
                    continue
                if policy.on_failure is OnFailure.PARK:
                    await self._park(track, event, attempts, reason)
                    break
                # Keep what is done: the restart begins at the failing event.
                await self._finish(track)
                raise RunnerStoppedError(track.key, event.position, attempts, reason) from exc
            else:
                break
        self._advance(track, event.position, 1)

    async def _park(self, track: Track[E], event: Event[E], attempts: int, reason: str) -> None:
        assert self.dead_letters is not None
        logger.error(
            "runner %r: parking event at position %d after %d attempt(s): %s",
            track.key,
            event.position,
            attempts,
            reason,
        )
        await self.dead_letters.park(
            DeadLetter(
                runner=track.key,
                position=event.position,
                event_id=event.event_id,
                stream_id=event.stream_id,
                version=event.version,
                type=event.type,
                reason=reason,
                attempts=attempts,
                parked_at=self.now(),
            )
        )
        self._counts["parked"] += 1
        await track.sink.skip(track, event)

    def _advance(self, track: Track[E], position: int, count: int) -> None:
        track.checkpoint = position
        self._counts["processed"] += count
        bucket = self._bucket(trio.current_time())
        if self._recent and self._recent[-1][0] == bucket:
            self._recent[-1] = (bucket, self._recent[-1][1] + count)
        else:
            self._recent.append((bucket, count))

    def _notify(self) -> None:
        self._progress.set()
        self._progress = trio.Event()

    def _bucket(self, time: float) -> int:
        return math.floor(time * _RATE_BUCKETS / self.rate_window)

    def _rate(self) -> float:
        oldest = self._bucket(trio.current_time() - self.rate_window)
        recent = self._recent
        while recent and recent[0][0] <= oldest:
            recent.popleft()
        return sum(count for _, count in recent) / self.rate_window


@attrs.define(kw_only=True, eq=False)
class AutomationRunner(Runner[E]):
    """Feeds events to automations (usually :meth:`ReactorRegistry.handle
    <engine.reactor.ReactorRegistry.handle>`), at-least-once.

    A redelivered event runs its reactors again; the registry derives each command's id
    from the reactor name and the event id, so the command handler answers the repeat
    from its idempotency record instead of deciding twice.

    See :class:`Runner` for the arguments. Consider ``start_at=StartAt.END`` for an
    automation added to a store that already holds history it must not react to.
    """


@attrs.define(kw_only=True, eq=False)
class ProjectionRunner(Runner[E]):
    """Keeps a read model up to date from the store, and rebuilds it beside itself.

    The checkpoint name is ``<name>@<version>``: each version of a read model has its
    own progress, so a new version starts from position 0 and the old one's checkpoint
    stays where it was.

    See :class:`Runner` for the other arguments.

    Args:
        version: The read model's version (bump it when its shape or meaning changes).
    """

    version: int = 1

    @property
    def checkpoint_name(self) -> str:
        return f"{self.name}@{self.version}"

    async def rebuild(
        self,
        handler: Handler[E],
        *,
        version: int,
        progress: Callable[[int, int], None] | None = None,
        on_switch: Callable[[], None] | None = None,
        commit: Callable[[], Awaitable[None]] | None = None,
    ) -> int:
        """Build version ``version`` of the read model from position 0, then switch to it.

        The live handler keeps running meanwhile. Once the new one has caught up with
        the head, the live loop is paused between two batches, the new one reads the
        last events, and the runner switches: from then on ``handler`` is the live
        handler, ``version`` the runner's version, and :meth:`wait_caught_up` follows it.
        The rebuild runs in the caller's task; cancelling it abandons the new version
        and leaves the live one as it was.

        ``handler`` must start from an empty read model (its checkpoint is reset to 0),
        so ``version`` must never have been built before: take it with
        :meth:`ProjectionVersions.allocate
        <engine.runners.versions.ProjectionVersions.allocate>`, record the switch in
        ``commit``, and construct the runner with the recorded version after a restart
        (what the engine does); otherwise a restart goes on with the old version (from
        its own checkpoint, so still correctly).

        Args:
            handler: The new read model's handler.
            version: Its version (different from the live one).
            progress: Called as ``progress(done, head)`` after each batch.
            on_switch: Called at the switch, with the live loop still paused (swap the
                queries that answer from the read model here, so that no reader sees
                the new checkpoint with the old read model).
            commit: Awaited just before the switch, with the live loop paused: record
                the switch durably here (for example
                :meth:`ProjectionVersions.switch
                <engine.runners.versions.ProjectionVersions.switch>`). If it raises,
                the runner does not switch and the error propagates.

        Returns:
            The position at which the runner switched.

        Raises:
            ValueError: ``version`` is the live version.
            RuntimeError: Another rebuild is in progress.
            LockNotHeldError: The runner uses locks and is not the active one.
        """
        if version == self.version:
            raise ValueError(f"version {version} of {self.name!r} is the live one")
        if self._rebuild is not None:
            raise RuntimeError(f"{self.name!r} is being rebuilt already")
        self._check_lease()
        track = Track(f"{self.name}@{version}", self._sink(handler))
        self._rebuild = track
        try:
            stored = await track.sink.load(track.key)
            if stored != 0:
                await track.sink.save(track.key, 0, expected=stored)
            track.stored = 0
            logger.info("rebuilding %r as %r", self.checkpoint_name, track.key)
            await self._rebuild_pass(track, progress)
            async with self._batch_lock:
                self._check_lease()
                # The live loop is paused between batches: read the last events.
                await self._rebuild_pass(track, progress)
                if commit is not None:
                    await commit()
                self.handler, self.version, self._live = handler, version, track
                if on_switch is not None:
                    on_switch()
                self._notify()
            logger.info("switched %r to %r at %d", self.name, track.key, track.checkpoint)
            return track.checkpoint
        finally:
            self._rebuild = None

    async def follow(
        self,
        handler: Handler[E],
        *,
        version: int,
        on_switch: Callable[[], None] | None = None,
    ) -> bool:
        """Switch to version ``version``, built by a rebuild elsewhere, from its checkpoint.

        What a node does when it learns that another node (or this one before a
        restart) switched the read model: from then on ``handler`` is the live handler
        and ``version`` the runner's version, resuming from the version's saved
        checkpoint. The switch happens between two batches, like a rebuild's.

        Args:
            handler: The handler of version ``version``.
            version: The version to follow.
            on_switch: Called at the switch, with the live loop paused.

        Returns:
            ``False`` when ``version`` is live already.

        Raises:
            RuntimeError: A rebuild runs on this node.
        """
        if version == self.version:
            await trio.lowlevel.checkpoint()
            return False
        track = Track(f"{self.name}@{version}", self._sink(handler))
        async with self._batch_lock:
            if self._rebuild is not None:
                raise RuntimeError(f"{self.name!r} is being rebuilt on this node")
            stored = await track.sink.load(track.key)
            track.stored, track.checkpoint = stored, stored or 0
            self.handler, self.version, self._live = handler, version, track
            if on_switch is not None:
                on_switch()
            self._notify()
        logger.info("%r follows version %d from %d", self.name, version, track.checkpoint)
        return True

    def _check_lease(self) -> None:
        if self.locks is not None and self._lease is None:
            raise LockNotHeldError(f"{self.lease_key!r} is held by another runner")

    async def _rebuild_pass(
        self, track: Track[E], progress: Callable[[int, int], None] | None
    ) -> None:
        while True:
            count = await self._step(track)
            if count and progress is not None:
                progress(track.checkpoint, max(self._head, track.checkpoint))
            if count < self.batch_size:
                return
