"""The one place SQLite connections are opened, bridged to Trio and closed.

:func:`open_sqlite` opens a file in WAL mode and serves two kinds of work:

* **Writes** go to one long-lived writer thread that owns the writer connection. Callers
  queue a job (a function of the connection); the thread takes every job queued while
  it was busy and runs them in **one** ``BEGIN IMMEDIATE`` transaction, each job inside
  its own ``SAVEPOINT`` (or none, for jobs that check before they write) so that one
  job's error undoes that job only. One thread hop and one fsync serve the whole batch
  (group commit): a hop costs about 110 µs here, as much as an fsync, so paying it per
  append would halve throughput. A dedicated thread fed by a queue measured 2.4-2.5k
  sequential single-event appends/s against 2.0-2.1k for ``trio.to_thread.run_sync``
  with a ``CapacityLimiter(1)`` (raw sqlite3 in one thread: 4.7k).
* **Reads** run on a small pool of reader connections through ``trio.to_thread.run_sync``
  with a :class:`trio.CapacityLimiter`, each in its own read transaction, so they see a
  consistent snapshot and never wait for the writer.

Several processes may open the same file: the write lock is waited for in short
``busy_timeout`` slices, retried until it is free, so ``SQLITE_BUSY`` never reaches a
caller; between slices the writer checks whether it is closing or whether every caller
of the batch has been cancelled.

Errors: exceptions a job raises on purpose (engine errors) reach its caller unchanged;
:mod:`sqlite3` errors are translated in :func:`_translate`, the one place this adapter
does so, into :class:`~engine.errors.BackendRefusedError` (the backend error policy,
docs/runtime.md). Using the database after close raises
:class:`trio.ClosedResourceError`.
"""

from __future__ import annotations

import collections
import contextlib
import enum
import errno
import logging
import queue
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from os import PathLike
from typing import Any, Final, Generic, Literal, TypeVar

import attrs
import outcome
import trio

from engine.errors import BackendRefusedError, StorageFullError
from engine.groups import unwrap_lone_errors

__all__ = [
    "DEFAULT_BUSY_SLICE",
    "DEFAULT_CLOSE_GRACE",
    "DEFAULT_MAX_BATCH",
    "DEFAULT_MAX_PENDING",
    "DEFAULT_READERS",
    "SqliteDatabase",
    "SqliteStatistics",
    "Synchronous",
    "open_sqlite",
]

T = TypeVar("T")

logger = logging.getLogger(__name__)

#: ``PRAGMA synchronous`` values :func:`open_sqlite` accepts. ``FULL`` (the default)
#: fsyncs the WAL on every commit: a committed append survives power loss. ``NORMAL``
#: fsyncs only at checkpoints: much faster, but the last commits can be lost on power
#: loss (never on a process crash), and the database stays consistent either way.
Synchronous = Literal["FULL", "NORMAL"]

#: How many reader connections serve reads concurrently.
DEFAULT_READERS = 4
#: The most write jobs one transaction takes.
DEFAULT_MAX_BATCH = 256
#: How many write jobs may wait for the writer before callers queue in Trio.
DEFAULT_MAX_PENDING = 1024
#: How long SQLite waits for a lock before the writer looks at its flags again (seconds).
DEFAULT_BUSY_SLICE = 0.2
#: How long closing may wait for queued writes and the writer thread (seconds).
DEFAULT_CLOSE_GRACE = 10.0

_SYNCHRONOUS_NAMES: Final = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}
_BUSY_CODES: Final = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})


@attrs.frozen
class SqliteStatistics:
    """What the database has done so far (see :meth:`SqliteDatabase.statistics`).

    Attributes:
        path: The database file.
        journal_mode: As reported by SQLite (``"wal"``).
        synchronous: The durability mode as reported by SQLite (``"FULL"`` or ``"NORMAL"``).
        readers: How many reader connections serve reads.
        transactions: Write transactions committed by this process.
        writes: Write jobs that ran (committed or failed on their own).
        largest_batch: The most jobs one transaction has held.
        busy_waits: How often the writer found the file locked by another connection.
        reads: Read jobs run.
    """

    path: str
    journal_mode: str
    synchronous: str
    readers: int
    transactions: int
    writes: int
    largest_batch: int
    busy_waits: int
    reads: int


class _State(enum.Enum):
    PENDING = "pending"
    ABANDONED = "abandoned"
    RUNNING = "running"
    DONE = "done"


@attrs.define(eq=False)
class _Job(Generic[T]):
    fn: Callable[[sqlite3.Connection], T]
    task: trio.lowlevel.Task
    checks_first: bool
    state: _State = _State.PENDING
    result: outcome.Outcome[T] | None = None


class _Stop:
    """Queued by close: the writer finishes the jobs before it, then stops."""


class _Aborted(Exception):
    """The writer gave up waiting for the write lock (closing, or nobody waits any more)."""


#: SQLite's primary result code for "database or disk is full" (the disk, or the
#: database reached its ``max_page_count``).
_SQLITE_FULL = 13


def _translate(exc: sqlite3.Error | OSError) -> Exception:
    """The one place a :mod:`sqlite3` error becomes an engine-facing error:
    :class:`~engine.errors.StorageFullError` when the disk (or the database) is full,
    :class:`~engine.errors.BackendRefusedError` otherwise."""
    code = getattr(exc, "sqlite_errorcode", None)
    name = getattr(exc, "sqlite_errorname", type(exc).__name__)
    error: Exception
    if (code is not None and code & 0xFF == _SQLITE_FULL) or (
        isinstance(exc, OSError) and exc.errno == errno.ENOSPC
    ):
        error = StorageFullError(
            f"the SQLite database is full ({name}: {exc}): nothing was written; "
            "free disk space, then retry"
        )
    else:
        error = BackendRefusedError("sqlite", f"SQLite error {name}: {exc}")
    error.__cause__ = exc
    return error


def _closed_or_translated(exc: BaseException) -> BaseException:
    if isinstance(exc, _Aborted):
        return trio.ClosedResourceError("the SQLite database is closing")
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return _translate(exc)
    return _translate(exc) if isinstance(exc, sqlite3.Error) else exc


def _is_busy(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(exc, sqlite3.OperationalError) and (
        code is None or code & 0xFF in _BUSY_CODES
    )


def _connect(
    path: str, *, busy_slice: float, synchronous: Synchronous, reader: bool
) -> sqlite3.Connection:
    conn = sqlite3.connect(
        path,
        timeout=busy_slice,
        isolation_level=None,  # we issue BEGIN/COMMIT ourselves
        check_same_thread=False,  # handed between threads, never used by two at once
        cached_statements=256,
    )
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(busy_slice * 1000)}")
        # Switching to WAL needs a moment of exclusive access: retry like any lock wait.
        while True:
            try:
                conn.execute("PRAGMA journal_mode = WAL")
                break
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc):
                    raise
        conn.execute(f"PRAGMA synchronous = {synchronous}")
        if reader:
            conn.execute("PRAGMA query_only = ON")
        else:
            conn.execute("PRAGMA cache_size = -32768")  # 32 MiB: hot index leaves stay cached
    except BaseException:
        conn.close()
        raise
    return conn


@attrs.define(eq=False)
class SqliteDatabase:
    """A SQLite file served by one writer thread and a pool of readers.

    Open it with :func:`open_sqlite`; never construct it directly.
    """

    path: str
    _writer: sqlite3.Connection
    _readers: collections.deque[sqlite3.Connection]
    _reader_count: int
    _max_batch: int
    _journal_mode: str
    _synchronous: str
    _token: trio.lowlevel.TrioToken
    _read_limiter: trio.CapacityLimiter
    _pending: trio.Semaphore
    _queue: queue.SimpleQueue[_Job[Any] | _Stop] = attrs.field(factory=queue.SimpleQueue)
    _lock: threading.Lock = attrs.field(factory=threading.Lock)
    _closing: bool = False
    _give_up: bool = False
    _queue_closed: bool = False
    _stopped: trio.Event = attrs.field(factory=trio.Event)
    _thread: threading.Thread | None = None
    _transactions: int = 0
    _writes: int = 0
    _largest_batch: int = 0
    _busy_waits: int = 0
    _reads: int = 0

    # -- the Trio side ---------------------------------------------------------------

    async def write(
        self, fn: Callable[[sqlite3.Connection], T], *, checks_first: bool = False
    ) -> T:
        """Run ``fn(connection)`` in the writer's next transaction, and return its result.

        ``fn`` runs in the writer thread inside ``BEGIN IMMEDIATE``, beside the other jobs
        queued at the same time (group commit). If ``fn`` raises, its own changes are
        undone and the error is raised here; the other jobs of the transaction are not
        affected. The result is returned once the transaction has committed. ``fn`` must
        not begin, commit or roll back, and may run again if another job of its batch
        breaks the transaction.

        Args:
            fn: The work, a function of the writer connection.
            checks_first: ``fn`` raises only before its first change (it checks, then
                writes), so it needs no savepoint of its own. Savepoints cost about 15%
                of group-commit throughput. Should such a job raise after a change anyway,
                the transaction is rolled back and the batch's other jobs are run again
                in savepoints: the promise is a speed-up, never a risk.

        Cancellation: a job that has not started yet is dropped and the caller cancelled;
        a job that has started is waited for (it may commit), like
        ``trio.to_thread.run_sync``.

        Raises:
            trio.ClosedResourceError: The database is closing or closed.
            BackendRefusedError: SQLite failed (disk full, I/O error, corruption...).
        """
        # Acquiring yields even when a slot is free, and that yield matters: every
        # runnable caller reaches it in one scheduler pass, and they queue together in
        # the next one, so the writer wakes to a full batch. Queueing at once instead
        # (acquire_nowait) spread the queueing over the callers' encoding work and
        # doubled the transactions of 64 concurrent appenders (201 -> ~410).
        async with self._pending:
            job: _Job[T] = _Job(fn, trio.lowlevel.current_task(), checks_first)
            with self._lock:
                if self._queue_closed:
                    raise trio.ClosedResourceError("the SQLite database is closed")
                self._queue.put(job)

            def abort(_: trio.lowlevel.RaiseCancelT) -> trio.lowlevel.Abort:
                with self._lock:
                    if job.state is _State.PENDING:
                        job.state = _State.ABANDONED
                        return trio.lowlevel.Abort.SUCCEEDED
                # Started: it may commit, so the caller must learn how it ended.
                return trio.lowlevel.Abort.FAILED

            result: T = await trio.lowlevel.wait_task_rescheduled(abort)
            return result

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(connection)`` on a reader connection in a read transaction.

        Raises:
            trio.ClosedResourceError: The database is closing or closed.
            BackendRefusedError: SQLite failed.
        """
        if self._closing:
            raise trio.ClosedResourceError("the SQLite database is closed")
        try:
            return await trio.to_thread.run_sync(self._run_read, fn, limiter=self._read_limiter)
        finally:
            self._reads += 1

    def statistics(self) -> SqliteStatistics:
        """A snapshot of the counters and the durability settings in force."""
        return SqliteStatistics(
            path=self.path,
            journal_mode=self._journal_mode,
            synchronous=self._synchronous,
            readers=self._reader_count,
            transactions=self._transactions,
            writes=self._writes,
            largest_batch=self._largest_batch,
            busy_waits=self._busy_waits,
            reads=self._reads,
        )

    def _deliver(self, jobs: list[_Job[Any]]) -> None:
        for job in jobs:
            assert job.result is not None
            trio.lowlevel.reschedule(job.task, job.result)

    async def _aclose(self, grace: float, busy_slice: float) -> None:
        """Finish queued writes, stop the writer thread, close every connection.

        Runs shielded. Within ``grace`` in-flight reads and queued writes finish; after
        it the writer stops waiting for a lock held elsewhere, and its last batch fails
        with :class:`trio.ClosedResourceError`.
        """
        self._closing = True
        with trio.move_on_after(grace):
            # Holding every reader token means no read is in flight on a connection.
            for _ in range(self._reader_count):
                await self._read_limiter.acquire_on_behalf_of(object())
            with self._lock:
                self._queue_closed = True
                self._queue.put(_Stop())
            await self._stopped.wait()
        if not self._stopped.is_set():
            with self._lock:
                self._give_up = True
                self._queue_closed = True
                self._queue.put(_Stop())
        if self._thread is not None:
            # Joined in real time, not Trio's (an autojump clock would skip the wait):
            # a lock wait gives up within one slice, an fsync in progress must finish.
            await trio.to_thread.run_sync(self._thread.join, busy_slice * 10 + 5)
            if self._thread.is_alive():
                logger.error("the SQLite writer thread of %s did not stop; left running", self.path)
        readers = list(self._readers)
        self._readers.clear()
        await trio.to_thread.run_sync(_close_all, readers)

    # -- the writer thread -----------------------------------------------------------

    def _run_writer(self) -> None:
        try:
            while True:
                item = self._queue.get()
                if isinstance(item, _Stop):
                    break
                batch: list[_Job[Any]] = [item]
                stop = False
                while len(batch) < self._max_batch:
                    try:
                        more = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if isinstance(more, _Stop):
                        stop = True
                        break
                    batch.append(more)
                self._deliver_from_thread(self._run_batch(batch))
                if stop:
                    break
        finally:
            # Jobs queued after the stop marker never ran: they fail as closed.
            leftovers: list[_Job[Any]] = []
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if isinstance(item, _Job) and self._claim(item, _State.DONE):
                    item.result = outcome.Error(trio.ClosedResourceError("the database closed"))
                    leftovers.append(item)
            self._deliver_from_thread(leftovers)
            self._writer.close()
            self._token.run_sync_soon(self._stopped.set)

    def _deliver_from_thread(self, jobs: list[_Job[Any]]) -> None:
        if jobs:
            self._token.run_sync_soon(self._deliver, jobs)

    def _claim(self, job: _Job[Any], state: _State) -> bool:
        with self._lock:
            if job.state is not _State.PENDING:
                return False
            job.state = state
            return True

    def _run_batch(self, batch: list[_Job[Any]]) -> list[_Job[Any]]:
        """Run a batch in one transaction; return the jobs whose callers must be woken."""
        conn = self._writer
        try:
            self._begin_immediate(batch)
        except (_Aborted, sqlite3.Error) as exc:
            failed = [job for job in batch if self._claim(job, _State.DONE)]
            for job in failed:
                job.result = outcome.Error(_closed_or_translated(exc))
            return failed
        # Claimed after the lock is held: until then a cancelled caller can still leave.
        claimed = [job for job in batch if self._claim(job, _State.RUNNING)]
        jobs, guarded = claimed, False
        try:
            while True:
                culprit = self._run_jobs(jobs, guarded=guarded)
                if culprit is None:
                    conn.execute("COMMIT")
                    self._transactions += 1
                    break
                # A job that promised to check first failed after writing: run the
                # others again, each in a savepoint, in a fresh transaction.
                conn.execute("ROLLBACK")
                jobs, guarded = [job for job in jobs if job is not culprit], True
                for job in jobs:
                    job.result = None
                self._begin_immediate(jobs)
        except Exception as exc:
            # The transaction is lost: nothing of this batch was written.
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            for job in jobs:
                if job.result is None or isinstance(job.result, outcome.Value):
                    job.result = outcome.Error(_closed_or_translated(exc))
        self._writes += len(claimed)
        self._largest_batch = max(self._largest_batch, len(claimed))
        for job in claimed:
            job.state = _State.DONE
        return claimed

    def _run_jobs(self, jobs: list[_Job[Any]], *, guarded: bool) -> _Job[Any] | None:
        """Run ``jobs`` in the open transaction, setting each one's result.

        Returns the job that broke the transaction's integrity (it raised after writing
        without a savepoint of its own), or ``None``.

        Raises:
            sqlite3.Error: SQLite rolled the whole transaction back.
        """
        conn = self._writer
        for job in jobs:
            savepoint = guarded or not job.checks_first
            if savepoint:
                conn.execute("SAVEPOINT job")
            changes = conn.total_changes
            try:
                value = job.fn(conn)
            except Exception as exc:
                if not conn.in_transaction:
                    raise
                job.result = outcome.Error(
                    _translate(exc) if isinstance(exc, sqlite3.Error) else exc
                )
                if savepoint:
                    conn.execute("ROLLBACK TO job")
                    conn.execute("RELEASE job")
                elif conn.total_changes != changes:
                    return job
            else:
                if savepoint:
                    conn.execute("RELEASE job")
                job.result = outcome.Value(value)
        return None

    def _begin_immediate(self, batch: list[_Job[Any]]) -> None:
        if self._give_up:
            raise _Aborted
        while True:
            try:
                self._writer.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc):
                    raise
            self._busy_waits += 1
            with self._lock:
                if self._give_up or all(job.state is _State.ABANDONED for job in batch):
                    raise _Aborted

    # -- readers (in worker threads) -------------------------------------------------

    def _run_read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        # The limiter admits at most as many threads as there are connections.
        conn = self._readers.pop()
        try:
            while True:
                try:
                    conn.execute("BEGIN")
                    try:
                        return fn(conn)
                    finally:
                        conn.execute("COMMIT")
                except sqlite3.OperationalError as exc:
                    if not _is_busy(exc) or self._give_up:
                        raise _translate(exc) from exc
                except sqlite3.Error as exc:
                    raise _translate(exc) from exc
        finally:
            self._readers.append(conn)


def _close_all(connections: list[sqlite3.Connection]) -> None:
    for conn in connections:
        conn.close()


def _open_connections(
    path: str, *, readers: int, busy_slice: float, synchronous: Synchronous
) -> tuple[sqlite3.Connection, list[sqlite3.Connection], str, str]:
    writer = _connect(path, busy_slice=busy_slice, synchronous=synchronous, reader=False)
    opened: list[sqlite3.Connection] = []
    try:
        for _ in range(readers):
            opened.append(
                _connect(path, busy_slice=busy_slice, synchronous=synchronous, reader=True)
            )
        journal_mode = str(writer.execute("PRAGMA journal_mode").fetchone()[0])
        level = int(writer.execute("PRAGMA synchronous").fetchone()[0])
    except BaseException:
        _close_all([*opened, writer])
        raise
    return writer, opened, journal_mode, _SYNCHRONOUS_NAMES.get(level, str(level))


@unwrap_lone_errors
@asynccontextmanager
async def open_sqlite(
    path: str | PathLike[str],
    *,
    synchronous: Synchronous = "FULL",
    readers: int = DEFAULT_READERS,
    max_batch: int = DEFAULT_MAX_BATCH,
    max_pending: int = DEFAULT_MAX_PENDING,
    busy_slice: float = DEFAULT_BUSY_SLICE,
    close_grace: float = DEFAULT_CLOSE_GRACE,
) -> AsyncIterator[SqliteDatabase]:
    """Open a SQLite file (created if missing) in WAL mode.

    Args:
        path: The database file.
        synchronous: ``"FULL"`` (default: every commit is durable) or ``"NORMAL"``
            (faster; the last commits may be lost on power loss, never on a crash).
        readers: Reader connections, i.e. how many reads run at once.
        max_batch: The most write jobs one transaction takes.
        max_pending: How many write jobs may be queued for the writer.
        busy_slice: How long SQLite waits for a lock before the writer re-checks whether
            it should give up (it retries until the lock is free otherwise).
        close_grace: How long closing may wait for queued writes to finish.

    Yields:
        The open :class:`SqliteDatabase`.

    Resource handling:
        The writer thread and every connection are closed when the block exits; writes
        queued before that are finished first. Closing is shielded from cancellation
        and bounded by ``close_grace``.

    Error handling:
        Errors while opening (an unreadable or non-SQLite file) are raised as
        :class:`~engine.errors.BackendRefusedError`.
    """
    if synchronous not in ("FULL", "NORMAL"):
        raise ValueError(f'synchronous must be "FULL" or "NORMAL", got {synchronous!r}')
    if readers < 1 or max_batch < 1 or max_pending < 1:
        raise ValueError("readers, max_batch and max_pending must be >= 1")
    name = str(path)
    try:
        writer, reader_conns, journal_mode, level = await trio.to_thread.run_sync(
            lambda: _open_connections(
                name, readers=readers, busy_slice=busy_slice, synchronous=synchronous
            )
        )
    except sqlite3.Error as exc:
        raise _translate(exc) from exc
    db = SqliteDatabase(
        path=name,
        writer=writer,
        readers=collections.deque(reader_conns),
        reader_count=readers,
        max_batch=max_batch,
        journal_mode=journal_mode,
        synchronous=level,
        token=trio.lowlevel.current_trio_token(),
        read_limiter=trio.CapacityLimiter(readers),
        pending=trio.Semaphore(max_pending),
    )
    thread = threading.Thread(
        target=db._run_writer, name=f"eskit-sqlite-writer:{name}", daemon=True
    )
    db._thread = thread
    thread.start()
    try:
        yield db
    finally:
        with trio.CancelScope(shield=True):
            await db._aclose(close_grace, busy_slice)
