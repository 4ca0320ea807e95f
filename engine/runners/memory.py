"""In-memory dead-letter and transactional stores: fakes for tests and prototypes."""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio

from engine.errors import CheckpointConflictError
from engine.stores.base import DeadLetter
from engine.stores.dead_letter_encoding import check_runner, storable_letter

__all__ = ["MemoryDeadLetterStore", "MemoryTransaction", "MemoryTransactionalStore"]


@attrs.define
class MemoryDeadLetterStore:
    """A :class:`~engine.runners.base.DeadLetterStore` in a dict (lost on exit)."""

    _letters: dict[tuple[str, int], DeadLetter] = attrs.field(factory=dict, init=False)

    async def park(self, letter: DeadLetter) -> None:
        await trio.lowlevel.checkpoint()
        # The same rules as the durable stores: a letter reads back alike everywhere.
        letter = storable_letter(letter)
        self._letters[letter.runner, letter.position] = letter

    async def dead_letters(self, runner: str | None = None) -> list[DeadLetter]:
        await trio.lowlevel.checkpoint()
        if runner is not None:
            check_runner(runner)
        return [
            letter
            for key, letter in sorted(self._letters.items())
            if runner is None or key[0] == runner
        ]

    async def discard(self, runner: str, position: int) -> bool:
        await trio.lowlevel.checkpoint()
        check_runner(runner)
        return self._letters.pop((runner, position), None) is not None


def _save(checkpoints: dict[str, int], name: str, position: int, expected: int | None) -> None:
    actual = checkpoints.get(name)
    if actual != expected:
        raise CheckpointConflictError(name, expected, actual)
    if position < 0:
        raise ValueError(f"a checkpoint position must be >= 0, got {position}")
    checkpoints[name] = position


@attrs.define
class MemoryTransaction:
    """One open transaction of a :class:`MemoryTransactionalStore`.

    Attributes:
        data: The read model as this transaction sees it; change it freely, the changes
            become visible only when the transaction commits.
    """

    data: dict[str, Any]
    _checkpoints: dict[str, int]

    async def load_checkpoint(self, name: str) -> int | None:
        await trio.lowlevel.checkpoint()
        return self._checkpoints.get(name)

    async def save_checkpoint(self, name: str, position: int, *, expected: int | None) -> None:
        await trio.lowlevel.checkpoint()
        _save(self._checkpoints, name, position, expected)


@attrs.define
class MemoryTransactionalStore:
    """A :class:`~engine.runners.base.TransactionalStore` holding a read model in a dict.

    Transactions run one at a time (like SQLite's single writer) on a deep copy of
    :attr:`data` and of the checkpoints; leaving the block normally swaps the copies in,
    an exception or a cancellation throws them away. It is also a plain
    :class:`~engine.stores.base.CheckpointStore` over the committed checkpoints.

    Attributes:
        data: The committed read model.
    """

    data: dict[str, Any] = attrs.field(factory=dict)
    _checkpoints: dict[str, int] = attrs.field(factory=dict, init=False)
    _lock: trio.Lock = attrs.field(factory=trio.Lock, init=False)
    commits: int = attrs.field(default=0, init=False)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[MemoryTransaction]:
        async with self._lock:
            transaction = MemoryTransaction(copy.deepcopy(self.data), dict(self._checkpoints))
            yield transaction
            # Reached only when the block raised nothing: commit.
            self.data = transaction.data
            self._checkpoints = transaction._checkpoints
            self.commits += 1

    async def load_checkpoint(self, name: str) -> int | None:
        await trio.lowlevel.checkpoint()
        return self._checkpoints.get(name)

    async def save_checkpoint(self, name: str, position: int, *, expected: int | None) -> None:
        async with self.transaction() as transaction:
            await transaction.save_checkpoint(name, position, expected=expected)
