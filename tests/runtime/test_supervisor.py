"""The supervisor: exponential backoff, restart intensity, escalation, and runners under it."""

from __future__ import annotations

import functools
from typing import Any

import pytest
import trio
import trio.testing

from engine import MemoryCheckpointStore
from engine.runners import (
    ErrorPolicy,
    ProjectionRunner,
    RestartPolicy,
    RunnerStoppedError,
    ServiceFailedError,
    run_supervised,
)
from tests.runtime.helpers import Recorder, append, memory_store

POLICY = RestartPolicy(
    max_restarts=3, window=10.0, backoff_initial=0.5, backoff_multiplier=2.0, backoff_max=1.5
)


async def flaky(
    starts: list[float],
    failures: int,
    *,
    fail_before_start: bool = False,
    task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED,
) -> None:
    """A service that fails its first ``failures`` runs, then serves until cancelled."""
    starts.append(trio.current_time())
    run = len(starts)
    if fail_before_start and run <= failures:
        raise OSError(f"cannot start (run {run})")
    task_status.started(f"handle {run}")
    if run <= failures:
        raise OSError(f"crashed (run {run})")
    await trio.sleep_forever()


async def test_restarts_with_exponential_backoff(autojump_clock: trio.testing.MockClock) -> None:
    """Failures are followed by waits of 0.5, 1 and 1.5 s (capped); the handle is the
    first run's."""
    starts: list[float] = []
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(
            functools.partial(run_supervised, name="flaky", policy=POLICY),
            functools.partial(flaky, starts, 3),
        )
        await trio.sleep(10)
        nursery.cancel_scope.cancel()
    assert handle == "handle 1"
    assert starts == [0.0, 0.5, 1.5, 3.0]


async def test_too_many_failures_in_the_window_escalate(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Failure number max_restarts + 1 within the window raises ServiceFailedError with the
    last failure as its cause."""
    starts: list[float] = []
    with pytest.RaisesGroup(ServiceFailedError) as caught:
        async with trio.open_nursery() as nursery:
            await nursery.start(
                functools.partial(run_supervised, name="flaky", policy=POLICY),
                functools.partial(flaky, starts, 99),
            )
    assert starts == [0.0, 0.5, 1.5, 3.0]
    error = caught.value.exceptions[0]
    assert isinstance(error, ServiceFailedError)
    assert (error.service, error.failures, error.window) == ("flaky", 4, 10.0)
    assert isinstance(error.__cause__, OSError)
    assert str(error) == (
        "service 'flaky' failed 4 times within 10 s; giving up. Last failure: OSError: crashed (run 4)"
    )
    assert error.code == "service_failed"


async def test_failures_outside_the_window_are_forgotten(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Only failures within the window count: five failures spread over more than the
    window do not escalate, and the backoff starts over after a long healthy run."""
    starts: list[float] = []
    lifetimes = [0.0, 0.0, 20.0, 0.0, 0.0]  # then it stays up

    async def crashes(*, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        starts.append(trio.current_time())
        task_status.started()
        if len(starts) > len(lifetimes):
            await trio.sleep_forever()
        await trio.sleep(lifetimes[len(starts) - 1])
        raise OSError("crashed")

    async with trio.open_nursery() as nursery:
        await nursery.start(functools.partial(run_supervised, name="c", policy=POLICY), crashes)
        await trio.sleep(100)
        nursery.cancel_scope.cancel()
    # Failures at 0, 0.5 (waits 0.5, 1), then 21.5, 22, 23: the first two have left
    # the window, so the waits are 0.5, 1, 1.5 again.
    assert starts == [0.0, 0.5, 1.5, 22.0, 23.0, 24.5]


async def test_start_up_failures_are_retried_and_can_escalate_from_start(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A service failing before started() is retried; nursery.start returns the first
    successful start's handle, or raises the escalation if it never starts."""
    starts: list[float] = []
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(
            functools.partial(run_supervised, name="s", policy=POLICY),
            functools.partial(flaky, starts, 2, fail_before_start=True),
        )
        nursery.cancel_scope.cancel()
    assert (handle, starts) == ("handle 3", [0.0, 0.5, 1.5])

    async with trio.open_nursery() as nursery:
        with pytest.raises(ServiceFailedError, match="cannot start"):
            await nursery.start(
                functools.partial(run_supervised, name="s", policy=POLICY),
                functools.partial(flaky, [], 99, fail_before_start=True),
            )


async def test_a_service_that_returns_ends_supervision() -> None:
    """A clean return is not a failure: the supervisor returns too."""
    runs: list[int] = []

    async def once(*, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        runs.append(1)
        task_status.started()
        await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        await nursery.start(functools.partial(run_supervised, name="once"), once)
    assert runs == [1]
    with pytest.raises(ValueError, match="max_restarts"):
        RestartPolicy(max_restarts=-1)


async def test_a_stopped_runner_is_restarted_from_its_checkpoint(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A runner whose error policy stops it is restarted by the supervisor and resumes at
    the failing event; its statistics count the restart."""
    store = memory_store()
    checkpoints = MemoryCheckpointStore()
    recorder = Recorder(fail={3: 2})
    runner = ProjectionRunner(
        name="p",
        handler=recorder,
        store=store,
        checkpoints=checkpoints,
        error_policy=ErrorPolicy(retries=1, backoff_initial=0.25),
    )
    await append(store, 5)
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(
            functools.partial(run_supervised, name="p", policy=POLICY), runner.run
        )
        assert handle is runner
        await runner.wait_caught_up(5)
        nursery.cancel_scope.cancel()
    assert recorder.seen == [1, 2, 3, 4, 5]
    # Two attempts at 0 and 0.25, stop, restart after 0.5 s: the third attempt succeeds.
    assert recorder.times[2:5] == [0.0, 0.25, 0.75]
    stats = runner.statistics()
    assert (stats.restarts, stats.retries, stats.checkpoint) == (1, 1, 5)
    assert stats.last_error == "ValueError: boom at 3"
    assert RunnerStoppedError.code == "runner_stopped"
