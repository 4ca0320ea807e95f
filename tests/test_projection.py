"""Projectors, views in memory, reactors and the command router."""

from __future__ import annotations

from typing import Any

import attrs
import pytest

from engine import (
    Codec,
    CommandHandler,
    CommandRouter,
    Decider,
    EventProjector,
    EventRegistry,
    MemoryStore,
    NewEvent,
    Reactor,
    ReactorRegistry,
    UnknownCommandError,
    View,
    ViewProjection,
)


@attrs.frozen
class Noted:
    text: str


@attrs.frozen
class Note:
    text: str


def codec() -> Codec[Any]:
    registry = EventRegistry()
    registry.register(Noted)
    return Codec(registry)


async def test_replay_rebuilds_from_the_whole_log_with_progress() -> None:
    """replay() feeds every stored event in global order and reports progress."""
    store: MemoryStore[Any] = MemoryStore(codec())
    for i in range(25):
        await store.append(f"s{i % 3}", [NewEvent(Noted(str(i)))])
    texts = ViewProjection(View(initial_state=list, evolve=lambda s, e: [*s, e.text]))
    projector: EventProjector[Any] = EventProjector()
    projector.register("texts", texts)
    progress: list[tuple[int, int]] = []
    count = await projector.replay(
        store, batch_size=10, progress=lambda d, t: progress.append((d, t))
    )
    assert count == 25
    assert texts.state == [str(i) for i in range(25)]
    assert progress == [(10, 25), (20, 25), (25, 25)]
    assert texts.position == 25


async def test_replay_of_chosen_streams_and_handlers() -> None:
    """replay() can be limited to some streams and some handlers."""
    store: MemoryStore[Any] = MemoryStore(codec())
    for stream_id in ("a", "b", "a"):
        await store.append(stream_id, [NewEvent(Noted(stream_id))])
    seen: dict[str, list[str]] = {"x": [], "y": []}

    def recorder(name: str) -> Any:
        async def handler(event: Any) -> None:
            seen[name].append(event.data.text)

        return handler

    projector: EventProjector[Any] = EventProjector()
    projector.register("x", recorder("x"))
    projector.register("y", recorder("y"))
    assert await projector.replay(store, stream_ids=["a"], only=["y"]) == 2
    assert seen == {"x": [], "y": ["a", "a"]}
    with pytest.raises(ValueError, match="registered already"):
        projector.register("x", recorder("x"))


async def test_failing_handler_is_named() -> None:
    """An error in a projection handler carries a note naming the handler and the event."""

    async def broken(event: Any) -> None:
        raise KeyError("missing row")

    projector: EventProjector[Any] = EventProjector()
    projector.register("broken-view", broken)
    store: MemoryStore[Any] = MemoryStore(codec())
    [event] = await store.append("s", [NewEvent(Noted("x"))])
    with pytest.raises(KeyError) as info:
        await projector.project(event)
    assert any("broken-view" in note and "'s' v1" in note for note in info.value.__notes__)


async def test_router_sends_by_command_class_and_reactors_use_it() -> None:
    """The router finds the handler of a command's class; reactors send through it."""
    store: MemoryStore[Any] = MemoryStore(codec())
    noter = Decider(
        initial_state=list,
        decide=lambda s, c: [Noted(c.text)],
        evolve=lambda s, e: [*s, e.text],
        command_types=(Note,),
        event_types=(Noted,),
    )
    router = CommandRouter()
    router.route_decider(CommandHandler(decider=noter, store=store))
    with pytest.raises(ValueError, match="routed already"):
        router.route(Note, CommandHandler(decider=noter, store=store))
    with pytest.raises(UnknownCommandError):
        await router("s", Noted("not a command"))

    async def echo(event: Any, send: Any) -> None:
        await send("echo", Note(event.data.text + "!"))

    reactors: ReactorRegistry[Any] = ReactorRegistry(router)
    reactors.register("echo", Reactor(trigger=lambda e: not e.text.endswith("!"), execute=echo))
    result = await router("s", Note("hi"))
    await reactors.handle(result.events[0])
    await reactors.handle(result.events[0])
    [echoed] = await store.load("echo")
    assert echoed.data == Noted("hi!")
    assert echoed.metadata["correlation_id"] == str(result.events[0].event_id)
