"""The contract every lock registry passes.

Use it for a registry of your own: subclass :class:`LockRegistryContract` in a test module
and provide a ``lock_backend`` fixture that returns a :class:`LockBackend`::

    class TestMyLocks(LockRegistryContract):
        @pytest.fixture
        def lock_backend(self):
            return LockBackend(name="mine", open_registry=..., take_away=...)

``open_registry(owner_id)`` opens one more client on the *same* lock space (another node,
for a distributed registry; an in-process registry may hand out one shared instance), so
that tests can make nodes compete. Tests run under pytest-trio, on real servers, with
deadlines only as a guard against hangs (never as assertions about speed).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from typing import Any

import attrs
import pytest
import trio

from engine.errors import LockNotHeldError
from engine.locks.base import Lease, LockRegistry

__all__ = ["HOSTILE_LOCK_KEYS", "LockBackend", "LockRegistryContract"]

#: Keys that must each name their own lock: never a wildcard, never a prefix of another,
#: never folded together by encoding, normalisation, truncation or quoting.
HOSTILE_LOCK_KEYS: tuple[str, ...] = (
    "",
    " ",
    "a",
    "a.b",
    "a.*",
    "*",
    ">",
    "a.>",
    "$KV.locks.x",
    "runner/p",
    "runner/p ",
    "RUNNER/P",
    "=",
    "==",
    "nul\0inside",
    "\0",
    "tab\there",
    "new\nline",
    "'; DROP TABLE eskit_locks; --",
    "%_\\",
    "lone-surrogate-\ud800",
    "emoji-\U0001f600",
    unicodedata.normalize("NFC", "caf\u00e9"),
    unicodedata.normalize("NFD", "caf\u00e9"),
    "x" * 1000,
    "x" * 999,
    "\u00e9" * 600,
)

#: Seconds any single contract test may take before it counts as hung.
HANG_GUARD = 60


@attrs.frozen
class LockBackend:
    """How the contract opens a lock registry.

    Attributes:
        name: For test ids and messages.
        open_registry: ``open_registry(owner_id)`` opens a registry client (a node
            named ``owner_id``) on the backend's shared lock space.
        take_away: ``await take_away(registry, key)`` makes ``registry`` lose its lease
            on ``key`` the way the backend loses leases in production (a TTL running
            out, the server ending the session...).
    """

    name: str
    open_registry: Callable[[str], AbstractAsyncContextManager[LockRegistry]]
    take_away: Callable[[Any, str], Awaitable[None]]


class LockRegistryContract:
    """The behaviour every :class:`~engine.locks.base.LockRegistry` shares."""

    async def test_owner_names_the_holder_while_held(self, lock_backend: LockBackend) -> None:
        """``owner`` is ``None`` for a free key, the holder's name while it is held (seen
        from any node), and ``None`` again after the release."""
        with trio.fail_after(HANG_GUARD):
            async with (
                lock_backend.open_registry("node-a") as a,
                lock_backend.open_registry("node-b") as b,
            ):
                assert await b.owner("k") is None
                async with a.hold("k") as lease:
                    assert lease.key == "k"
                    assert await a.owner("k") == lease.owner
                    assert await b.owner("k") == lease.owner
                    assert await b.owner("other") is None
                assert await a.owner("k") is None
                assert await b.owner("k") is None

    async def test_one_holder_at_a_time_and_tokens_grow(self, lock_backend: LockBackend) -> None:
        """Tasks on two nodes compete for one key: never two inside at once, and each
        lease's fencing token is larger than every earlier holder's."""
        inside = 0
        tokens: list[int] = []

        async def compete(registry: LockRegistry, rounds: int) -> None:
            nonlocal inside
            for _ in range(rounds):
                async with registry.hold("hot") as lease:
                    inside += 1
                    assert inside == 1, "two holders inside at once"
                    tokens.append(lease.token)
                    for _ in range(3):
                        await trio.lowlevel.checkpoint()
                    assert inside == 1, "two holders inside at once"
                    inside -= 1

        with trio.fail_after(HANG_GUARD):
            async with (
                lock_backend.open_registry("node-a") as a,
                lock_backend.open_registry("node-b") as b,
                trio.open_nursery() as nursery,
            ):
                for registry in (a, b, a, b):
                    nursery.start_soon(compete, registry, 4)
        assert len(tokens) == 16
        assert tokens == sorted(tokens)
        assert len(set(tokens)) == len(tokens)

    async def test_release_lets_the_next_holder_in(self, lock_backend: LockBackend) -> None:
        """A node waiting for a held key gets it once the holder leaves its block, with a
        larger token, and is then reported as the owner."""
        order: list[str] = []
        second: list[Lease] = []
        acquired = trio.Event()

        async def wait_for_it(registry: LockRegistry) -> None:
            async with registry.hold("k") as lease:
                order.append("b in")
                second.append(lease)
                acquired.set()
                await trio.sleep_forever()

        with trio.fail_after(HANG_GUARD):
            async with (
                lock_backend.open_registry("node-a") as a,
                lock_backend.open_registry("node-b") as b,
                trio.open_nursery() as nursery,
            ):
                async with a.hold("k") as first:
                    order.append("a in")
                    nursery.start_soon(wait_for_it, b)
                    # Round trips give the waiter time to find the key taken.
                    for _ in range(3):
                        assert await b.owner("k") == first.owner
                    order.append("a out")
                await acquired.wait()
                assert await a.owner("k") == second[0].owner
                nursery.cancel_scope.cancel()
        assert order == ["a in", "a out", "b in"]
        assert second[0].token > first.token

    async def test_a_lost_lease_cancels_the_holder(self, lock_backend: LockBackend) -> None:
        """When the lease is taken away, the holder's block is cancelled and a bare
        ``LockNotHeldError`` comes out of ``hold``; another node can then take the key
        with a larger token."""
        inside = trio.Event()

        async def take_away_once_inside(registry: LockRegistry) -> None:
            await inside.wait()
            await lock_backend.take_away(registry, "k")

        with trio.fail_after(HANG_GUARD):
            async with (
                lock_backend.open_registry("node-a") as a,
                lock_backend.open_registry("node-b") as b,
            ):
                held: list[Lease] = []

                async def hold_forever() -> None:
                    async with a.hold("k") as lease:
                        held.append(lease)
                        inside.set()
                        await trio.sleep_forever()

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(take_away_once_inside, a)
                    with pytest.raises(LockNotHeldError):
                        await hold_forever()
                async with b.hold("k") as later:
                    assert later.token > held[0].token
                    assert await a.owner("k") == later.owner
                async with a.hold("k") as again:
                    assert again.token > later.token

    async def test_errors_pass_through_and_release(self, lock_backend: LockBackend) -> None:
        """An exception raised in the block comes out of ``hold`` as it is (not wrapped)
        and the key is free afterwards."""
        with trio.fail_after(HANG_GUARD):
            async with (
                lock_backend.open_registry("node-a") as a,
                lock_backend.open_registry("node-b") as b,
            ):
                with pytest.raises(KeyError, match="boom"):
                    async with a.hold("k"):
                        raise KeyError("boom")
                assert await b.owner("k") is None
                async with b.hold("k") as lease:
                    assert lease.owner == await a.owner("k")

    async def test_a_cancelled_waiter_leaves_no_trace(self, lock_backend: LockBackend) -> None:
        """A node that gives up waiting holds nothing afterwards: once the holder leaves,
        a third node takes the key at once."""
        with trio.fail_after(HANG_GUARD):
            async with (
                lock_backend.open_registry("node-a") as a,
                lock_backend.open_registry("node-b") as b,
            ):
                waiting = trio.CancelScope()

                async def wait_in_vain() -> None:
                    with waiting:
                        async with b.hold("k"):
                            raise AssertionError("got a held key")

                async with a.hold("k"), trio.open_nursery() as nursery:
                    nursery.start_soon(wait_in_vain)
                    # Round trips give the waiter time to find the key taken.
                    for _ in range(3):
                        await a.owner("k")
                    waiting.cancel()
                assert waiting.cancelled_caught
                assert await a.owner("k") is None
                async with b.hold("k") as lease:
                    assert await a.owner("k") == lease.owner

    async def test_hostile_keys_are_distinct_and_safe(self, lock_backend: LockBackend) -> None:
        """Wildcards, separators, NUL, unpaired surrogates, normalisation forms and long
        keys each name their own lock: holding some never makes another look held or
        blocks it."""
        keys = HOSTILE_LOCK_KEYS
        assert len(set(keys)) == len(keys)
        mine, theirs = keys[::2], keys[1::2]
        with trio.fail_after(HANG_GUARD):
            async with (
                lock_backend.open_registry("node-a") as a,
                lock_backend.open_registry("node-b") as b,
            ):
                async with AsyncExitStack() as held_by_a:
                    for key in mine:
                        lease = await held_by_a.enter_async_context(a.hold(key))
                        assert lease.key == key
                    for key in mine:
                        assert await b.owner(key) is not None, key
                    for key in theirs:
                        assert await b.owner(key) is None, key
                    async with AsyncExitStack() as held_by_b:
                        for key in theirs:
                            await held_by_b.enter_async_context(b.hold(key))
                        for key in theirs:
                            assert await a.owner(key) is not None, key
                for key in keys:
                    assert await a.owner(key) is None, key
