"""The runtime: checkpointed projection and automation runners, and the supervisor.

Import everything from here (``from engine.runners import ProjectionRunner``); the
submodules are the implementation. See ``docs/runtime.md``.
"""

from engine.runners.base import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_POLL_INTERVAL,
    BatchHandler,
    BatchProjection,
    DeadLetter,
    DeadLetterStore,
    ErrorPolicy,
    Handler,
    OnFailure,
    RunnerState,
    RunnerStatistics,
    RunnerStoppedError,
    StartAt,
    TransactionalHandler,
    TransactionalProjection,
    TransactionalStore,
)
from engine.runners.memory import (
    MemoryDeadLetterStore,
    MemoryTransaction,
    MemoryTransactionalStore,
)
from engine.runners.runner import (
    DEFAULT_RATE_WINDOW,
    AutomationRunner,
    ProjectionRunner,
    Runner,
)
from engine.runners.supervisor import RestartPolicy, Service, ServiceFailedError, run_supervised
from engine.runners.versions import ProjectionVersions

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_POLL_INTERVAL",
    "DEFAULT_RATE_WINDOW",
    "AutomationRunner",
    "BatchHandler",
    "BatchProjection",
    "DeadLetter",
    "DeadLetterStore",
    "ErrorPolicy",
    "Handler",
    "MemoryDeadLetterStore",
    "MemoryTransaction",
    "MemoryTransactionalStore",
    "OnFailure",
    "ProjectionRunner",
    "ProjectionVersions",
    "RestartPolicy",
    "Runner",
    "RunnerState",
    "RunnerStatistics",
    "RunnerStoppedError",
    "Service",
    "ServiceFailedError",
    "StartAt",
    "TransactionalHandler",
    "TransactionalProjection",
    "TransactionalStore",
    "run_supervised",
]
