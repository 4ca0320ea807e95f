"""The NATS driver's bridge: a private asyncio loop in one side thread, fed by Trio.

nats-py is an asyncio library. It runs on a loop that :func:`open_asyncio_bridge`
starts in a side thread and joins; Trio tasks hand it whole *jobs* (coroutines) with
:meth:`AsyncioBridge.submit` and wait for the outcome without blocking the Trio loop.
Jobs cross in bursts: one thread wake-up per burst and direction, however many Trio
tasks submit at once, so concurrent callers share the cost of waking a thread.

This module knows nothing of NATS; :mod:`engine.drivers.nats` runs its client here.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import threading
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, TypeVar

import attrs
import trio

from engine.errors import OutcomeUnknownError

__all__ = ["AsyncioBridge", "open_asyncio_bridge"]

T = TypeVar("T")


@attrs.define(eq=False)
class _Job:
    """One coroutine handed from Trio to the asyncio loop, and its outcome."""

    coroutine: Coroutine[Any, Any, Any]
    done: trio.Event = attrs.field(factory=trio.Event)
    task: asyncio.Task[Any] | None = None
    result: Any = None
    error: BaseException | None = None
    abandoned: bool = False
    # A request whose reply can only come on the connection it was sent on fails as
    # soon as that connection is lost (instead of waiting out its timeout).
    fail_on_disconnect: bool = True
    lost: bool = False


@attrs.define(eq=False)
class AsyncioBridge:
    """Runs coroutines on a side thread's asyncio loop for Trio tasks.

    Get one from :func:`open_asyncio_bridge`. Any number of Trio tasks may submit at
    once.

    Attributes:
        loop: The asyncio loop of the side thread.
        jobs_in_flight: Jobs submitted and not finished yet.
    """

    loop: asyncio.AbstractEventLoop
    _token: trio.lowlevel.TrioToken
    jobs_in_flight: int = 0
    # The flags are written by both threads; each side clears its flag *before* it
    # drains its queue, so a job appended after the drain always gets a wake-up.
    _to_loop: collections.deque[_Job] = attrs.field(factory=collections.deque)
    _loop_wakeup_pending: bool = False
    _to_trio: collections.deque[_Job] = attrs.field(factory=collections.deque)
    _trio_wakeup_pending: bool = False
    # Jobs running on the asyncio loop (touched only in the asyncio thread).
    _running: set[_Job] = attrs.field(factory=set)

    async def submit(self, coroutine: Coroutine[Any, Any, T], *, fail_on_disconnect: bool) -> T:
        """Run ``coroutine`` on the asyncio loop and return its result (or raise its error).

        If the calling Trio task is cancelled, the asyncio task is cancelled too.

        Args:
            coroutine: The job; it is closed unrun if the loop ends before it starts.
            fail_on_disconnect: Whether :meth:`fail_in_flight` fails this job.

        Raises:
            OutcomeUnknownError: :meth:`fail_in_flight` failed the job.
            trio.ClosedResourceError: The job was cancelled on the asyncio side.
        """
        job = _Job(coroutine, fail_on_disconnect=fail_on_disconnect)
        self._to_loop.append(job)
        if not self._loop_wakeup_pending:
            self._loop_wakeup_pending = True
            self.loop.call_soon_threadsafe(self._start_jobs)
        self.jobs_in_flight += 1
        try:
            await job.done.wait()
        finally:
            self.jobs_in_flight -= 1
            if not job.done.is_set():
                job.abandoned = True
                self.loop.call_soon_threadsafe(self._cancel_job, job)
        if job.error is not None:
            raise job.error
        result: T = job.result
        return result

    def fail_in_flight(self) -> None:  # asyncio thread, on disconnect
        """Fail every running job that asked to fail when the connection is lost."""
        for job in list(self._running):
            if job.fail_on_disconnect and job.task is not None and not job.task.done():
                job.lost = True
                job.task.cancel()

    def call_in_trio(self, fn: Callable[[], object]) -> None:  # any thread
        """Run ``fn()`` soon on the Trio thread (dropped once Trio has finished)."""
        with contextlib.suppress(trio.RunFinishedError):
            self._token.run_sync_soon(fn)

    def _start_jobs(self) -> None:  # asyncio thread
        self._loop_wakeup_pending = False
        while self._to_loop:
            job = self._to_loop.popleft()
            if job.abandoned:
                job.coroutine.close()
                continue
            job.task = self.loop.create_task(job.coroutine)
            job.task.add_done_callback(functools.partial(self._job_done, job))
            self._running.add(job)

    def _cancel_job(self, job: _Job) -> None:  # asyncio thread
        if job.task is not None:
            job.task.cancel()

    def _job_done(self, job: _Job, task: asyncio.Task[Any]) -> None:  # asyncio thread
        self._running.discard(job)
        if task.cancelled() and job.lost:
            job.error = OutcomeUnknownError(
                "nats",
                "the NATS connection was lost while the request was in flight: "
                "it may or may not have been applied",
            )
        elif task.cancelled():
            job.error = trio.ClosedResourceError("the NATS job was cancelled")
        elif (error := task.exception()) is not None:
            job.error = error
        else:
            job.result = task.result()
        self._to_trio.append(job)
        if not self._trio_wakeup_pending:
            self._trio_wakeup_pending = True
            self.call_in_trio(self._finish_jobs)

    def _finish_jobs(self) -> None:  # Trio thread
        self._trio_wakeup_pending = False
        while self._to_trio:
            self._to_trio.popleft().done.set()

    def _close_unstarted(self) -> None:
        """After the loop thread ended: jobs that never reached it will not run."""
        while self._to_loop:
            self._to_loop.popleft().coroutine.close()


def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
    """The side thread: run the loop until stopped, then finish what is left on it."""
    try:
        loop.run_forever()
    finally:
        pending = [task for task in asyncio.all_tasks(loop) if not task.done()]
        for task in pending:
            task.cancel()
        if pending:
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


@contextlib.asynccontextmanager
async def open_asyncio_bridge(
    *, name: str = "eskit-nats", join_grace: float
) -> AsyncIterator[AsyncioBridge]:
    """Start an asyncio loop in a side thread; yield its bridge; stop and join it.

    Args:
        name: The thread's name.
        join_grace: Seconds the exit waits for the thread to end.

    Resource handling:
        The loop is built directly, so an asyncio policy installed by trio-asyncio
        does not apply to it. On exit the loop is stopped (tasks still on it are
        cancelled) and the thread joined within ``join_grace`` seconds, shielded from
        cancellation. The thread is a daemon only so that a join that timed out cannot
        hang the interpreter's exit.
    """
    loop = asyncio.SelectorEventLoop()
    thread = threading.Thread(target=_run_loop, args=(loop,), name=name, daemon=True)
    thread.start()
    bridge = AsyncioBridge(loop, trio.lowlevel.current_trio_token())
    try:
        yield bridge
    finally:
        loop.call_soon_threadsafe(loop.stop)
        with trio.CancelScope(shield=True):
            # A worker thread cannot be cancelled: bound the join itself.
            await trio.to_thread.run_sync(thread.join, join_grace)
        if not thread.is_alive():
            bridge._close_unstarted()
