"""The store ports: what every event, snapshot and checkpoint backend promises.

Every backend passes the same contract suite (:mod:`engine.testing.contract`). The
promises, in short:

* ``append`` is atomic for the whole batch and checks the expected version in the same
  step; a conflict raises :class:`~engine.errors.ConcurrencyError` with the actual version.
* An idempotency key, once stored, makes a repeated append return the original events and
  write nothing.
* Versions in a stream are 1, 2, 3... with no gap; global positions strictly increase.
* **The subscription invariant**: a reader of ``read_all`` that has seen position P never
  later sees a new event at a position <= P, however many writers commit concurrently.
* Stream ids are stored verbatim (see :func:`~engine.events.validate_stream_id`).
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Generic, Protocol, TypeVar

import attrs

from engine.events import Event, ExpectedVersion, NewEvent

__all__ = [
    "DEFAULT_MAX_EVENT_BYTES",
    "DEFAULT_READ_LIMIT",
    "CheckpointStore",
    "DeadLetter",
    "DeadLetterStore",
    "EventStore",
    "Snapshot",
    "SnapshotStore",
    "SqlDatabase",
    "SqlTransaction",
]

E = TypeVar("E")
S = TypeVar("S")

#: The largest encoded event payload (data plus metadata) a store accepts by default.
DEFAULT_MAX_EVENT_BYTES = 1024 * 1024
#: How many events ``read_all`` returns per page when no limit is given.
DEFAULT_READ_LIMIT = 1000


class EventStore(Protocol[E]):
    """An append-only log of events, grouped into streams."""

    async def append(
        self,
        stream_id: str,
        events: Sequence[NewEvent[E]],
        *,
        expected_version: int | ExpectedVersion = ExpectedVersion.ANY,
        idempotency_key: str | None = None,
    ) -> list[Event[E]]:
        """Append ``events`` to ``stream_id`` atomically.

        Args:
            stream_id: The stream (validated by :func:`~engine.events.validate_stream_id`).
            events: The events to append, in order. May be empty (only checks the
                expected version, and records the idempotency key).
            expected_version: An exact version (``0`` = no stream), or an
                :class:`ExpectedVersion` marker.
            idempotency_key: When given and already stored for this stream, the append
                writes nothing and returns the events that the first append stored.

        Returns:
            The stored events with their versions and global positions.

        Raises:
            ConcurrencyError: The stream's version does not satisfy ``expected_version``.
            InvalidStreamIdError: The stream id is refused.
            EventTooLargeError: An event is over the store's size limit (nothing written).
            IdempotencyConflictError: The key was used for another stream.
        """
        ...

    async def load(
        self, stream_id: str, *, after_version: int = 0, limit: int | None = None
    ) -> list[Event[E]]:
        """The stream's events with a version above ``after_version``, in order."""
        ...

    async def stream_version(self, stream_id: str) -> int:
        """The stream's current version (0 when it has no events)."""
        ...

    async def read_all(
        self, *, after_position: int = 0, limit: int = DEFAULT_READ_LIMIT
    ) -> list[Event[E]]:
        """Up to ``limit`` events of all streams with a position above ``after_position``,
        in global order. Only events that can no longer be preceded by a late commit are
        returned (the subscription invariant)."""
        ...

    async def head_position(self) -> int:
        """The highest position ``read_all`` can currently return (0 for an empty store)."""
        ...

    async def find_idempotent(self, idempotency_key: str) -> list[Event[E]] | None:
        """The events stored by the append that carried ``idempotency_key``, or ``None``."""
        ...


@attrs.frozen
class Snapshot(Generic[S]):
    """A stream's state as of ``version``.

    Attributes:
        stream_id: The stream.
        version: The stream version the state includes.
        state: The folded state.
        schema: The state's shape version; a snapshot whose schema differs from the
            handler's is ignored and the stream replayed.
    """

    stream_id: str
    version: int
    state: S
    schema: int = 1


class SnapshotStore(Protocol[S]):
    """Keeps the latest snapshot per stream."""

    async def save_snapshot(self, snapshot: Snapshot[S]) -> None:
        """Store ``snapshot`` unless a snapshot of a later version is stored already."""
        ...

    async def load_snapshot(self, stream_id: str) -> Snapshot[S] | None:
        """The latest snapshot of ``stream_id``, or ``None``."""
        ...


class CheckpointStore(Protocol):
    """Durable positions of runners (projections, automations), with compare-and-set."""

    async def load_checkpoint(self, name: str) -> int | None:
        """The saved position of ``name``, or ``None`` if it was never saved."""
        ...

    async def save_checkpoint(self, name: str, position: int, *, expected: int | None) -> None:
        """Save ``position`` for ``name`` if the stored value is still ``expected``.

        Raises:
            CheckpointConflictError: Another writer saved since ``expected`` was read.
        """
        ...


@attrs.frozen(kw_only=True)
class DeadLetter:
    """An event a runner gave up on.

    Attributes:
        runner: The checkpoint name of the runner (``name@version`` for projections).
        position: The event's global position (with ``runner``, the record's key).
        event_id: The event's id.
        stream_id: The event's stream.
        version: The event's version in its stream.
        type: The event's type name.
        reason: ``ExceptionType: message`` of the last failure.
        attempts: How many times the handler was tried.
        parked_at: When it was parked (wall clock).
    """

    runner: str
    position: int
    event_id: uuid.UUID
    stream_id: str
    version: int
    type: str
    reason: str
    attempts: int
    parked_at: dt.datetime


class DeadLetterStore(Protocol):
    """Where runners park the events they could not handle."""

    async def park(self, letter: DeadLetter) -> None:
        """Record ``letter``; parking the same ``(runner, position)`` again replaces it."""
        ...

    async def dead_letters(self, runner: str | None = None) -> list[DeadLetter]:
        """The parked events (of ``runner``, or of all runners), by runner and position."""
        ...

    async def discard(self, runner: str, position: int) -> bool:
        """Forget one parked event (after it was dealt with); ``False`` if unknown."""
        ...


class SqlTransaction(CheckpointStore, Protocol):
    """One open transaction of a :class:`SqlDatabase`: a read model's statements and a
    runner's checkpoint, committed together.

    Statements use the database's own parameter style (:attr:`SqlDatabase.placeholder`).
    How visible a transaction's own writes are differs by backend, so a read model that
    runs on every backend does not read what its own batch wrote (an upsert such as
    ``... ON CONFLICT (id) DO UPDATE SET n = n + excluded.n`` needs no read):

    * PostgreSQL runs each statement at once: :meth:`fetch` sees the transaction's writes.
    * SQLite collects the statements and runs them with the checkpoint in the single
      writer, in one step, when the block ends: :meth:`fetch` sees committed data only,
      and a statement's error is raised when the block ends.

    Integer parameters must fit 64 bits; both backends refuse others with an
    :class:`~engine.errors.EskitError` (SQLite when the statement is queued) instead of
    storing them as another type. SQLite's arithmetic is not checked (``n + ?`` past
    2**63-1 becomes a REAL): bound the values in the domain.
    """

    async def execute(self, query: str, params: Sequence[Any] = ()) -> None:
        """Run (or, on SQLite, queue) one statement."""
        ...

    async def executemany(self, query: str, rows: Iterable[Sequence[Any]]) -> None:
        """Run (or queue) one statement once per row of parameters."""
        ...

    async def fetch(self, query: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Rows of one query (see above for what it sees)."""
        ...


class SqlDatabase(Protocol):
    """The SQL database of an event store, for read models committed with their runner's
    checkpoint (a :class:`~engine.runners.base.TransactionalStore` of
    :class:`SqlTransaction`).

    Read-model tables live beside the events (PostgreSQL: in the store's schema, the
    first on the transaction's ``search_path``). On SQLite an authorizer refuses a read
    model's writes to the store's own tables and any transaction control; on PostgreSQL a
    read model runs with the engine's database role, so keep to your own tables.

    Attributes:
        dialect: ``"sqlite"`` or ``"postgresql"``.
        placeholder: The parameter marker of the dialect (``"?"`` or ``"%s"``).
    """

    @property
    def dialect(self) -> str: ...

    @property
    def placeholder(self) -> str: ...

    def transaction(self) -> AbstractAsyncContextManager[SqlTransaction]:
        """Open a transaction: leaving the block normally commits, an exception or a
        cancellation rolls back (on SQLite: nothing queued is run)."""
        ...

    async def fetch(self, query: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Rows of one query over committed data (for a read model's queries)."""
        ...

    async def ensure_schema(self, *statements: str) -> None:
        """Run a read model's DDL (``CREATE TABLE IF NOT EXISTS ...``) in one transaction,
        serialized with every other process doing the same on this database (so engines
        starting together do not race on the catalog)."""
        ...
