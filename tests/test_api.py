"""The public import surface."""

from __future__ import annotations

import subprocess
import sys

import engine

EXPECTED_API = [
    "JSON",
    "MSGPACK",
    "ORJSON",
    "AppendCondition",
    "AppendConditionError",
    "BackendError",
    "BackendRefusedError",
    "BackendUnavailableError",
    "CheckpointConflictError",
    "CheckpointStore",
    "Codec",
    "CodecError",
    "CommandBinding",
    "CommandContext",
    "CommandHandler",
    "CommandResult",
    "CommandRouter",
    "CommandSender",
    "ConcurrencyError",
    "ConfigError",
    "DcbEvent",
    "DcbRetriesExhaustedError",
    "DcbStore",
    "Decider",
    "DecisionHandler",
    "DecisionModel",
    "DecisionProjection",
    "DecisionResult",
    "DomainError",
    "DuplicateEventIdError",
    "DuplicateEventTypeError",
    "EncodedEvent",
    "EskitError",
    "Event",
    "EventProjector",
    "EventRegistry",
    "EventStore",
    "EventTooLargeError",
    "ExpectedVersion",
    "HandlerStatistics",
    "IdempotencyConflictError",
    "InvalidParameterError",
    "InvalidStreamIdError",
    "Lease",
    "LockNotHeldError",
    "LockRegistry",
    "MemoryCheckpointStore",
    "MemoryDcbStore",
    "MemoryLockRegistry",
    "MemorySnapshotStore",
    "MemoryStore",
    "NewEvent",
    "NotActiveError",
    "NotCaughtUpError",
    "NotFoundError",
    "OutcomeUnknownError",
    "Plugin",
    "PluginError",
    "ProjectionContext",
    "ProjectionDefinition",
    "ProjectionSetup",
    "Query",
    "QueryItem",
    "Reactor",
    "ReactorRegistry",
    "ReadResult",
    "RetriesExhaustedError",
    "SequencedEvent",
    "Snapshot",
    "SnapshotStore",
    "StateCache",
    "StorageFullError",
    "UnknownCommandError",
    "UnknownEventTypeError",
    "UnknownStreamError",
    "View",
    "ViewProjection",
    "combine",
    "combine_projections",
    "logging_middleware",
    "make_converter",
    "profiler_middleware",
    "single_writer_middleware",
]


def test_all_is_pinned_and_sorted() -> None:
    """``engine.__all__`` is exactly the documented API, sorted, and every name resolves."""
    assert engine.__all__ == EXPECTED_API
    assert engine.__all__ == sorted(engine.__all__, key=lambda n: (not n.isupper(), n))
    for name in engine.__all__:
        assert getattr(engine, name) is not None


def test_every_error_has_a_stable_code() -> None:
    """Each public error class is an EskitError with its own code."""
    errors = [getattr(engine, n) for n in engine.__all__ if n.endswith("Error")]
    codes = [error.code for error in errors]
    assert all(issubclass(error, engine.EskitError) for error in errors)
    assert len(codes) == len(set(codes))


def test_import_has_no_side_effects() -> None:
    """Importing engine starts no threads, imports no driver and loads no plugin."""
    code = (
        "import sys, threading, engine; "
        "bad = [m for m in ('psycopg', 'nats', 'trio_asyncio', 'sqlite3', 'importlib.metadata') "
        "if m in sys.modules]; "
        "print(threading.active_count(), bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "1 []"
