"""A Python client of a running engine: sync (:class:`Client`) and async
(:class:`AsyncClient`, for asyncio and Trio alike).

Commands carry a command id (made up when not given) and are retried with that same id
on a lost connection or a 504 ``unknown_outcome``, so a retry acts at most once.
Queries read your own writes with ``wait_for_position``. Error answers raise typed
errors that are also the engine's own classes: ``except DomainError`` works whether the
decider ran in this process or behind HTTP. See ``docs/client.md``.
"""

from engine.client._async import AsyncClient
from engine.client._base import (
    DEFAULT_TIMEOUT,
    DEFAULT_URL,
    BadRequestError,
    ClientError,
    CommandResult,
    EngineUnreachableError,
    EventPage,
    OutcomeUnknownError,
    RemoteCodecError,
    RemoteConcurrencyError,
    RemoteDomainError,
    RemoteEventTooLargeError,
    RemoteIdempotencyConflictError,
    RemoteInvalidParameterError,
    RemoteInvalidStreamIdError,
    RemoteNotActiveError,
    RemoteNotCaughtUpError,
    RemoteNotFoundError,
    RemoteStorageFullError,
    RemoteUnknownCommandError,
    RemoteUnknownStreamError,
    RequestTooLargeError,
    RetryPolicy,
    StoredEvent,
    UnauthorizedError,
)
from engine.client._sync import Client

__all__ = [
    "DEFAULT_TIMEOUT",
    "DEFAULT_URL",
    "AsyncClient",
    "BadRequestError",
    "Client",
    "ClientError",
    "CommandResult",
    "EngineUnreachableError",
    "EventPage",
    "OutcomeUnknownError",
    "RemoteCodecError",
    "RemoteConcurrencyError",
    "RemoteDomainError",
    "RemoteEventTooLargeError",
    "RemoteIdempotencyConflictError",
    "RemoteInvalidParameterError",
    "RemoteInvalidStreamIdError",
    "RemoteNotActiveError",
    "RemoteNotCaughtUpError",
    "RemoteNotFoundError",
    "RemoteStorageFullError",
    "RemoteUnknownCommandError",
    "RemoteUnknownStreamError",
    "RequestTooLargeError",
    "RetryPolicy",
    "StoredEvent",
    "UnauthorizedError",
]
