"""Following a DCB log: the one ``subscribe`` every backend hands out.

A follower reads matching events in batches after its position, delivers them one by
one through a channel, and when it has caught up waits for the store's
``wait_for_append`` (an in-process wake-up, or the backend's poll interval for writers
in other processes) before reading again. It advances over non-matching events with the
read's head, so a selective query does not re-scan the log.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Generic, Protocol, TypeVar

import trio

from engine.dcb.base import DEFAULT_FOLLOW_BATCH, Query, ReadResult, SequencedEvent

__all__ = ["Following", "follow"]

E = TypeVar("E")


class _Followable(Protocol[E]):
    async def read(
        self, query: Query | None = None, *, after: int | None = None, limit: int | None = None
    ) -> ReadResult[E]: ...

    async def wait_for_append(self, after: int) -> None: ...


@trio.as_safe_channel
async def follow(
    store: _Followable[E],
    query: Query | None = None,
    *,
    after: int = 0,
    batch_size: int = DEFAULT_FOLLOW_BATCH,
) -> AsyncGenerator[SequencedEvent[E], None]:
    """Deliver the events of ``store`` matching ``query`` after ``after``, forever.

    Use as ``async with follow(store, query, after=p) as events: async for e in events``.
    The channel is unbuffered: the follower reads at most ``batch_size`` events ahead of
    its consumer.

    Raises:
        ValueError: ``batch_size`` is below 1 or ``after`` is negative.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if after < 0:
        raise ValueError(f"after must be >= 0, got {after}")
    position = after
    while True:
        events, head = await store.read(query, after=position, limit=batch_size)
        for event in events:
            yield event
        position = max(position, head)
        if len(events) < batch_size:
            await store.wait_for_append(position)


class Following(Generic[E]):
    """Gives a DCB store the one ``subscribe``: :func:`follow` over its ``read`` and
    ``wait_for_append``."""

    __slots__ = ()

    if TYPE_CHECKING:

        async def read(
            self, query: Query | None = None, *, after: int | None = None, limit: int | None = None
        ) -> ReadResult[E]: ...

        async def wait_for_append(self, after: int) -> None: ...

    def subscribe(
        self,
        query: Query | None = None,
        *,
        after: int = 0,
        batch_size: int = DEFAULT_FOLLOW_BATCH,
    ) -> AbstractAsyncContextManager[trio.abc.ReceiveChannel[SequencedEvent[E]]]:
        """Follow the log (see :meth:`DcbStore.subscribe <engine.dcb.base.DcbStore.subscribe>`)."""
        return follow(self, query, after=after, batch_size=batch_size)
