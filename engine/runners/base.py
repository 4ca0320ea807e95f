"""The runners' ports and values: handler shapes, error policy, dead letters, statistics.

A runner feeds stored events, in global order, to one handler and keeps a durable
checkpoint (the position of the last event it is done with). Three handler shapes:

* an :data:`EventHandler` (``async def handle(event)``), for example
  :meth:`EventProjector.project <engine.projection.EventProjector.project>` or
  :meth:`ReactorRegistry.handle <engine.reactor.ReactorRegistry.handle>`: delivery is
  at-least-once, the checkpoint is saved after each batch; use ``event.event_id`` as
  the idempotency key of any effect;
* a :class:`BatchProjection` (``async def handle(events)``): the same guarantee, one call
  per batch (bulk writes);
* a :class:`TransactionalProjection`: the read model lives in a database that can commit
  its writes and the runner's checkpoint in one transaction, so each event's effect
  happens exactly once. The database implements :class:`TransactionalStore`.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Generic, Protocol, TypeAlias, TypeVar

import attrs

from engine.errors import EskitError
from engine.events import Event
from engine.projection import EventHandler
from engine.stores.base import CheckpointStore, DeadLetter, DeadLetterStore

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_POLL_INTERVAL",
    "BatchHandler",
    "BatchProjection",
    "DeadLetter",
    "DeadLetterStore",
    "ErrorPolicy",
    "Handler",
    "OnFailure",
    "RunnerState",
    "RunnerStatistics",
    "RunnerStoppedError",
    "StartAt",
    "TransactionalHandler",
    "TransactionalProjection",
    "TransactionalStore",
]

E = TypeVar("E")
T = TypeVar("T", bound=CheckpointStore)
T_co = TypeVar("T_co", bound=CheckpointStore, covariant=True)

#: Events read from the store per batch (and, for at-least-once handlers, the most
#: events redelivered after a crash).
DEFAULT_BATCH_SIZE = 500
#: Seconds between store polls when no bus signal arrives.
DEFAULT_POLL_INTERVAL = 1.0

#: ``async def handle(events) -> None``: one call per batch, at-least-once.
BatchHandler: TypeAlias = Callable[[Sequence[Event[E]]], Awaitable[None]]
#: ``async def handle(events, transaction) -> None``: writes through ``transaction``.
TransactionalHandler: TypeAlias = Callable[[Sequence[Event[E]], T], Awaitable[None]]


@attrs.frozen
class BatchProjection(Generic[E]):
    """A handler that takes a whole batch of events per call (at-least-once).

    If a batch fails, the runner retries its events one at a time, so that the error
    policy applies to the one event that fails.
    """

    handle: BatchHandler[E]


class TransactionalStore(Protocol[T_co]):
    """A database where a read model and runner checkpoints commit together.

    ``transaction()`` opens one transaction; the object it yields is a
    :class:`~engine.stores.base.CheckpointStore` bound to that transaction (and carries
    whatever the read model needs to write: a connection, a cursor...). Leaving the
    block normally commits; an exception or a cancellation rolls back.
    """

    def transaction(self) -> AbstractAsyncContextManager[T_co]: ...


@attrs.frozen
class TransactionalProjection(Generic[E, T]):
    """A read model whose writes commit with the runner's checkpoint (exactly-once).

    For each batch the runner opens ``store.transaction()``, calls
    ``handle(events, transaction)``, saves its checkpoint through the same transaction
    and commits. A crash before the commit loses both, so the batch is simply done again.

    Attributes:
        store: The database of the read model.
        handle: Applies a batch of events through the open transaction.
    """

    store: TransactionalStore[T]
    handle: TransactionalHandler[E, T]


#: What a runner feeds: a per-event handler, a :class:`BatchProjection` or a
#: :class:`TransactionalProjection`.
Handler: TypeAlias = EventHandler[E] | BatchProjection[E] | TransactionalProjection[E, Any]


class OnFailure(enum.Enum):
    """What a runner does with an event whose handler still fails after the retries."""

    #: Stop the runner with :class:`RunnerStoppedError` (its supervisor decides what next).
    STOP = "stop"
    #: Record the event in the dead-letter store with the reason, and go on.
    PARK = "park"


class StartAt(enum.Enum):
    """Where a runner with no saved checkpoint starts."""

    #: From the first event (a projection builds its whole read model).
    BEGINNING = "beginning"
    #: From the current head (an automation added to a running system reacts only to
    #: new events). The position is saved at once, so a restart skips nothing.
    END = "end"


@attrs.frozen(kw_only=True)
class ErrorPolicy:
    """How a runner treats a failing handler.

    An event (or batch) is tried ``1 + retries`` times, waiting
    ``backoff_initial * backoff_multiplier ** (n - 1)`` seconds (at most
    ``backoff_max``) before the n-th retry; then ``on_failure`` applies.
    """

    retries: int = 3
    backoff_initial: float = 0.1
    backoff_multiplier: float = 2.0
    backoff_max: float = 5.0
    on_failure: OnFailure = OnFailure.STOP

    def __attrs_post_init__(self) -> None:
        if self.retries < 0:
            raise ValueError(f"retries must be >= 0, got {self.retries}")
        if self.backoff_initial < 0 or self.backoff_max < 0 or self.backoff_multiplier < 1:
            raise ValueError("backoffs must be >= 0 and the multiplier >= 1")

    def delay(self, retry: int) -> float:
        """Seconds to wait before the ``retry``-th retry (1-based)."""
        return float(
            min(self.backoff_max, self.backoff_initial * self.backoff_multiplier ** (retry - 1))
        )


class RunnerState(enum.Enum):
    """What a runner is doing."""

    IDLE = "idle"  # not running (never started, or exited)
    STANDBY = "standby"  # waiting for its lease
    CATCHING_UP = "catching_up"  # reading the store batch after batch
    LIVE = "live"  # caught up, waiting for a signal or a poll
    RETRYING = "retrying"  # waiting before retrying a failed event
    FAILED = "failed"  # exited with an error


@attrs.frozen(kw_only=True)
class RunnerStatistics:
    """A snapshot of a runner.

    Attributes:
        name: The runner's checkpoint name.
        state: What it is doing.
        checkpoint: The position of the last event it is done with.
        head: The highest stored position it knows of.
        lag: ``head - checkpoint``.
        rate: Events handled per second over the last ``rate_window`` seconds.
        processed: Events handled (or parked) since the runner object was created.
        retries: Handler retries.
        restarts: How many times :meth:`run` was called again after the first time.
        parked: Events sent to the dead-letter store.
        leases_lost: How many times its lease was lost while active.
        rebuild_checkpoint: The position of a rebuild in progress, else ``None``.
        last_error: ``ExceptionType: message`` of the last handler failure, if any.
    """

    name: str
    state: RunnerState
    checkpoint: int
    head: int
    lag: int
    rate: float
    processed: int
    retries: int
    restarts: int
    parked: int
    leases_lost: int
    rebuild_checkpoint: int | None
    last_error: str | None


class RunnerStoppedError(EskitError):
    """A runner gave up on an event (its error policy says stop).

    The checkpoint stays before the event, so a restarted runner tries it again.

    Attributes:
        runner: The runner's checkpoint name.
        position: The failing event's position.
        attempts: How many times it was tried.
        reason: ``ExceptionType: message`` of the last failure (also the ``__cause__``).
    """

    code = "runner_stopped"

    def __init__(self, runner: str, position: int, attempts: int, reason: str) -> None:
        super().__init__(runner, position, attempts, reason)
        self.runner = runner
        self.position = position
        self.attempts = attempts
        self.reason = reason

    def __str__(self) -> str:
        return (
            f"runner {self.runner!r} stopped at position {self.position} "
            f"after {self.attempts} attempt(s): {self.reason}"
        )
