"""The state view pattern at run time: named handlers fed with stored events."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Generic, TypeVar

import attrs

from engine.decider import View
from engine.events import Event
from engine.stores.base import DEFAULT_READ_LIMIT, EventStore

__all__ = ["EventHandler", "EventProjector", "ViewProjection"]

E = TypeVar("E")
R = TypeVar("R")

#: ``async def handler(event) -> None``: one read model's reaction to one stored event.
EventHandler = Callable[[Event[E]], Awaitable[None]]


@attrs.define
class EventProjector(Generic[E]):
    """Named event handlers, called in registration order for each event.

    Feed it inline (``CommandHandler(projector=...)``), from a runner, or with
    :meth:`replay` to rebuild read models from the store.
    """

    _handlers: dict[str, EventHandler[E]] = attrs.field(factory=dict, init=False)

    def register(self, name: str, handler: EventHandler[E]) -> None:
        """Add ``handler`` under ``name``.

        Raises:
            ValueError: ``name`` is taken.
        """
        if name in self._handlers:
            raise ValueError(f"a projection handler named {name!r} is registered already")
        self._handlers[name] = handler

    def names(self) -> list[str]:
        """The registered handler names, in call order."""
        return list(self._handlers)

    async def project(self, event: Event[E], *, only: Iterable[str] | None = None) -> None:
        """Run the handlers (or those named in ``only``) on ``event``.

        A handler's exception propagates with a note naming the handler and the event;
        handlers after it do not run for this event.
        """
        names = self._handlers if only is None else list(only)
        for name in names:
            try:
                await self._handlers[name](event)
            except Exception as exc:
                exc.add_note(
                    f"in projection handler {name!r} at event {event.type} "
                    f"{event.stream_id!r} v{event.version} (position {event.position})"
                )
                raise

    async def replay(
        self,
        store: EventStore[E],
        *,
        stream_ids: Sequence[str] | None = None,
        after_position: int = 0,
        batch_size: int = DEFAULT_READ_LIMIT,
        only: Iterable[str] | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> int:
        """Feed stored events to the handlers to rebuild their read models.

        Args:
            store: Where to read.
            stream_ids: Replay these streams (each in order, one after the other);
                by default the whole log in global order.
            after_position: Start after this global position (whole-log replay only).
            batch_size: Events read per page.
            only: Limit the replay to these handler names.
            progress: Called as ``progress(done, total)`` after each page (whole-log
                replay; ``total`` is the head position when the replay started).

        Returns:
            How many events were projected.
        """
        names = None if only is None else list(only)
        count = 0
        if stream_ids is not None:
            for stream_id in stream_ids:
                for event in await store.load(stream_id):
                    await self.project(event, only=names)
                    count += 1
            return count
        head = await store.head_position()
        position = after_position
        while True:
            page = await store.read_all(after_position=position, limit=batch_size)
            if not page:
                return count
            for event in page:
                await self.project(event, only=names)
            count += len(page)
            position = page[-1].position
            if progress is not None:
                progress(min(position, head), head)


@attrs.define
class ViewProjection(Generic[R, E]):
    """Keeps a pure :class:`~engine.decider.View` up to date in memory.

    ``await projection(event)`` folds the event's data into :attr:`state`; register the
    instance on an :class:`EventProjector` as a handler.
    """

    view: View[R, E]
    state: R = attrs.field(init=False)
    position: int = attrs.field(default=0, init=False)

    def __attrs_post_init__(self) -> None:
        self.state = self.view.initial_state()

    async def __call__(self, event: Event[E]) -> None:
        self.state = self.view.evolve(self.state, event.data)
        self.position = event.position

    def reset(self) -> None:
        """Back to the empty read model."""
        self.state = self.view.initial_state()
        self.position = 0
