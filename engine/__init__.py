"""eskit: event sourcing for Python.

The library API is imported from here (``from engine import Decider, CommandHandler``);
backends are imported from their modules (``from engine.stores.sqlite import open_sqlite_store``).
Importing this package has no side effects: no plugins load, no event loop starts.
"""

from engine.codec import JSON, MSGPACK, ORJSON, Codec, EncodedEvent, EventRegistry, make_converter
from engine.dcb.base import (
    AppendCondition,
    AppendConditionError,
    DcbEvent,
    DcbRetriesExhaustedError,
    DcbStore,
    DuplicateEventIdError,
    Query,
    QueryItem,
    ReadResult,
    SequencedEvent,
)
from engine.dcb.handler import (
    DecisionHandler,
    DecisionModel,
    DecisionProjection,
    DecisionResult,
    combine_projections,
)
from engine.dcb.memory import MemoryDcbStore
from engine.decider import Decider, View, combine
from engine.errors import (
    BackendError,
    BackendRefusedError,
    BackendUnavailableError,
    CheckpointConflictError,
    CodecError,
    ConcurrencyError,
    ConfigError,
    DomainError,
    DuplicateEventTypeError,
    EskitError,
    EventTooLargeError,
    IdempotencyConflictError,
    InvalidParameterError,
    InvalidStreamIdError,
    LockNotHeldError,
    NotActiveError,
    NotCaughtUpError,
    NotFoundError,
    OutcomeUnknownError,
    PluginError,
    RetriesExhaustedError,
    StorageFullError,
    UnknownCommandError,
    UnknownEventTypeError,
    UnknownStreamError,
)
from engine.events import Event, ExpectedVersion, NewEvent
from engine.handler import (
    CommandContext,
    CommandHandler,
    CommandResult,
    HandlerStatistics,
    StateCache,
)
from engine.locks.base import Lease, LockRegistry
from engine.locks.memory import MemoryLockRegistry
from engine.middleware import logging_middleware, profiler_middleware, single_writer_middleware
from engine.plugin import (
    CommandBinding,
    Plugin,
    ProjectionContext,
    ProjectionDefinition,
    ProjectionSetup,
)
from engine.projection import EventProjector, ViewProjection
from engine.reactor import CommandSender, Reactor, ReactorRegistry
from engine.router import CommandRouter
from engine.stores.base import CheckpointStore, EventStore, Snapshot, SnapshotStore
from engine.stores.memory import MemoryCheckpointStore, MemorySnapshotStore, MemoryStore

__version__ = "0.1.0"

__all__ = [
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
