"""Run a service under a restart policy: back off, restart, and escalate when it keeps failing.

A service is ``async def run_x(*, task_status=trio.TASK_STATUS_IGNORED)`` (bind other
arguments with :func:`functools.partial`). The supervisor runs it in its own task and,
when it raises, waits (exponential backoff) and runs it again. More than
``max_restarts`` failures within ``window`` seconds means restarting does not help: the
supervisor then raises :class:`ServiceFailedError`, which cancels the nursery it runs
in (in the engine: the engine stops with that error).
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Awaitable
from typing import Any, Generic, Protocol, TypeVar

import attrs
import trio

from engine.errors import EskitError

__all__ = ["RestartPolicy", "Service", "ServiceFailedError", "run_supervised"]

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)

logger = logging.getLogger("eskit.supervisor")


class Service(Protocol):
    """A long-running service: ``await nursery.start(service)`` returns its handle."""

    def __call__(self, *, task_status: trio.TaskStatus[Any]) -> Awaitable[object]: ...


@attrs.frozen(kw_only=True)
class RestartPolicy:
    """When and how often a failed service is started again.

    The n-th failure within the last ``window`` seconds waits
    ``min(backoff_max, backoff_initial * backoff_multiplier ** (n - 1))`` seconds before
    the restart; failure number ``max_restarts + 1`` within the window escalates. A
    service that stays up longer than ``window`` starts again from the first delay.
    """

    max_restarts: int = 5
    window: float = 60.0
    backoff_initial: float = 0.5
    backoff_multiplier: float = 2.0
    backoff_max: float = 30.0

    def __attrs_post_init__(self) -> None:
        if self.max_restarts < 0:
            raise ValueError(f"max_restarts must be >= 0, got {self.max_restarts}")
        if self.window <= 0:
            raise ValueError(f"window must be > 0, got {self.window}")
        if self.backoff_initial < 0 or self.backoff_max < 0 or self.backoff_multiplier < 1:
            raise ValueError("backoffs must be >= 0 and the multiplier >= 1")

    def delay(self, failures: int) -> float:
        """Seconds to wait after the ``failures``-th failure within the window."""
        return float(
            min(self.backoff_max, self.backoff_initial * self.backoff_multiplier ** (failures - 1))
        )


class ServiceFailedError(EskitError):
    """A supervised service failed more often than its restart policy allows.

    The last failure is the ``__cause__``.

    Attributes:
        service: The service's name.
        failures: Failures within the window (``max_restarts + 1``).
        window: The policy's window in seconds.
        reason: ``ExceptionType: message`` of the last failure.
    """

    code = "service_failed"

    def __init__(self, service: str, failures: int, window: float, reason: str) -> None:
        super().__init__(service, failures, window, reason)
        self.service = service
        self.failures = failures
        self.window = window
        self.reason = reason

    def __str__(self) -> str:
        return (
            f"service {self.service!r} failed {self.failures} times within {self.window:g} s; "
            f"giving up. Last failure: {self.reason}"
        )


@attrs.define(eq=False)
class _FirstStart(Generic[T]):
    """Passes the first ``started()`` of any run up to the supervisor's starter."""

    outer: trio.TaskStatus[T]
    done: bool = False

    def started(self, value: Any = None) -> None:
        if not self.done:
            self.done = True
            self.outer.started(value)


async def run_supervised(
    service: Service,
    *,
    name: str,
    policy: RestartPolicy = RestartPolicy(),
    task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run ``service``, restarting it when it fails, until it returns or is cancelled.

    ``await nursery.start(functools.partial(run_supervised, name=...), service)``
    returns the handle that the service's first successful start passed to
    ``task_status.started``; later runs' handles are ignored (give services a handle
    that outlives runs, as runners do).

    Args:
        service: ``async def service(*, task_status)``.
        name: For logs and the escalation error.
        policy: Backoff and restart intensity.

    Error handling:
        A failure (any :class:`Exception`, start-up failures included) is logged and
        the service restarted after the policy's delay. Cancellation and
        :class:`BaseException` s pass through untouched. When the policy's intensity is
        exceeded, :class:`ServiceFailedError` is raised (from ``nursery.start`` if the
        service never started).

    Raises:
        ServiceFailedError: Too many failures within the window.
    """
    failures: collections.deque[float] = collections.deque()
    status = _FirstStart(task_status)
    while True:
        try:
            await service(task_status=status)
        except Exception as exc:
            now = trio.current_time()
            failures.append(now)
            while failures[0] <= now - policy.window:
                failures.popleft()
            reason = f"{type(exc).__qualname__}: {exc}"
            if len(failures) > policy.max_restarts:
                logger.error("service %r failed %d times; escalating", name, len(failures))
                raise ServiceFailedError(name, len(failures), policy.window, reason) from exc
            delay = policy.delay(len(failures))
            logger.warning(
                "service %r failed (%d within %gs), restarting in %gs: %s",
                name,
                len(failures),
                policy.window,
                delay,
                reason,
                exc_info=exc,
            )
            await trio.sleep(delay)
        else:
            logger.info("service %r exited", name)
            return
