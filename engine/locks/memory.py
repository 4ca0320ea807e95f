"""An in-process lock registry on Trio locks (tier 1: one node)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import attrs
import trio

from engine.errors import LockNotHeldError
from engine.locks.base import Lease

__all__ = ["MemoryLockRegistry"]


@attrs.define
class _Slot:
    lock: trio.Lock = attrs.field(factory=trio.Lock)
    users: int = 0


@attrs.define(eq=False)
class _Held:
    lease: Lease
    scope: trio.CancelScope
    lost: bool = False


@attrs.define
class MemoryLockRegistry:
    """Per-key :class:`trio.Lock` s, created on first use and dropped when idle.

    A lease is never lost on its own here; :meth:`expire` takes one away the way a
    distributed registry does when its TTL runs out, so that the holder's lease-loss
    path can be tested on one node.

    Args:
        owner_id: The name reported as holder (this node's id).
    """

    owner_id: str = "local"
    _slots: dict[str, _Slot] = attrs.field(factory=dict, init=False)
    _last_token: int = attrs.field(default=0, init=False)
    _holders: dict[str, _Held] = attrs.field(factory=dict, init=False)

    @asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[Lease]:
        slot = self._slots.setdefault(key, _Slot())
        slot.users += 1
        try:
            async with slot.lock:
                # One counter for all keys keeps tokens increasing per key without
                # remembering every key ever locked.
                self._last_token += 1
                held = _Held(Lease(key, self.owner_id, self._last_token), trio.CancelScope())
                self._holders[key] = held
                try:
                    with held.scope:
                        yield held.lease
                finally:
                    del self._holders[key]
                if held.lost:
                    raise LockNotHeldError(f"the lease on {key!r} was lost while it was held")
        finally:
            slot.users -= 1
            if slot.users == 0:
                del self._slots[key]

    async def owner(self, key: str) -> str | None:
        await trio.lowlevel.checkpoint()
        held = self._holders.get(key)
        return None if held is None else held.lease.owner

    def expire(self, key: str) -> bool:
        """Take the lease on ``key`` away from its holder, as a TTL running out would.

        The holder's ``async with registry.hold(key)`` block is cancelled and raises
        :class:`~engine.errors.LockNotHeldError`; the next waiter then gets the lock
        with a larger fencing token.

        Returns:
            Whether ``key`` was held.
        """
        held = self._holders.get(key)
        if held is None:
            return False
        held.lost = True
        held.scope.cancel()
        return True
