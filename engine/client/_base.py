"""What the sync and the async client share: results, errors, the retry policy, and how a
call is built and its answer read. No I/O here: the two clients only send and sleep."""

from __future__ import annotations

import datetime
import json
import random
import urllib.parse
import uuid
from collections.abc import Mapping
from typing import Any

import attrs
import httpx

from engine.cluster import UnknownOutcomeError
from engine.errors import (
    CodecError,
    ConcurrencyError,
    DomainError,
    EskitError,
    EventTooLargeError,
    IdempotencyConflictError,
    InvalidParameterError,
    InvalidStreamIdError,
    NotActiveError,
    NotCaughtUpError,
    NotFoundError,
    StorageFullError,
    UnknownCommandError,
    UnknownStreamError,
)

#: Where ``eskit run`` listens by default.
DEFAULT_URL = "http://127.0.0.1:8080"
#: Seconds a request may take (connect, send, each read) before it counts as lost.
DEFAULT_TIMEOUT = 30.0

# -- results --------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class StoredEvent:
    """An event as the engine stored it.

    Attributes:
        stream_id: Its stream.
        version: Its version within the stream (1-based).
        position: Its position in the global log.
        type: Its registered type name (``bank.AccountOpened``).
        data: Its payload, as JSON.
        metadata: Its metadata.
        event_id: Its unique id.
        recorded_at: When it was stored (UTC).
    """

    stream_id: str
    version: int
    position: int
    type: str
    data: Any
    metadata: Mapping[str, str]
    event_id: uuid.UUID
    recorded_at: datetime.datetime

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> StoredEvent:
        """An event from the engine's JSON form of it."""
        return cls(
            stream_id=value["stream_id"],
            version=int(value["version"]),
            position=int(value["position"]),
            type=value["type"],
            data=value.get("data"),
            metadata=dict(value.get("metadata") or {}),
            event_id=uuid.UUID(value["event_id"]),
            recorded_at=datetime.datetime.fromisoformat(value["recorded_at"]),
        )


@attrs.frozen(kw_only=True)
class CommandResult:
    """What a command did.

    Attributes:
        command_id: The command's id (the one given, or the one the client made up).
        stream_id: The stream it went to.
        version: The stream's version after it.
        duplicate: True when the engine had handled this command id before (a retry
            whose first attempt acted): nothing was appended this time, and ``events``
            are the ones the first attempt stored.
        state: The stream's state after it, as JSON.
        events: The events it stored.
    """

    command_id: str
    stream_id: str
    version: int
    duplicate: bool
    state: Any
    events: tuple[StoredEvent, ...]

    @property
    def position(self) -> int | None:
        """The global position of its last event (``None`` when it stored none): pass
        it as a query's ``wait_for_position`` to read your own write."""
        return self.events[-1].position if self.events else None

    @classmethod
    def from_json(cls, command_id: str, value: Mapping[str, Any]) -> CommandResult:
        """A result from the engine's JSON answer to a command."""
        return cls(
            command_id=command_id,
            stream_id=value["stream_id"],
            version=int(value["version"]),
            duplicate=bool(value.get("duplicate", False)),
            state=value.get("state"),
            events=tuple(StoredEvent.from_json(e) for e in value.get("events", ())),
        )


@attrs.frozen(kw_only=True)
class EventPage:
    """A page of the global log.

    Attributes:
        events: The events after the position asked for, in order.
        head: The log's last position when the page was read.
    """

    events: tuple[StoredEvent, ...]
    head: int


# -- errors ---------------------------------------------------------------------------


class ClientError(EskitError):
    """The engine answered with an error. Each subclass is also the engine's own error
    class for that code (``except DomainError`` catches a domain rejection, wherever it
    was raised), so callers never parse messages.

    Attributes:
        status: The HTTP status (0 when no answer came at all).
        error_code: The engine's stable code (for a domain rejection, the domain error's
            own code, such as ``insufficient_funds``).
        message: The engine's message.
        details: The whole ``error`` object of the answer.
    """

    def __init__(
        self, status: int, error_code: str, message: str, details: Mapping[str, Any]
    ) -> None:
        Exception.__init__(self, status, error_code, message)
        self.status = status
        self.error_code = error_code
        self.message = message
        self.details = dict(details)

    def __str__(self) -> str:
        return f"{self.status} {self.error_code}: {self.message}"


class BadRequestError(ClientError, ValueError):
    """The engine refused the request as malformed (400): fix it, do not retry it."""


class UnauthorizedError(ClientError, PermissionError):
    """The engine wants a (different) bearer token (401)."""


class RequestTooLargeError(ClientError, ValueError):
    """The request body is larger than the engine accepts (413 ``too_large``)."""


class RemoteDomainError(ClientError, DomainError):
    """The decider rejected the command (422); ``error_code`` is the domain's code."""


class RemoteCodecError(ClientError, CodecError):
    """The command's data does not fit its class (400 ``codec_error``); the message names
    the field."""


class RemoteInvalidStreamIdError(ClientError, InvalidStreamIdError):
    """The stream id was refused (400 ``invalid_stream_id``)."""


class RemoteInvalidParameterError(ClientError, InvalidParameterError):
    """A parameter is missing or malformed (400 ``bad_parameter``)."""


class RemoteConcurrencyError(ClientError, ConcurrencyError):
    """The command kept conflicting with concurrent writers of its stream (409). Nothing
    was stored: sending it again is safe. ``expected`` and ``actual`` are not part of
    the engine's answer (``None`` and -1); ``message`` has them in words."""


class RemoteIdempotencyConflictError(ClientError, IdempotencyConflictError):
    """The command id was used before for another stream (409 ``idempotency_conflict``)."""


class RemoteNotFoundError(ClientError, NotFoundError):
    """Nothing there (404): an unknown plugin, query or route, or a query found nothing."""


class RemoteUnknownCommandError(ClientError, UnknownCommandError):
    """The plugin has no such (public) command (404 ``unknown_command``)."""


class RemoteUnknownStreamError(ClientError, UnknownStreamError):
    """The stream has no events (404 ``unknown_stream``)."""


class RemoteEventTooLargeError(ClientError, EventTooLargeError):
    """An event of the command is larger than the store takes (413 ``event_too_large``)."""


class RemoteNotCaughtUpError(ClientError, NotCaughtUpError):
    """The read model did not reach ``wait_for_position`` in time, on every attempt
    (``not_caught_up``). Harmless: read again later."""


class RemoteNotActiveError(ClientError, NotActiveError):
    """The read model is kept only on another node (``not_active``): ask that node."""


class RemoteStorageFullError(ClientError, StorageFullError):
    """The engine's store is full: nothing was written (``storage_full``)."""


class OutcomeUnknownError(ClientError, UnknownOutcomeError):
    """No attempt of a command got an answer (504 ``unknown_outcome``, or the connection
    was lost after the request left): it may or may not have acted. Send it again with
    the same ``command_id`` once the engine is back: it acts at most once."""

    def __str__(self) -> str:
        return (
            f"no answer for command {self.command_id!r} (stream {self.stream_id!r}): "
            f"{self.message}; it may or may not have acted: send it again with the same "
            "command_id"
        )


class EngineUnreachableError(EskitError, ConnectionError):
    """No attempt got an answer from the engine (the connection was refused, lost or
    timed out). A command raises this only when none of its attempts was sent; else
    it raises :class:`OutcomeUnknownError`.

    Attributes:
        url: The engine's URL.
        attempts: How many attempts were made.
    """

    code = "engine_unreachable"

    def __init__(self, url: str, attempts: int, reason: str) -> None:
        super().__init__(url, attempts, reason)
        self.url = url
        self.attempts = attempts
        self.reason = reason

    def __str__(self) -> str:
        return f"cannot reach the engine at {self.url} ({self.attempts} attempts): {self.reason}"


_BY_CODE: Mapping[str, type[ClientError]] = {
    "unauthorized": UnauthorizedError,
    "too_large": RequestTooLargeError,
    "codec_error": RemoteCodecError,
    "invalid_stream_id": RemoteInvalidStreamIdError,
    "bad_parameter": RemoteInvalidParameterError,
    "concurrency_conflict": RemoteConcurrencyError,
    "retries_exhausted": RemoteConcurrencyError,
    "idempotency_conflict": RemoteIdempotencyConflictError,
    "unknown_command": RemoteUnknownCommandError,
    "unknown_stream": RemoteUnknownStreamError,
    "event_too_large": RemoteEventTooLargeError,
    "not_caught_up": RemoteNotCaughtUpError,
    "not_active": RemoteNotActiveError,
    "storage_full": RemoteStorageFullError,
    "unknown_outcome": OutcomeUnknownError,
}
_BY_STATUS: Mapping[int, type[ClientError]] = {
    400: BadRequestError,
    401: UnauthorizedError,
    404: RemoteNotFoundError,
    413: RequestTooLargeError,
    422: RemoteDomainError,
    504: OutcomeUnknownError,
}


# -- calls ----------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class RetryPolicy:
    """How often and how patiently a call is tried again.

    A call is tried again only where that cannot act twice: when no connection could be
    made (nothing was sent); for a command (it always carries a command id, so the
    engine acts at most once per id) or a read, also when the connection was lost after
    sending, when the answer timed out, on 504 ``unknown_outcome``, and for a query on
    ``not_caught_up``. Between attempts it waits an exponentially growing, jittered
    delay.

    Attributes:
        attempts: Attempts in all (1 = never retry).
        initial_backoff: Seconds before the second attempt (doubles each time, plus up
            to 50 % jitter).
        max_backoff: The longest wait between two attempts, in seconds.
    """

    attempts: int = attrs.field(default=4, validator=attrs.validators.ge(1))
    initial_backoff: float = attrs.field(default=0.1, validator=attrs.validators.ge(0))
    max_backoff: float = attrs.field(default=2.0, validator=attrs.validators.ge(0))

    def delay(self, attempt: int) -> float:
        """Seconds to wait after the failed attempt number ``attempt`` (1-based)."""
        base = min(self.max_backoff, self.initial_backoff * 2.0 ** (attempt - 1))
        return base * (1 + random.random() / 2)


@attrs.frozen(kw_only=True)
class Call:
    """One logical request: what to send and which failures may be retried.

    Attributes:
        method: The HTTP method.
        path: The path, already quoted.
        params: Query parameters.
        body: The JSON body, if any.
        idempotent: Sending it twice acts once (reads, commands with their id), so a
            lost connection or a timeout after sending may be retried.
        command_id: The id of the command it carries, if any.
        stream_id: The command's stream, if given.
        wait_for_position: The read-your-writes position of a query, if any.
    """

    method: str
    path: str
    params: Mapping[str, str] = attrs.field(factory=dict)
    body: Any = None
    idempotent: bool = True
    command_id: str | None = None
    stream_id: str | None = None
    wait_for_position: int | None = None


def segment(value: str) -> str:
    """One path segment, quoted so that ``/``, ``?``, ``%`` and the rest arrive verbatim."""
    return urllib.parse.quote(value, safe="")


def command_call(
    plugin: str,
    command: str,
    data: Mapping[str, Any] | None,
    *,
    stream_id: str | None,
    command_id: str | None,
) -> Call:
    """The call that sends a command (with a fresh command id unless one is given)."""
    if command_id is None:
        command_id = str(uuid.uuid4())
    body: dict[str, Any] = {"data": dict(data or {}), "command_id": command_id}
    if stream_id is not None:
        body["stream_id"] = stream_id
    return Call(
        method="POST",
        path=f"/commands/{segment(plugin)}/{segment(command)}",
        body=body,
        command_id=command_id,
        stream_id=stream_id,
    )


def query_call(
    plugin: str,
    query: str,
    params: Mapping[str, Any] | None,
    wait_for_position: int | CommandResult | None,
) -> Call:
    """The call that runs a plugin query, waiting for a position when one is given."""
    query_params = {str(k): str(v) for k, v in (params or {}).items()}
    if isinstance(wait_for_position, CommandResult):
        wait_for_position = wait_for_position.position
    if wait_for_position is not None:
        query_params["wait_for_position"] = str(int(wait_for_position))
    return Call(
        method="GET",
        path=f"/queries/{segment(plugin)}/{segment(query)}",
        params=query_params,
        wait_for_position=wait_for_position,
    )


def page_params(after: int, limit: int) -> dict[str, str]:
    """The paging parameters of the stream and log reads."""
    return {"after": str(int(after)), "limit": str(int(limit))}


def headers(token: str) -> dict[str, str]:
    """The headers every request carries."""
    sent = {"accept": "application/json", "user-agent": "eskit-client"}
    if token:
        sent["authorization"] = f"Bearer {token}"
    return sent


def timeout(seconds: float) -> httpx.Timeout:
    """httpx's timeout for ``seconds`` per step."""
    return httpx.Timeout(seconds)


def transport_retryable(call: Call, error: httpx.TransportError) -> bool:
    """Whether a call that failed in transport may be sent again.

    A connection that could not be opened sent nothing; any other transport error may
    have delivered the request, which only an idempotent call may repeat.
    """
    return call.idempotent or not ambiguous(error)


def answer_retryable(call: Call, error: ClientError) -> bool:
    """Whether an error answer may be retried (by the same call, unchanged)."""
    if isinstance(error, OutcomeUnknownError):
        return call.idempotent
    return isinstance(error, RemoteNotCaughtUpError) and call.wait_for_position is not None


def ambiguous(error: httpx.TransportError) -> bool:
    """Whether the request may have reached the engine before ``error``."""
    return not isinstance(error, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)


def lost(
    call: Call, error: httpx.TransportError, url: str, attempts: int, ambiguous: bool
) -> EskitError:
    """The error raised when the last attempt failed in transport.

    A command of which some attempt may have reached the engine has an unknown outcome;
    anything else never reached it.
    """
    reason = str(error) or type(error).__name__
    if call.command_id is not None and ambiguous:
        return error_for(
            0,
            {
                "code": "unknown_outcome",
                "message": f"the connection was lost ({reason})",
                "command_id": call.command_id,
            },
            call,
        )
    return EngineUnreachableError(url, attempts, reason)


def read(call: Call, response: httpx.Response) -> Any:
    """The JSON value of a successful answer, or raise the error it describes."""
    if response.status_code == 204:
        return None
    parsed = True
    try:
        value = json.loads(response.content) if response.content else None
    except ValueError:
        value, parsed = None, False
    if response.is_success:
        if not parsed:
            raise error_for(
                response.status_code,
                {"code": "bad_response", "message": "the engine's answer is not JSON"},
                call,
            )
        return value
    described = value.get("error") if isinstance(value, dict) else None
    if not isinstance(described, dict):
        text = response.text[:200]
        described = {"code": "http_error", "message": f"HTTP {response.status_code}: {text}"}
    raise error_for(response.status_code, described, call)


def error_for(status: int, described: Mapping[str, Any], call: Call) -> ClientError:
    """The typed error of an engine's error answer."""
    code = str(described.get("code", "error"))
    message = str(described.get("message", ""))
    cls = _BY_CODE.get(code) or _BY_STATUS.get(status) or ClientError
    error = cls(status, code, message, described)
    _fill(error, call)
    return error


def _fill(error: ClientError, call: Call) -> None:
    """Set the attributes of the engine's error class that the answer or the call tell."""
    stream_id = call.stream_id or ""
    if isinstance(error, InvalidStreamIdError | ConcurrencyError | EventTooLargeError):
        error.stream_id = stream_id
    if isinstance(error, ConcurrencyError):
        error.expected, error.actual = None, -1
    if isinstance(error, EventTooLargeError):
        error.event_type, error.size, error.limit = "", -1, -1
    if isinstance(error, InvalidStreamIdError):
        error.reason = error.message
    if isinstance(error, IdempotencyConflictError):
        error.key = call.command_id or ""
        error.stream_id, error.original_stream_id = stream_id, ""
    if isinstance(error, InvalidParameterError):
        error.parameter = str(error.details.get("parameter", ""))
    if isinstance(error, NotCaughtUpError):
        error.position = call.wait_for_position or 0
        error.reached, error.what = None, call.path
    if isinstance(error, NotActiveError):
        error.what, error.owner = call.path, None
    if isinstance(error, UnknownOutcomeError):
        error.command_id = str(error.details.get("command_id") or call.command_id or "")
        error.stream_id, error.node = stream_id, ""
