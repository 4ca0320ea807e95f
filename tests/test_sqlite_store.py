"""What only the SQLite backend promises: group commit, several processes on one file,
migrations, durability settings and a clean shutdown."""

from __future__ import annotations

import sqlite3
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from engine.drivers.sqlite import open_sqlite
from engine.errors import BackendRefusedError, ConcurrencyError, IdempotencyConflictError
from engine.events import Event, ExpectedVersion, NewEvent
from engine.stores.sqlite import (
    MIGRATIONS,
    SCHEMA_VERSION,
    SchemaTooNewError,
    open_sqlite_store,
)
from engine.testing.contract import Counted, Note, contract_codec


def _notes(*texts: str) -> list[NewEvent[Any]]:
    return [NewEvent(Note(text)) for text in texts]


@contextmanager
def _foreign_connection(path: Path) -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        yield conn
    finally:
        conn.close()


def _query(path: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    with _foreign_connection(path) as conn:
        return conn.execute(sql, args).fetchall()


async def test_group_commit_batches_and_isolates_each_callers_outcome(tmp_path: Path) -> None:
    """50 appends queued behind a foreign write lock commit in at most two transactions,
    and each caller gets its own result or its own error."""
    path = tmp_path / "events.db"
    results: dict[int, list[Event[Any]] | Exception] = {}

    async def appender(i: int) -> None:
        try:
            if i < 10:  # ten racers for one new stream: one wins
                stored = await store.append(
                    "contested", _notes(f"c{i}"), expected_version=ExpectedVersion.NO_STREAM
                )
            elif i < 15:  # five retries of one command: one write, equal answers
                stored = await store.append("idem", _notes("once"), idempotency_key="cmd-1")
            elif i == 15:  # the same key on another stream: refused unless it came first
                stored = await store.append("elsewhere", _notes("no"), idempotency_key="cmd-1")
            else:
                stored = await store.append(f"own-{i}", _notes(f"o{i}"), expected_version=0)
        except (ConcurrencyError, IdempotencyConflictError) as exc:
            results[i] = exc
        else:
            results[i] = stored

    async with open_sqlite_store(path, contract_codec()) as store:
        before = store.statistics()
        with _foreign_connection(path) as blocker:
            await trio.to_thread.run_sync(blocker.execute, "BEGIN IMMEDIATE")
            async with trio.open_nursery() as nursery:
                for i in range(50):
                    nursery.start_soon(appender, i)
                # Every appender is queued behind the foreign lock before it is released.
                await trio.testing.wait_all_tasks_blocked()
                await trio.to_thread.run_sync(blocker.execute, "ROLLBACK")
        after = store.statistics()
        contested = await store.load("contested")
        keyed = await store.find_idempotent("cmd-1")
        assert keyed is not None
        assert await store.stream_version("idem") + await store.stream_version("elsewhere") == 1

    winners = [i for i in range(10) if isinstance(results[i], list)]
    assert len(winners) == 1
    for i in set(range(10)) - set(winners):
        error = results[i]
        assert isinstance(error, ConcurrencyError)
        assert error.actual == 1
    assert [e.data for e in contested] == [Note(f"c{winners[0]}")]
    # Whichever stream used the key first owns it; the other stream is refused.
    owner = keyed[0].stream_id
    for i in range(10, 16):
        if (i == 15) == (owner == "elsewhere"):
            assert results[i] == keyed
        else:
            assert isinstance(results[i], IdempotencyConflictError)
    assert len(keyed) == 1
    for i in range(16, 50):
        stored = results[i]
        assert isinstance(stored, list)
        assert [(e.stream_id, e.version) for e in stored] == [(f"own-{i}", 1)]
    appends = after.appends - before.appends
    transactions = after.database.transactions - before.database.transactions
    assert appends == 1 + 1 + 34
    assert 1 <= transactions <= 2 < appends
    assert after.database.largest_batch >= 25  # 50 appends in at most two transactions


async def test_cancelled_queued_append_writes_nothing(tmp_path: Path) -> None:
    """An append cancelled while it waits for the writer is dropped, not written later."""
    path = tmp_path / "events.db"
    async with open_sqlite_store(path, contract_codec()) as store:
        with _foreign_connection(path) as blocker:
            await trio.to_thread.run_sync(blocker.execute, "BEGIN IMMEDIATE")
            async with trio.open_nursery() as nursery:
                cancel_scope = trio.CancelScope()

                async def doomed() -> None:
                    with cancel_scope:
                        await store.append("s", _notes("never"))

                nursery.start_soon(doomed)
                await trio.testing.wait_all_tasks_blocked()
                cancel_scope.cancel()
            await trio.to_thread.run_sync(blocker.execute, "ROLLBACK")
        assert cancel_scope.cancelled_caught
        await store.append("s", _notes("later"))
        assert [e.data.text for e in await store.load("s")] == ["later"]


_CHILD = textwrap.dedent(
    """
    import sys
    import trio
    from engine.errors import ConcurrencyError
    from engine.events import NewEvent
    from engine.stores.sqlite import open_sqlite_store
    from engine.testing.contract import Counted, contract_codec

    path, writer, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])

    async def main():
        with trio.fail_after(120):
            async with open_sqlite_store(path, contract_codec()) as store:
                # A barrier in the file itself: start writing when both processes are up.
                await store.append("barrier", [NewEvent(Counted(writer, 0))])
                while await store.stream_version("barrier") < 2:
                    await trio.sleep(0.002)
                conflicts = 0
                for n in range(count):
                    await store.append(f"proc-{writer}", [NewEvent(Counted(writer, n))])
                    while True:
                        version = await store.stream_version("shared")
                        try:
                            await store.append(
                                "shared", [NewEvent(Counted(writer, n))], expected_version=version
                            )
                            break
                        except ConcurrencyError:
                            conflicts += 1
                print(conflicts, store.statistics().database.busy_waits)

    trio.run(main)
    """
)


async def test_two_processes_append_to_one_file(tmp_path: Path) -> None:
    """Two OS processes appending to one file lose nothing, double nothing, never see
    SQLITE_BUSY, and leave a file that passes ``PRAGMA integrity_check``."""
    path = tmp_path / "events.db"
    count = 150
    outputs: dict[int, trio.CompletedProcess[bytes]] = {}

    async def child(writer: int) -> None:
        outputs[writer] = await trio.run_process(
            [sys.executable, "-c", _CHILD, str(path), str(writer), str(count)],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )

    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            for writer in (1, 2):
                nursery.start_soon(child, writer)
    for result in outputs.values():
        assert result.returncode == 0, result.stderr.decode()
        assert b"locked" not in result.stderr
        assert b"busy" not in result.stderr.lower()

    async with open_sqlite_store(path, contract_codec()) as store:
        shared = await store.load("shared")
        everything = await store.read_all(limit=10_000)
        for writer in (1, 2):
            mine = await store.load(f"proc-{writer}")
            assert [e.data for e in mine] == [Counted(writer, n) for n in range(count)]
    assert [e.version for e in shared] == list(range(1, 2 * count + 1))
    assert sorted((e.data.writer, e.data.n) for e in shared) == [
        (w, n) for w in (1, 2) for n in range(count)
    ]
    positions = [e.position for e in everything]
    assert positions == sorted(set(positions))
    assert len(everything) == 2 + 4 * count
    assert _query(path, "PRAGMA integrity_check") == [("ok",)]


async def test_schema_is_migrated_once_and_recorded(tmp_path: Path) -> None:
    """A new file gets the numbered migrations recorded once, however often it is opened."""
    path = tmp_path / "events.db"
    for _ in range(2):
        async with open_sqlite_store(path, contract_codec()) as store:
            assert store.statistics().schema_version == SCHEMA_VERSION
    rows = _query(path, "SELECT name FROM _sqlite_migrations WHERE migration_set = 'eskit'")
    assert [name for (name,) in rows] == [m.name for m in MIGRATIONS._migrations]
    assert rows[0] == ("0001_initial",)


async def test_existing_file_with_other_tables_is_migrated_in_place(tmp_path: Path) -> None:
    """A SQLite file that already holds a read model gains the event tables and keeps its data."""
    path = tmp_path / "app.db"
    with _foreign_connection(path) as conn:
        conn.execute("CREATE TABLE balances (account TEXT PRIMARY KEY, amount INTEGER)")
        conn.execute("INSERT INTO balances VALUES ('acc-1', 42)")
    async with open_sqlite_store(path, contract_codec()) as store:
        await store.append("acc-1", _notes("opened"))
        await store.save_checkpoint("balances", 1, expected=None)
    assert _query(path, "SELECT * FROM balances") == [("acc-1", 42)]
    assert _query(path, "SELECT count(*) FROM events") == [(1,)]


async def test_file_from_a_newer_version_is_refused(tmp_path: Path) -> None:
    """A file migrated by a newer eskit is refused with SchemaTooNewError, untouched."""
    path = tmp_path / "events.db"
    async with open_sqlite_store(path, contract_codec()) as store:
        await store.append("s", _notes("kept"))
    with _foreign_connection(path) as conn:
        conn.execute(
            "INSERT INTO _sqlite_migrations (migration_set, name, applied_at)"
            " VALUES ('eskit', '9999_from_the_future', 'later')"
        )
    with pytest.raises(SchemaTooNewError) as info:
        async with open_sqlite_store(path, contract_codec()):
            pass  # pragma: no cover
    assert info.value.unknown == ["9999_from_the_future"]
    assert _query(path, "SELECT count(*) FROM events") == [(1,)]


async def test_durability_mode_is_reported(tmp_path: Path) -> None:
    """Statistics report WAL and FULL by default, and NORMAL when asked for."""
    path = tmp_path / "events.db"
    async with open_sqlite_store(path, contract_codec()) as store:
        default = store.statistics().database
    async with open_sqlite_store(path, contract_codec(), synchronous="NORMAL") as store:
        normal = store.statistics().database
    assert (default.journal_mode, default.synchronous) == ("wal", "FULL")
    assert (normal.journal_mode, normal.synchronous) == ("wal", "NORMAL")
    with pytest.raises(ValueError, match="synchronous"):
        async with open_sqlite_store(path, contract_codec(), synchronous="OFF"):  # type: ignore[arg-type]
            pass  # pragma: no cover


async def test_snapshots_and_checkpoints_share_the_file(tmp_path: Path) -> None:
    """Snapshots and checkpoints written through one store are read by another on the file."""
    from engine.stores.base import Snapshot
    from engine.testing.contract import Tally

    path = tmp_path / "events.db"
    async with open_sqlite_store(path, contract_codec()) as store:
        await store.snapshots(Tally).save_snapshot(Snapshot("s", 3, Tally(3, ("x",))))
        await store.save_checkpoint("p", 7, expected=None)
    async with open_sqlite_store(path, contract_codec()) as store:
        assert await store.snapshots(Tally).load_snapshot("s") == Snapshot("s", 3, Tally(3, ("x",)))
        assert await store.load_checkpoint("p") == 7


async def test_closed_store_refuses_work(tmp_path: Path) -> None:
    """After the block exits, appends and reads raise ClosedResourceError."""
    async with open_sqlite_store(tmp_path / "events.db", contract_codec()) as store:
        await store.append("s", _notes("a"))
    with pytest.raises(trio.ClosedResourceError):
        await store.append("s", _notes("b"))
    with pytest.raises(trio.ClosedResourceError):
        await store.load("s")


async def test_not_a_database_is_refused(tmp_path: Path) -> None:
    """Opening a file that is not SQLite raises BackendRefusedError, not a sqlite3 error."""
    path = tmp_path / "junk.db"
    path.write_bytes(b"this is not a database, just text " * 200)
    with pytest.raises(BackendRefusedError):
        async with open_sqlite_store(path, contract_codec()):
            pass  # pragma: no cover


async def test_close_gives_up_a_lock_held_elsewhere(tmp_path: Path) -> None:
    """A write stuck behind another connection's lock fails as closed once the grace ends."""
    path = tmp_path / "events.db"
    outcome: list[BaseException] = []

    async def stuck(db: Any) -> None:
        try:
            await db.write(lambda conn: conn.execute("CREATE TABLE t (x)"))
        except trio.ClosedResourceError as exc:
            outcome.append(exc)

    with _foreign_connection(path) as blocker:
        blocker.execute("PRAGMA journal_mode = WAL")
        blocker.execute("BEGIN IMMEDIATE")
        async with (
            trio.open_nursery() as nursery,
            open_sqlite(path, busy_slice=0.01, close_grace=0.05) as db,
        ):
            nursery.start_soon(stuck, db)
            await trio.testing.wait_all_tasks_blocked()
        blocker.execute("ROLLBACK")
    assert len(outcome) == 1
    assert _query(path, "SELECT name FROM sqlite_master WHERE name = 't'") == []


async def test_job_that_breaks_its_promise_fails_alone(tmp_path: Path) -> None:
    """A ``checks_first`` job that raises after writing is undone alone; its batch commits."""
    path = tmp_path / "events.db"
    results: dict[str, object] = {}

    def insert(value: str, *, fail: bool = False) -> Any:
        def job(conn: sqlite3.Connection) -> str:
            conn.execute("INSERT INTO t (x) VALUES (?)", (value,))
            if fail:
                raise ValueError(value)
            return value

        return job

    async def writer(db: Any, value: str, fail: bool) -> None:
        try:
            results[value] = await db.write(insert(value, fail=fail), checks_first=True)
        except ValueError as exc:
            results[value] = exc

    async with open_sqlite(path) as db:
        await db.write(lambda conn: conn.execute("CREATE TABLE t (x TEXT)"))
        before = db.statistics()
        with _foreign_connection(path) as blocker:
            await trio.to_thread.run_sync(blocker.execute, "BEGIN IMMEDIATE")
            async with trio.open_nursery() as nursery:
                for value, fail in (("a", False), ("liar", True), ("b", False)):
                    nursery.start_soon(writer, db, value, fail)
                    await trio.testing.wait_all_tasks_blocked()
                await trio.to_thread.run_sync(blocker.execute, "ROLLBACK")
        after = db.statistics()
    assert results["a"] == "a"
    assert results["b"] == "b"
    assert isinstance(results["liar"], ValueError)
    assert sorted(_query(path, "SELECT x FROM t")) == [("a",), ("b",)]
    assert after.writes - before.writes == 3


async def test_store_runs_and_closes_on_the_autojump_clock(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """On Trio's autojump clock (as runner tests use) appends work and close joins the writer."""
    path = tmp_path / "events.db"
    async with open_sqlite_store(path, contract_codec()) as store:
        async with trio.open_nursery() as nursery:
            for i in range(20):
                nursery.start_soon(store.append, f"s-{i % 3}", _notes(str(i)))
        head = await store.head_position()
    assert head == 20
    assert _query(path, "SELECT count(*) FROM events") == [(20,)]
    assert not [record for record in caplog.records if record.levelname == "ERROR"]
