"""An in-process lock registry on Trio locks (tier 1: one node)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import attrs
import trio

from engine.locks.base import Lease

__all__ = ["MemoryLockRegistry"]


@attrs.define
class _Slot:
    lock: trio.Lock = attrs.field(factory=trio.Lock)
    users: int = 0


@attrs.define
class MemoryLockRegistry:
    """Per-key :class:`trio.Lock` s, created on first use and dropped when idle.

    Args:
        owner_id: The name reported as holder (this node's id).
    """

    owner_id: str = "local"
    _slots: dict[str, _Slot] = attrs.field(factory=dict, init=False)
    _last_token: int = attrs.field(default=0, init=False)
    _holders: dict[str, Lease] = attrs.field(factory=dict, init=False)

    @asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[Lease]:
        slot = self._slots.setdefault(key, _Slot())
        slot.users += 1
        try:
            async with slot.lock:
                # One counter for all keys keeps tokens increasing per key without
                # remembering every key ever locked.
                self._last_token += 1
                lease = Lease(key, self.owner_id, self._last_token)
                self._holders[key] = lease
                try:
                    yield lease
                finally:
                    del self._holders[key]
        finally:
            slot.users -= 1
            if slot.users == 0:
                del self._slots[key]

    async def owner(self, key: str) -> str | None:
        await trio.lowlevel.checkpoint()
        lease = self._holders.get(key)
        return None if lease is None else lease.owner
