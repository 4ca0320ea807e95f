"""Projection and automation runners on memory backends: catch-up, follow, checkpoints,
error policies, transactional projections, statistics."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from engine import (
    CheckpointConflictError,
    CommandHandler,
    Decider,
    Event,
    LockNotHeldError,
    MemoryCheckpointStore,
    MemoryLockRegistry,
    NewEvent,
    Reactor,
    ReactorRegistry,
)
from engine.bus.channel import ChannelEventBus
from engine.runners import (
    AutomationRunner,
    BatchProjection,
    ErrorPolicy,
    MemoryDeadLetterStore,
    MemoryTransaction,
    MemoryTransactionalStore,
    OnFailure,
    ProjectionRunner,
    RunnerState,
    RunnerStoppedError,
    StartAt,
    TransactionalProjection,
)
from tests.runtime.helpers import Noted, Recorder, append, memory_store


@attrs.define
class CountingCheckpoints:
    """A checkpoint store that records every save (delegating to a memory store)."""

    inner: MemoryCheckpointStore = attrs.field(factory=MemoryCheckpointStore)
    saves: list[int] = attrs.field(factory=list)

    async def load_checkpoint(self, name: str) -> int | None:
        return await self.inner.load_checkpoint(name)

    async def save_checkpoint(self, name: str, position: int, *, expected: int | None) -> None:
        await self.inner.save_checkpoint(name, position, expected=expected)
        self.saves.append(position)


async def test_catches_up_in_batches_then_follows_the_bus(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The runner reads history batch by batch (one checkpoint save per batch), then is
    woken by the bus without waiting for a poll."""
    store = memory_store()
    checkpoints = CountingCheckpoints()
    bus: ChannelEventBus[Any] = ChannelEventBus()
    await append(store, 25)
    recorder = Recorder()
    runner = ProjectionRunner(
        name="p", handler=recorder, store=store, checkpoints=checkpoints, bus=bus, batch_size=10
    )
    async with trio.open_nursery() as nursery:
        assert await nursery.start(runner.run) is runner
        assert await runner.wait_caught_up() == 25
        assert checkpoints.saves == [10, 20, 25]
        started = trio.current_time()
        await bus.publish(await append(store, 2, start=25))
        assert await runner.wait_caught_up(27) == 27
        assert trio.current_time() == started
        assert runner.statistics().state is RunnerState.LIVE
        nursery.cancel_scope.cancel()
    assert recorder.seen == list(range(1, 28))
    assert await checkpoints.load_checkpoint("p@1") == 27
    assert runner.statistics().state is RunnerState.IDLE


async def test_without_a_bus_the_runner_polls(autojump_clock: trio.testing.MockClock) -> None:
    """With no bus a new event is picked up at the next poll, exactly one interval later."""
    store = memory_store()
    recorder = Recorder()
    runner = ProjectionRunner(
        name="p", handler=recorder, store=store, checkpoints=MemoryCheckpointStore(),
        poll_interval=2.5,
    )  # fmt: skip
    async with trio.open_nursery() as nursery:
        await nursery.start(runner.run)
        await trio.testing.wait_all_tasks_blocked()
        await append(store, 1)
        await runner.wait_caught_up(1)
        nursery.cancel_scope.cancel()
    assert recorder.times == [2.5]


async def test_announced_but_invisible_events_are_read_again_soon(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A notification of events that read_all does not return yet (a late commit) makes
    the runner look again after 10 ms, 20 ms... instead of waiting for the poll."""
    store = memory_store()
    bus: ChannelEventBus[Any] = ChannelEventBus()
    recorder = Recorder()
    runner = ProjectionRunner(
        name="p", handler=recorder, store=store, checkpoints=MemoryCheckpointStore(), bus=bus
    )
    later = memory_store()
    announced = await append(later, 2)  # the same positions, stored "later"
    async with trio.open_nursery() as nursery:
        await nursery.start(runner.run)
        await bus.publish(announced)
        await trio.testing.wait_all_tasks_blocked()
        assert recorder.seen == []
        await trio.sleep(0.025)  # two looks: at 10 ms and at 30 ms
        await append(store, 2)
        await runner.wait_caught_up(2)
        nursery.cancel_scope.cancel()
    assert recorder.times == [0.03, 0.03]


async def test_restarts_from_the_checkpoint() -> None:
    """A runner run again continues after its saved checkpoint: nothing is handled twice
    after a completed batch, nothing is skipped."""
    store = memory_store()
    checkpoints = MemoryCheckpointStore()
    recorder = Recorder()
    runner = ProjectionRunner(name="p", handler=recorder, store=store, checkpoints=checkpoints)
    await append(store, 3)
    async with trio.open_nursery() as nursery:
        await nursery.start(runner.run)
        await runner.wait_caught_up()
        nursery.cancel_scope.cancel()
    await append(store, 2, start=3)
    async with trio.open_nursery() as nursery:
        await nursery.start(runner.run)
        await runner.wait_caught_up()
        nursery.cancel_scope.cancel()
    assert recorder.seen == [1, 2, 3, 4, 5]
    assert runner.statistics().restarts == 1
    assert runner.statistics().processed == 5


async def test_a_batch_interrupted_midway_is_delivered_again() -> None:
    """At-least-once: cancelled in the middle of a batch, the runner saved nothing for it,
    so a restart handles the whole batch again."""
    store = memory_store()
    checkpoints = MemoryCheckpointStore()
    recorder = Recorder(block_at=5)
    runner = ProjectionRunner(
        name="p", handler=recorder, store=store, checkpoints=checkpoints, batch_size=10
    )
    await append(store, 8)
    async with trio.open_nursery() as nursery:
        await nursery.start(runner.run)
        await recorder.blocked.wait()
        assert runner.statistics().lag == 8  # nothing of this batch is saved yet
        nursery.cancel_scope.cancel()
    assert await checkpoints.load_checkpoint("p@1") is None
    recorder.block_at = None
    async with trio.open_nursery() as nursery:
        await nursery.start(runner.run)
        await runner.wait_caught_up()
        nursery.cancel_scope.cancel()
    assert recorder.seen == [1, 2, 3, 4, 1, 2, 3, 4, 5, 6, 7, 8]


async def test_stop_policy_retries_with_exact_backoff_then_stops(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A failing event is retried after 0.5, 1 and 1.5 s (capped), then the runner stops
    with the reason, keeping the progress made before the event."""
    store = memory_store()
    checkpoints = MemoryCheckpointStore()
    recorder = Recorder(fail={3: 10})
    policy = ErrorPolicy(retries=3, backoff_initial=0.5, backoff_multiplier=2, backoff_max=1.5)
    runner = ProjectionRunner(
        name="p", handler=recorder, store=store, checkpoints=checkpoints, error_policy=policy
    )
    await append(store, 5)
    with pytest.raises(RunnerStoppedError) as caught:
        await runner.run()
    assert recorder.times == [0, 0, 0, 0.5, 1.5, 3.0]
    assert (caught.value.runner, caught.value.position, caught.value.attempts) == ("p@1", 3, 4)
    assert caught.value.reason == "ValueError: boom at 3"
    assert isinstance(caught.value.__cause__, ValueError)
    assert str(caught.value) == (
        "runner 'p@1' stopped at position 3 after 4 attempt(s): ValueError: boom at 3"
    )
    assert await checkpoints.load_checkpoint("p@1") == 2
    stats = runner.statistics()
    assert (stats.state, stats.retries, stats.checkpoint) == (RunnerState.FAILED, 3, 2)
    assert stats.last_error == "ValueError: boom at 3"


async def test_park_policy_records_a_dead_letter_and_goes_on(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """With the park policy a poison event goes to the dead-letter store with its reason,
    and the events after it are handled."""
    store = memory_store()
    dead_letters = MemoryDeadLetterStore()
    recorder = Recorder(fail={3: 99})
    runner = ProjectionRunner(
        name="p",
        handler=recorder,
        store=store,
        checkpoints=MemoryCheckpointStore(),
        dead_letters=dead_letters,
        error_policy=ErrorPolicy(retries=1, on_failure=OnFailure.PARK),
    )
    events = await append(store, 5)
    async with trio.open_nursery() as nursery:
        await nursery.start(runner.run)
        assert await runner.wait_caught_up() == 5
        nursery.cancel_scope.cancel()
    assert recorder.seen == [1, 2, 4, 5]
    [letter] = await dead_letters.dead_letters("p@1")
    assert (letter.position, letter.event_id, letter.stream_id, letter.version) == (
        3,
        events[2].event_id,
        "s",
        3,
    )
    assert (letter.type, letter.reason, letter.attempts) == ("Noted", "ValueError: boom at 3", 2)
    assert runner.statistics().parked == 1
    assert await dead_letters.dead_letters("other") == []
    assert await dead_letters.discard("p@1", 3)
    assert not await dead_letters.discard("p@1", 3)


async def test_a_failing_batch_is_retried_event_by_event(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A batch handler's failure is narrowed down to the one event that fails: only it is
    parked, every other event is applied once."""
    store = memory_store()
    dead_letters = MemoryDeadLetterStore()
    applied: list[int] = []
    calls: list[list[int]] = []

    async def handle(events: Sequence[Event[Any]]) -> None:
        await trio.lowlevel.checkpoint()
        positions = [event.position for event in events]
        calls.append(positions)
        if 3 in positions:
            raise KeyError("poison")
        applied.extend(positions)

    runner = ProjectionRunner(
        name="p",
        handler=BatchProjection(handle),
        store=store,
        checkpoints=MemoryCheckpointStore(),
        dead_letters=dead_letters,
        error_policy=ErrorPolicy(retries=0, on_failure=OnFailure.PARK),
    )
    await append(store, 5)
    async with trio.open_nursery() as nursery:
        await nursery.start(runner.run)
        await runner.wait_caught_up()
        await append(store, 2, start=5)
        await runner.wait_caught_up()
        nursery.cancel_scope.cancel()
    assert calls[:6] == [[1, 2, 3, 4, 5], [1], [2], [3], [4], [5]]
    assert applied == [1, 2, 4, 5, 6, 7]
    assert [letter.position for letter in await dead_letters.dead_letters()] == [3]


async def _transactional_handler(events: Sequence[Event[Any]], tx: MemoryTransaction) -> None:
    """Writes each position; n < 0 fails, n == 1000 hangs (after writing)."""
    await trio.lowlevel.checkpoint()
    for event in events:
        tx.data.setdefault("seen", []).append(event.position)
        if event.data.n < 0:
            raise ValueError("negative")
        if event.data.n == 1000:
            await trio.sleep_forever()


async def _unblocked_handler(events: Sequence[Event[Any]], tx: MemoryTransaction) -> None:
    await _transactional_handler([e for e in events if e.data.n != 1000], tx)
    tx.data.setdefault("seen", []).extend(e.position for e in events if e.data.n == 1000)
    tx.data["seen"].sort()


async def test_transactional_projection_commits_writes_with_the_checkpoint() -> None:
    """Exactly-once: a batch cancelled midway is rolled back with its checkpoint, so is a
    failed batch, and a parked event's checkpoint is committed on its own."""
    store = memory_store()
    database = MemoryTransactionalStore()
    dead_letters = MemoryDeadLetterStore()

    def runner(handle: Any) -> ProjectionRunner[Any]:
        return ProjectionRunner(
            name="p",
            handler=TransactionalProjection(database, handle),
            store=store,
            dead_letters=dead_letters,
            error_policy=ErrorPolicy(retries=0, on_failure=OnFailure.PARK),
            batch_size=10,
        )

    await append(store, 3)
    await store.append("s", [NewEvent(Noted(1000))])
    first = runner(_transactional_handler)
    async with trio.open_nursery() as nursery:
        await nursery.start(first.run)
        await trio.testing.wait_all_tasks_blocked()  # hanging inside the transaction
        nursery.cancel_scope.cancel()
    assert database.data == {}
    assert await database.load_checkpoint("p@1") is None

    await store.append("t", [NewEvent(Noted(-1))])
    await append(store, 2, start=5)
    second = runner(_unblocked_handler)  # as after a restart with fixed code
    async with trio.open_nursery() as nursery:
        await nursery.start(second.run)
        assert await second.wait_caught_up() == 7
        nursery.cancel_scope.cancel()
    assert database.data["seen"] == [1, 2, 3, 4, 6, 7]
    assert await database.load_checkpoint("p@1") == 7
    assert [letter.position for letter in await dead_letters.dead_letters()] == [5]


async def test_an_automation_can_start_at_the_end(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """start_at=END skips the history, saves the head at once, and handles what follows."""
    store = memory_store()
    checkpoints = MemoryCheckpointStore()
    recorder = Recorder()
    runner = AutomationRunner(
        name="a", handler=recorder, store=store, checkpoints=checkpoints, start_at=StartAt.END
    )
    await append(store, 5)
    async with trio.open_nursery() as nursery:
        await nursery.start(runner.run)
        assert await checkpoints.load_checkpoint("a") == 5
        await append(store, 2, start=5)
        await runner.wait_caught_up()
        nursery.cancel_scope.cancel()
    assert recorder.seen == [6, 7]


async def test_redelivered_events_resend_the_same_command_ids() -> None:
    """An automation interrupted mid-batch reacts again on restart, but the reactor's
    command ids come from the event ids, so no command takes effect twice."""
    store = memory_store()
    echo: Decider[int, int, Noted] = Decider(
        initial_state=lambda: 0,
        decide=lambda state, command: [Noted(command)],
        evolve=lambda state, event: state + 1,
    )
    commands = CommandHandler(decider=echo, store=store)

    async def send(stream_id: str, command: Any, **options: Any) -> Any:
        return await commands.handle(stream_id, command, **options)

    registry: ReactorRegistry[Any] = ReactorRegistry(send)

    async def react(event: Event[Any], send: Any) -> None:
        await send("echo", event.data.n + 100)

    registry.register("echo", Reactor(trigger=lambda data: data.n < 100, execute=react))
    block = trio.Event()
    blocked = trio.Event()

    async def handle(event: Event[Any]) -> None:
        await registry.handle(event)
        if event.position == 3 and not block.is_set():
            blocked.set()
            await trio.sleep_forever()

    runner = AutomationRunner(
        name="a", handler=handle, store=store, checkpoints=MemoryCheckpointStore()
    )
    await append(store, 4)
    async with trio.open_nursery() as nursery:
        await nursery.start(runner.run)
        await blocked.wait()
        nursery.cancel_scope.cancel()
    block.set()
    async with trio.open_nursery() as nursery:
        await nursery.start(runner.run)
        await runner.wait_caught_up()
        nursery.cancel_scope.cancel()
    echoed = [event.data.n for event in await store.load("echo")]
    assert echoed == [100, 101, 102, 103]
    assert commands.statistics().duplicates == 3


async def test_one_active_runner_per_name_and_takeover_on_lease_loss() -> None:
    """With a lock registry only the lease holder runs; when its lease is lost it goes
    back to standby and the other runner takes over from the checkpoint."""
    store = memory_store()
    checkpoints = MemoryCheckpointStore()
    bus: ChannelEventBus[Any] = ChannelEventBus()
    locks = MemoryLockRegistry("node")
    first, second = Recorder(), Recorder()

    def runner(recorder: Recorder) -> ProjectionRunner[Any]:
        return ProjectionRunner(
            name="p", handler=recorder, store=store, checkpoints=checkpoints, bus=bus, locks=locks
        )

    a, b = runner(first), runner(second)
    await append(store, 3)
    async with trio.open_nursery() as nursery:
        await nursery.start(a.run)
        await nursery.start(b.run)
        await a.wait_caught_up(3)
        await trio.testing.wait_all_tasks_blocked()
        assert (a.statistics().state, b.statistics().state) == (
            RunnerState.LIVE,
            RunnerState.STANDBY,
        )
        assert locks.expire("runner/p")
        await bus.publish(await append(store, 2, start=3))
        await b.wait_caught_up(5)
        await trio.testing.wait_all_tasks_blocked()
        assert (a.statistics().state, b.statistics().state) == (
            RunnerState.STANDBY,
            RunnerState.LIVE,
        )
        assert a.statistics().leases_lost == 1
        with pytest.raises(LockNotHeldError, match="held by another runner"):
            await a.rebuild(Recorder(), version=2)
        nursery.cancel_scope.cancel()
    assert first.seen == [1, 2, 3]
    assert second.seen == [4, 5]
    assert not locks.expire("runner/p")


async def test_a_checkpoint_moved_by_someone_else_fails_the_runner(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The compare-and-set fences a stale runner: it fails instead of overwriting."""
    store = memory_store()
    checkpoints = MemoryCheckpointStore()
    runner = ProjectionRunner(name="p", handler=Recorder(), store=store, checkpoints=checkpoints)
    await append(store, 3)
    with pytest.RaisesGroup(CheckpointConflictError):
        async with trio.open_nursery() as nursery:
            await nursery.start(runner.run)
            await runner.wait_caught_up()
            await checkpoints.save_checkpoint("p@1", 10, expected=3)
            await append(store, 1, start=3)
            await runner.wait_caught_up()
    assert runner.statistics().state is RunnerState.FAILED


async def test_rebuild_builds_a_new_version_beside_the_live_one_and_switches() -> None:
    """rebuild() builds version 2 from position 0 while version 1 stays live, then
    switches; version 1's checkpoint stays where it was."""
    store = memory_store()
    checkpoints = MemoryCheckpointStore()
    bus: ChannelEventBus[Any] = ChannelEventBus()
    old, new = Recorder(), Recorder()
    runner = ProjectionRunner(
        name="p", handler=old, store=store, checkpoints=checkpoints, bus=bus, batch_size=10
    )
    await append(store, 25)
    progress: list[tuple[int, int]] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(runner.run)
        await runner.wait_caught_up()
        await bus.publish(await append(store, 5, start=25))
        with pytest.raises(ValueError, match="live one"):
            await runner.rebuild(new, version=1)
        switched = await runner.rebuild(
            new, version=2, progress=lambda done, head: progress.append((done, head))
        )
        assert switched == 30
        assert runner.statistics().name == "p@2"
        await bus.publish(await append(store, 2, start=30))
        assert await runner.wait_caught_up() == 32
        nursery.cancel_scope.cancel()
    assert old.seen == list(range(1, 31))
    assert new.seen == list(range(1, 33))
    assert progress == [(10, 30), (20, 30), (30, 30)]
    assert await checkpoints.load_checkpoint("p@1") == 30
    assert await checkpoints.load_checkpoint("p@2") == 32
    assert runner.version == 2
    assert runner.statistics().rebuild_checkpoint is None


async def test_statistics_report_head_lag_and_rate(autojump_clock: trio.testing.MockClock) -> None:
    """Lag is head minus checkpoint; rate counts the events of the last window."""
    store = memory_store()
    recorder = Recorder(block_at=15)
    runner = ProjectionRunner(
        name="p", handler=recorder, store=store, checkpoints=MemoryCheckpointStore(),
        rate_window=5.0, batch_size=10,
    )  # fmt: skip
    await append(store, 20)
    async with trio.open_nursery() as nursery:
        await nursery.start(runner.run)
        await recorder.blocked.wait()
        stats = runner.statistics()
        assert (stats.checkpoint, stats.head, stats.lag, stats.processed) == (10, 20, 10, 14)
        assert stats.rate == 14 / 5.0
        assert stats.state is RunnerState.CATCHING_UP
        await trio.sleep(5.0)
        assert runner.statistics().rate == 0.0
        nursery.cancel_scope.cancel()


async def test_misuse_is_refused() -> None:
    """Running twice at once, parking without a dead-letter store, and a checkpointed
    handler without a checkpoint store are refused."""
    store = memory_store()
    runner = ProjectionRunner(
        name="p", handler=Recorder(), store=store, checkpoints=MemoryCheckpointStore()
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(runner.run)
        with pytest.raises(RuntimeError, match="running already"):
            await runner.run()
        nursery.cancel_scope.cancel()
    with pytest.raises(ValueError, match="dead_letters"):
        ProjectionRunner(
            name="p",
            handler=Recorder(),
            store=store,
            checkpoints=MemoryCheckpointStore(),
            error_policy=ErrorPolicy(on_failure=OnFailure.PARK),
        )
    with pytest.raises(ValueError, match="checkpoint store"):
        ProjectionRunner(name="p", handler=Recorder(), store=store)
    with pytest.raises(ValueError, match="retries"):
        ErrorPolicy(retries=-1)


async def test_a_standby_runner_waits_on_the_active_runners_checkpoint(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A runner standing by answers wait_caught_up from the checkpoint the active runner
    saves in the shared store (read at once, then after 2 ms, 4 ms, ...) unless told its effects are
    not shared, and refresh() puts that checkpoint and the head in its statistics."""
    store = memory_store()
    checkpoints = MemoryCheckpointStore()
    bus: ChannelEventBus[Any] = ChannelEventBus()
    locks = MemoryLockRegistry("node")
    first, second = Recorder(), Recorder()

    def runner(recorder: Recorder) -> ProjectionRunner[Any]:
        return ProjectionRunner(
            name="p", handler=recorder, store=store, checkpoints=checkpoints, bus=bus, locks=locks
        )

    a, b = runner(first), runner(second)
    await append(store, 3)
    async with trio.open_nursery() as nursery:
        await nursery.start(a.run)
        await nursery.start(b.run)
        await a.wait_caught_up(3)
        assert (a.following, b.following) == (False, True)
        assert b.statistics().checkpoint == 0
        with trio.move_on_after(5) as waited:  # effects kept on b: a's progress is not b's
            await b.wait_caught_up(3, shared=False)
        assert waited.cancelled_caught
        with trio.fail_after(1):
            assert await b.wait_caught_up(3) == 3
        reached: list[int] = []

        async def wait_on_b() -> None:
            reached.append(await b.wait_caught_up(5))

        with trio.fail_after(1):
            async with trio.open_nursery() as waiters:
                for _ in range(10):  # many waiters at once share the checkpoint reads
                    waiters.start_soon(wait_on_b)
                await trio.testing.wait_all_tasks_blocked()
                await bus.publish(await append(store, 2, start=3))
        assert reached == [5] * 10
        await append(store, 1, start=5)
        await a.wait_caught_up(6)
        assert await b.refresh(head=True) == 6
        stats = b.statistics()
        assert (stats.state, stats.checkpoint, stats.head, stats.lag) == (
            RunnerState.STANDBY,
            6,
            6,
            0,
        )
        nursery.cancel_scope.cancel()
    assert (first.seen, second.seen) == ([1, 2, 3, 4, 5, 6], [])


async def test_follow_switches_to_a_version_built_elsewhere(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """follow() makes a version built elsewhere live from its saved checkpoint: the
    runner goes on from there with that version's handler; the live version is a no-op."""
    store = memory_store()
    checkpoints = MemoryCheckpointStore()
    await append(store, 5)
    await checkpoints.save_checkpoint("p@3", 4, expected=None)
    old, new = Recorder(), Recorder()
    switched: list[int] = []
    runner = ProjectionRunner(name="p", handler=old, store=store, checkpoints=checkpoints)
    async with trio.open_nursery() as nursery:
        await nursery.start(runner.run)
        await runner.wait_caught_up(5)
        assert await runner.follow(new, version=3, on_switch=lambda: switched.append(3))
        assert not await runner.follow(Recorder(), version=3)
        assert (runner.version, runner.checkpoint_name) == (3, "p@3")
        assert await runner.wait_caught_up(5) == 5
        nursery.cancel_scope.cancel()
    assert (old.seen, new.seen, switched) == ([1, 2, 3, 4, 5], [5], [3])
    assert await checkpoints.load_checkpoint("p@3") == 5
