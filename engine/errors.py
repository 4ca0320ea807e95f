"""The error tree: one root, each error named for what the caller can do about it.

Every error carries structured attributes (never parse ``str(error)``) and a stable
``code`` that the HTTP ingress turns into a JSON error body.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

__all__ = [
    "BackendError",
    "BackendRefusedError",
    "BackendUnavailableError",
    "CheckpointConflictError",
    "CodecError",
    "ConcurrencyError",
    "ConfigError",
    "DomainError",
    "DuplicateEventTypeError",
    "EskitError",
    "EventTooLargeError",
    "IdempotencyConflictError",
    "InvalidCommandError",
    "InvalidParameterError",
    "InvalidStreamIdError",
    "LockNotHeldError",
    "NotActiveError",
    "NotCaughtUpError",
    "NotFoundError",
    "NotRunningError",
    "OutcomeUnknownError",
    "PluginError",
    "RebuildInProgressError",
    "RebuildNotActiveError",
    "RetriesExhaustedError",
    "StorageFullError",
    "StreamIdRequiredError",
    "UnknownCommandError",
    "UnknownEventTypeError",
    "UnknownPluginError",
    "UnknownProjectionError",
    "UnknownQueryError",
    "UnknownStreamError",
    "error_codes",
]


class EskitError(Exception):
    """The root of every error eskit raises on purpose."""

    code: ClassVar[str] = "eskit_error"


class ConcurrencyError(EskitError):
    """An append's expected version did not match the stream's actual version.

    Reload the stream and decide again; the command handler does this for you.

    Attributes:
        stream_id: The stream that was appended to.
        expected: The expected version given to ``append`` (an ``int`` or an
            :class:`~engine.events.ExpectedVersion` marker).
        actual: The stream's version at the time of the append (0 = no stream).
    """

    code = "concurrency_conflict"

    def __init__(self, stream_id: str, expected: object, actual: int) -> None:
        super().__init__(stream_id, expected, actual)
        self.stream_id = stream_id
        self.expected = expected
        self.actual = actual

    def __str__(self) -> str:
        return (
            f"stream {self.stream_id!r}: expected version {self.expected}, "
            f"but the stream is at version {self.actual}"
        )


class RetriesExhaustedError(ConcurrencyError):
    """A command kept conflicting with concurrent writers until its retry budget ran out."""

    code = "retries_exhausted"

    def __init__(self, stream_id: str, expected: object, actual: int, attempts: int) -> None:
        super().__init__(stream_id, expected, actual)
        self.attempts = attempts

    def __str__(self) -> str:
        return f"{super().__str__()} (gave up after {self.attempts} attempts)"


class DomainError(EskitError, ValueError):
    """A decider rejected a command. Raise it (or a subclass) from ``decide``."""

    code = "domain_rejected"


class InvalidStreamIdError(EskitError, ValueError):
    """A stream id was refused by the store (empty, too long, or containing a NUL)."""

    code = "invalid_stream_id"

    def __init__(self, stream_id: str, reason: str) -> None:
        super().__init__(stream_id, reason)
        self.stream_id = stream_id
        self.reason = reason

    def __str__(self) -> str:
        shown = self.stream_id if len(self.stream_id) <= 80 else self.stream_id[:77] + "..."
        return f"invalid stream id {shown!r}: {self.reason}"


class EventTooLargeError(EskitError, ValueError):
    """An encoded event is larger than the store's configured maximum; nothing was written."""

    code = "event_too_large"

    def __init__(self, stream_id: str, event_type: str, size: int, limit: int) -> None:
        super().__init__(stream_id, event_type, size, limit)
        self.stream_id = stream_id
        self.event_type = event_type
        self.size = size
        self.limit = limit

    def __str__(self) -> str:
        return (
            f"event {self.event_type!r} for stream {self.stream_id!r} is {self.size} bytes, "
            f"over the limit of {self.limit} bytes"
        )


class IdempotencyConflictError(EskitError, ValueError):
    """An idempotency key was reused for a different stream than the one it first wrote to."""

    code = "idempotency_conflict"

    def __init__(self, key: str, stream_id: str, original_stream_id: str) -> None:
        super().__init__(key, stream_id, original_stream_id)
        self.key = key
        self.stream_id = stream_id
        self.original_stream_id = original_stream_id

    def __str__(self) -> str:
        return (
            f"idempotency key {self.key!r} was used for stream {self.original_stream_id!r} "
            f"and cannot be reused for stream {self.stream_id!r}"
        )


class CheckpointConflictError(EskitError):
    """A checkpoint was saved by someone else since it was read (a stale runner)."""

    code = "checkpoint_conflict"

    def __init__(self, name: str, expected: int | None, actual: int | None) -> None:
        super().__init__(name, expected, actual)
        self.name = name
        self.expected = expected
        self.actual = actual

    def __str__(self) -> str:
        return f"checkpoint {self.name!r}: expected position {self.expected}, found {self.actual}"


class CodecError(EskitError, ValueError):
    """An event or state could not be encoded or decoded."""

    code = "codec_error"


class InvalidCommandError(CodecError):
    """A command's data does not fit its class (HTTP 400 ``codec_error``).

    Attributes:
        command: The command's name.
        problems: One ``key.path: problem`` line per problem (``data.amount: expected an
            integer, got a number 5.7``).
    """

    def __init__(self, command: str, problems: Sequence[str]) -> None:
        super().__init__(command, tuple(problems))
        self.command = command
        self.problems = tuple(problems)

    def __str__(self) -> str:
        return f"invalid {self.command} command: {'; '.join(self.problems)}"


class UnknownEventTypeError(CodecError, LookupError):
    """No class is registered under an event type name (or no name for a class)."""

    code = "unknown_event_type"

    def __init__(self, what: Any) -> None:
        super().__init__(what)
        self.what = what

    def __str__(self) -> str:
        if isinstance(self.what, str):
            return f"no event class is registered under the name {self.what!r}"
        return f"event class {self.what!r} is not registered (call registry.register first)"


class DuplicateEventTypeError(CodecError):
    """A type name or a class was registered twice."""

    code = "duplicate_event_type"


class UnknownCommandError(EskitError, LookupError):
    """No handler is routed for a command's class."""

    code = "unknown_command"


class NotFoundError(EskitError, LookupError):
    """A query found nothing for what was asked (HTTP 404)."""

    code = "not_found"


class UnknownPluginError(NotFoundError):
    """No plugin of that name is loaded in the engine."""

    code = "unknown_plugin"


class UnknownQueryError(NotFoundError):
    """A plugin has no query of that name."""

    code = "unknown_query"


class UnknownProjectionError(NotFoundError):
    """No projection of that name runs in the engine (its code stays ``not_found``)."""


class StreamIdRequiredError(EskitError, ValueError):
    """A command was sent without a stream id, and its plugin does not derive one from it."""

    code = "stream_id_required"


class RebuildInProgressError(EskitError):
    """A rebuild of that projection runs already: wait for it (its progress is in the status)."""

    code = "rebuild_in_progress"


class NotRunningError(EskitError):
    """The engine is not running its runners (not started yet, or shutting down): retry later."""

    code = "not_running"


class UnknownStreamError(NotFoundError):
    """A stream has no events: it was never written to (HTTP 404)."""

    code = "unknown_stream"


class InvalidParameterError(EskitError, ValueError):
    """A query or request parameter is missing or malformed (HTTP 400).

    Raise it from a plugin query for a parameter the caller must fix; the message is
    shown to the caller, so name the parameter and what was expected, never a secret.

    Attributes:
        parameter: The parameter's name.
    """

    code = "bad_parameter"

    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(parameter, message)
        self.parameter = parameter
        self.message = message

    def __str__(self) -> str:
        return self.message


class NotCaughtUpError(EskitError, TimeoutError):
    """A read asked for a position the read model had not reached in the time allowed.

    Expected under load and harmless: retry the read, or wait longer.

    Attributes:
        position: The position that was waited for.
        reached: The position the read model had reached (``None`` if unknown).
    """

    code = "not_caught_up"

    def __init__(self, position: int, reached: int | None, *, what: str = "the read model") -> None:
        super().__init__(position, reached, what)
        self.position = position
        self.reached = reached
        self.what = what

    def __str__(self) -> str:
        at = "" if self.reached is None else f" (it is at {self.reached})"
        return f"{self.what} did not reach position {self.position} in time{at}; retry the read"


class NotActiveError(EskitError):
    """This node does not have what was asked for: another node's runner is the active one.

    A read model kept only where its runner is active (not in the shared database)
    cannot be read on a node where that runner stands by. Ask the active node.

    Attributes:
        what: The runner (projection) asked for.
        owner: The node whose runner is active (``None`` if none is right now).
    """

    code = "not_active"

    def __init__(self, what: str, owner: str | None) -> None:
        super().__init__(what, owner)
        self.what = what
        self.owner = owner

    def __str__(self) -> str:
        where = "no node is, right now" if self.owner is None else f"node {self.owner!r} is"
        return (
            f"{self.what} is kept only on the node whose runner is active, and {where}; "
            "ask that node"
        )


class BackendError(EskitError):
    """A backend (SQLite, PostgreSQL, NATS) failed an operation.

    The root of the backend error policy (docs/runtime.md, "Backend errors"): every
    backend translates its driver's errors, in one place, into a subclass of this, into
    :class:`StorageFullError`, or into ``trio.ClosedResourceError`` for a closed store.

    Attributes:
        backend: ``"sqlite"``, ``"postgres"`` or ``"nats"`` (or a third-party name).
        detail: What the backend said, for people (never parse it).
    """

    code = "backend_error"

    def __init__(self, backend: str, detail: str) -> None:
        super().__init__(detail)
        self.backend = backend
        self.detail = detail

    def __str__(self) -> str:
        return self.detail


class BackendUnavailableError(BackendError, ConnectionError):
    """The backend cannot be reached (refused, down, no connection free in time).

    Nothing was applied; retry once it is back. A :class:`ConnectionError`, so code
    that caught the builtin keeps working.
    """

    code = "backend_unavailable"


class OutcomeUnknownError(BackendUnavailableError, TimeoutError):
    """The connection was lost, or no answer came in time, while an operation was in flight.

    A write may or may not have been applied: read back (or retry with the same
    idempotency key or event ids) before deciding again. Also a :class:`TimeoutError`.
    """

    code = "outcome_unknown"


class BackendRefusedError(BackendError):
    """The backend answered and refused the operation (an error no other engine error names).

    Nothing was applied. Retrying the same request will usually fail the same way: the
    detail says why (permissions, a setting, a corrupt file...).
    """

    code = "backend_refused"


class RebuildNotActiveError(NotActiveError):
    """A rebuild was asked of a node whose runner stands by: ask the node holding its lease."""

    def __str__(self) -> str:
        where = "another node" if self.owner is None else f"node {self.owner!r}"
        return f"{self.what!r} is active on {where}: rebuild it there"


class StorageFullError(EskitError, OSError):
    """The store's disk (or database) is full: nothing was written; retry once there is room."""

    code = "storage_full"


class LockNotHeldError(EskitError):
    """A lock was released, renewed or used by someone who no longer holds it."""

    code = "lock_not_held"


class ConfigError(EskitError, ValueError):
    """The configuration is invalid; the message names the key path."""

    code = "config_error"


class PluginError(EskitError, ImportError):
    """A plugin could not be loaded; the message names the distribution."""

    code = "plugin_error"


def error_codes(error: BaseException) -> tuple[str, ...]:
    """The stable codes of an error from the most specific to ``eskit_error``.

    What a node sends for an error another node raised: the receiver maps the first code
    it knows (a plugin's ``insufficient_funds`` falls back to ``domain_rejected``). Empty
    for an error outside the tree (an internal error).
    """
    codes: list[str] = []
    for cls in type(error).__mro__:
        code = vars(cls).get("code")
        if issubclass(cls, EskitError) and isinstance(code, str) and code not in codes:
            codes.append(code)
    return tuple(codes)
