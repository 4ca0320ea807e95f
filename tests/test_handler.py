"""The command handler: retries, idempotency, snapshots, cache and middleware."""

from __future__ import annotations

import logging
from typing import Any

import attrs
import pytest
import trio
import trio.lowlevel
import trio.testing

from engine import (
    Codec,
    CommandContext,
    CommandHandler,
    CommandResult,
    Decider,
    DomainError,
    EventRegistry,
    MemoryLockRegistry,
    MemorySnapshotStore,
    MemoryStore,
    NewEvent,
    RetriesExhaustedError,
    Snapshot,
    logging_middleware,
    profiler_middleware,
    single_writer_middleware,
)
from engine.handler import NextHandler


@attrs.frozen
class Add:
    n: int


@attrs.frozen
class Added:
    n: int


@attrs.frozen
class Total:
    value: int = 0
    count: int = 0


def _decide(state: Total, command: Add) -> list[Added]:
    if command.n < 0:
        raise DomainError("negative")
    return [] if command.n == 0 else [Added(command.n)]


def _evolve(state: Total, event: Added) -> Total:
    return Total(state.value + event.n, state.count + 1)


adder = Decider(initial_state=Total, decide=_decide, evolve=_evolve)


def codec() -> Codec[Any]:
    registry = EventRegistry()
    registry.register(Added)
    return Codec(registry)


async def test_same_command_id_twice_yields_one_set_of_events() -> None:
    """A command id sent twice appends once and returns the same result both times."""
    store: MemoryStore[Any] = MemoryStore(codec())
    handler = CommandHandler(decider=adder, store=store)
    first = await handler.handle("s", Add(5), command_id="cmd-1")
    await handler.handle("s", Add(1))
    again = await handler.handle("s", Add(5), command_id="cmd-1")
    assert again.duplicate
    assert not first.duplicate
    assert again.events == first.events
    assert again.state == first.state == Total(5, 1)
    assert await store.stream_version("s") == 2
    assert handler.statistics().duplicates == 1


async def test_command_id_of_a_rejected_command_can_be_retried() -> None:
    """A rejected command stores nothing, so the same id may succeed later."""
    store: MemoryStore[Any] = MemoryStore(codec())
    handler = CommandHandler(decider=adder, store=store)
    with pytest.raises(DomainError):
        await handler.handle("s", Add(-1), command_id="c")
    result = await handler.handle("s", Add(2), command_id="c")
    assert not result.duplicate
    assert result.version == 1


async def test_no_op_command_with_id_is_remembered() -> None:
    """A command that decides nothing still records its id: a retry stays a no-op."""
    store: MemoryStore[Any] = MemoryStore(codec())
    handler = CommandHandler(decider=adder, store=store)
    assert (await handler.handle("s", Add(0), command_id="noop")).events == []
    assert (await handler.handle("s", Add(0), command_id="noop")).duplicate


async def test_concurrent_duplicates_race_to_one_append() -> None:
    """Many tasks sending the same command id at once append exactly one event."""
    store: MemoryStore[Any] = MemoryStore(codec())
    handler = CommandHandler(decider=adder, store=store, cache_size=0)
    results: list[CommandResult[Total, Added]] = []

    async def send() -> None:
        results.append(await handler.handle("s", Add(3), command_id="same"))

    async with trio.open_nursery() as nursery:
        for _ in range(10):
            nursery.start_soon(send)
    assert await store.stream_version("s") == 1
    assert {r.events[0].event_id for r in results} == {(await store.load("s"))[0].event_id}
    assert all(r.state == Total(3, 1) for r in results)


async def test_conflicts_give_up_after_max_attempts(autojump_clock: trio.testing.MockClock) -> None:
    """A stream that always moves on raises RetriesExhaustedError after max_attempts."""

    class Racing(MemoryStore[Any]):
        """Another writer always slips an event in between the load and the append."""

        async def append(self, stream_id: str, events: Any, **kwargs: Any) -> Any:
            await super().append(stream_id, [NewEvent(Added(1))])
            return await super().append(stream_id, events, **kwargs)

    racing = Racing(codec())
    handler = CommandHandler(decider=adder, store=racing, max_attempts=4)
    with pytest.raises(RetriesExhaustedError) as info:
        await handler.handle("s", Add(1))
    assert info.value.attempts == 4
    assert handler.statistics().conflicts == 4


async def test_snapshots_every_n_events_and_loads_from_them() -> None:
    """A snapshot is saved when the stream crosses a multiple of snapshot_every, and a
    fresh handler starts from it instead of replaying everything."""
    store: MemoryStore[Any] = MemoryStore(codec())
    snapshots: MemorySnapshotStore[Total] = MemorySnapshotStore(codec(), Total)
    handler = CommandHandler(decider=adder, store=store, snapshots=snapshots, snapshot_every=3)
    for n in range(1, 8):
        await handler.handle("s", Add(n))
    snapshot = await snapshots.load_snapshot("s")
    assert snapshot == Snapshot("s", 6, Total(21, 6), schema=1)

    # Prove the snapshot is used: a fresh handler whose snapshot claims another value.
    await snapshots.save_snapshot(Snapshot("s", 7, Total(1000, 7), schema=1))
    fresh = CommandHandler(decider=adder, store=store, snapshots=snapshots)
    assert (await fresh.load("s"))[0] == Total(1000, 7)
    # A snapshot of another schema is ignored and the stream replayed.
    other = CommandHandler(decider=adder, store=store, snapshots=snapshots, snapshot_schema=2)
    assert (await other.load("s"))[0] == Total(28, 7)


async def test_cache_skips_the_read_and_a_stale_entry_costs_one_conflict() -> None:
    """A cached stream is decided without reading the store; when another writer moved
    the stream, the append conflicts and the retry reads the store: a stale entry costs a
    conflict and a reload, never a wrong decision."""
    store: MemoryStore[Any] = MemoryStore(codec())
    first = CommandHandler(decider=adder, store=store)
    second = CommandHandler(decider=adder, store=store)
    await first.handle("s", Add(1))
    await first.handle("s", Add(1))
    assert first.statistics().conflicts == 0
    await second.handle("s", Add(2))
    result = await first.handle("s", Add(3))
    assert result.state == Total(7, 4)
    assert [e.data.n for e in await store.load("s")] == [1, 1, 2, 3]
    stats = first.statistics()
    assert (stats.cache_hits, stats.cache_misses, stats.conflicts) == (2, 2, 1)


@attrs.frozen
class Reset:
    pass


@attrs.frozen
class WasReset:
    pass


@attrs.frozen
class Spend:
    n: int


def _budget_decide(state: int, command: Any) -> list[Any]:
    match command:
        case Add(n=n):
            return [Added(n)]
        case Reset():
            return [WasReset()] if state else []
        case Spend(n=n):
            if n > state:
                raise DomainError("over budget")
            return [Added(-n)]
    raise TypeError(command)


def _budget_evolve(state: int, event: Any) -> int:
    return 0 if isinstance(event, WasReset) else state + event.n


budget = Decider(initial_state=int, decide=_budget_decide, evolve=_budget_evolve)


def budget_codec() -> Codec[Any]:
    registry = EventRegistry()
    registry.register(Added)
    registry.register(WasReset)
    return Codec(registry)


async def test_empty_decision_on_a_stale_cache_is_checked_against_the_store() -> None:
    """A command that decides nothing on a cached state is decided again on the current
    state: a reset that looked unneeded (cached 0) resets what another writer added."""
    store: MemoryStore[Any] = MemoryStore(budget_codec())
    mine = CommandHandler(decider=budget, store=store)
    other = CommandHandler(decider=budget, store=store)
    await mine.handle("b", Add(0))
    await other.handle("b", Add(5))
    result = await mine.handle("b", Reset())
    assert result.state == 0
    assert [type(e.data) for e in result.events] == [WasReset]


async def test_rejection_on_a_stale_cache_is_checked_against_the_store() -> None:
    """A command rejected on a cached state is decided again on the current state: a
    spend that looked over budget succeeds after another writer's deposit."""
    store: MemoryStore[Any] = MemoryStore(budget_codec())
    mine = CommandHandler(decider=budget, store=store)
    other = CommandHandler(decider=budget, store=store)
    await mine.handle("b", Add(1))
    await other.handle("b", Add(10))
    result = await mine.handle("b", Spend(8))
    assert result.state == 3
    with pytest.raises(DomainError, match="over budget"):
        await mine.handle("b", Spend(100))


async def test_mutating_evolve_is_safe_under_concurrency() -> None:
    """An evolve that mutates a dict state in place never double-applies events, even with
    many concurrent commands on one stream."""

    def evolve(state: dict[str, int], event: Added) -> dict[str, int]:
        state["total"] = state.get("total", 0) + event.n
        return state

    mutating = Decider(initial_state=dict, decide=lambda s, c: [Added(c.n)], evolve=evolve)
    store: MemoryStore[Any] = MemoryStore(codec())
    handler = CommandHandler(decider=mutating, store=store)

    async def worker() -> None:
        for _ in range(10):
            await handler.handle("s", Add(1))

    async with trio.open_nursery() as nursery:
        for _ in range(8):
            nursery.start_soon(worker)
    state, version = await handler.load("s")
    assert version == 80
    assert state == {"total": 80}


async def test_middleware_runs_outermost_first_and_can_short_circuit() -> None:
    """Middleware wraps handle in order, sees the context, and may answer itself."""
    calls: list[str] = []

    def tracing(name: str) -> Any:
        async def middleware(context: CommandContext[Any], call_next: NextHandler) -> Any:
            calls.append(f"{name}>")
            result = await call_next(context)
            calls.append(f"<{name}")
            return result

        return middleware

    async def deny_negative(context: CommandContext[Any], call_next: NextHandler) -> Any:
        if context.command.n > 100:
            raise PermissionError("too much")
        return await call_next(context)

    handler = CommandHandler(
        decider=adder, store=MemoryStore(codec()), middleware=[tracing("a"), tracing("b")]
    )
    handler.use(deny_negative)
    await handler.handle("s", Add(1))
    assert calls == ["a>", "b>", "<b", "<a"]
    with pytest.raises(PermissionError):
        await handler.handle("s", Add(101))


async def test_single_writer_removes_conflicts() -> None:
    """With the single-writer middleware, concurrent commands on one stream never conflict."""
    store: MemoryStore[Any] = MemoryStore(codec())
    handler = CommandHandler(
        decider=adder, store=store, middleware=[single_writer_middleware(MemoryLockRegistry())]
    )

    async def worker() -> None:
        for _ in range(10):
            await handler.handle("s", Add(1))

    async with trio.open_nursery() as nursery:
        for _ in range(10):
            nursery.start_soon(worker)
    assert await store.stream_version("s") == 100
    assert handler.statistics().conflicts == 0


async def test_lock_registry_is_exclusive_and_fenced() -> None:
    """One holder per key at a time, tokens increase, and idle keys are forgotten."""
    registry = MemoryLockRegistry("node-a")
    tokens: list[int] = []
    inside = 0

    async def holder() -> None:
        nonlocal inside
        async with registry.hold("k") as lease:
            inside += 1
            assert inside == 1
            assert await registry.owner("k") == "node-a"
            tokens.append(lease.token)
            await trio.lowlevel.checkpoint()
            inside -= 1

    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(holder)
    assert tokens == sorted(tokens)
    assert len(set(tokens)) == 5
    assert await registry.owner("k") is None
    assert registry._slots == {}


async def test_logging_and_profiler_middleware(
    caplog: pytest.LogCaptureFixture, autojump_clock: trio.testing.MockClock
) -> None:
    """The logging middleware logs outcome and duration; the profiler hook records time
    from Trio's clock, including failures."""
    recorded: list[tuple[str, float, bool]] = []

    class Recorder:
        def record(self, operation: str, seconds: float, *, ok: bool) -> None:
            recorded.append((operation, seconds, ok))

    async def slow(context: CommandContext[Any], call_next: NextHandler) -> Any:
        await trio.sleep(0.25)
        return await call_next(context)

    handler = CommandHandler(
        decider=adder,
        store=MemoryStore(codec()),
        middleware=[logging_middleware(), profiler_middleware(Recorder()), slow],
    )
    with caplog.at_level(logging.INFO, logger="eskit.commands"):
        await handler.handle("acc", Add(2), command_id="c-1")
        with pytest.raises(DomainError):
            await handler.handle("acc", Add(-2))
    assert recorded == [("command.Add", 0.25, True), ("command.Add", 0.25, False)]
    messages = [r.getMessage() for r in caplog.records]
    assert "command Add on 'acc' -> 1 event(s), v1 in 250.00 ms" in messages[0]
    assert "failed" in messages[1]
    assert "DomainError: negative" in messages[1]
    assert caplog.records[0].command_id == "c-1"  # type: ignore[attr-defined]


async def test_after_append_hooks_and_inline_projector_errors() -> None:
    """Hooks get the stored events; an inline projector failure says the events are stored."""
    seen: list[int] = []

    async def hook(events: list[Any]) -> None:
        seen.extend(e.version for e in events)

    class Broken:
        async def project(self, event: Any) -> None:
            raise RuntimeError("read model down")

    store: MemoryStore[Any] = MemoryStore(codec())
    handler = CommandHandler(decider=adder, store=store, after_append=[hook])
    await handler.handle("s", Add(1))
    assert seen == [1]
    broken = CommandHandler(decider=adder, store=store, projector=Broken())
    with pytest.raises(RuntimeError, match="read model down"):
        await broken.handle("s", Add(1))
    assert await store.stream_version("s") == 2


def test_handler_validates_its_options() -> None:
    """Impossible retry and snapshot settings are refused up front."""
    with pytest.raises(ValueError, match="max_attempts"):
        CommandHandler(decider=adder, store=MemoryStore(), max_attempts=0)
    with pytest.raises(ValueError, match="snapshot_every"):
        CommandHandler(decider=adder, store=MemoryStore(), snapshot_every=-1)
