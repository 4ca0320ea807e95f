"""The lock registry port: single-writer leases keyed by name (usually a stream id)."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import Protocol

import attrs

__all__ = ["Lease", "LockRegistry"]


@attrs.frozen
class Lease:
    """Proof of holding a lock.

    Attributes:
        key: What is locked.
        owner: Who holds it (a node id).
        token: A fencing token, strictly increasing per key across holders: a later
            holder always has a larger token than an earlier one.
    """

    key: str
    owner: str
    token: int


class LockRegistry(Protocol):
    """Grants one holder at a time per key."""

    def hold(self, key: str) -> AbstractAsyncContextManager[Lease]:
        """Wait until ``key`` is free, hold it for the ``async with`` block, then release it.

        If the lease is lost while held (a distributed registry whose TTL ran out), the
        block is cancelled and :class:`~engine.errors.LockNotHeldError` is raised from the
        ``async with`` (bare, never inside an exception group, so that holders can
        ``except LockNotHeldError`` and wait for the lease again). The holder's work
        is interrupted at its next checkpoint; anything it writes after the loss must
        still be fenced (the lease's token, a compare-and-set checkpoint, an expected
        version), because another holder may already be running.
        """
        ...

    async def owner(self, key: str) -> str | None:
        """Who holds ``key`` now, or ``None``."""
        ...
