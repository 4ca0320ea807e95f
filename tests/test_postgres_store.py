"""PostgreSQL store behaviour beyond the shared contract: late commits, lost connections,
cancellation, schema names and isolation, migrations and wake-ups.

A "late" transaction here is a raw psycopg connection that appends through
:func:`~engine.stores.postgres.append_in_transaction` (the store's own server-side
function, taking the same lock) and keeps its transaction open.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from functools import partial
from typing import Any

import psycopg
import pytest
import trio

from engine.errors import ConcurrencyError, EskitError, OutcomeUnknownError
from engine.events import Event, NewEvent
from engine.stores.base import Snapshot
from engine.stores.postgres import PostgresStore, append_in_transaction, open_postgres_store
from engine.testing.contract import Counted, Note, Tally, contract_codec
from tests.conftest import PgTarget

CODEC = contract_codec()


@asynccontextmanager
async def _store(pg: PgTarget, name: str, schema: str | None = None) -> AsyncIterator[Any]:
    async with open_postgres_store(
        pg.dsn, CODEC, schema=schema or pg.schema, name=name, max_pool_size=4
    ) as store:
        yield store


@contextmanager
def _raw(pg: PgTarget) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        yield conn


def _wait_for_backends(pg: PgTarget, application_name: str, wait_event: str, count: int) -> None:
    """Block until ``count`` backends of ``application_name`` wait on a lock of kind
    ``wait_event``. PostgreSQL has no notification for "somebody queued on my lock", so
    the server checks every few milliseconds; the test's ``fail_after`` bounds it."""
    with _raw(pg) as conn:
        conn.execute(
            "DO $$ BEGIN WHILE (SELECT count(*) FROM pg_stat_activity "
            f"WHERE application_name = '{application_name}' AND wait_event_type = 'Lock' "
            f"AND wait_event = '{wait_event}') < {count} LOOP PERFORM pg_sleep(0.005); "
            "END LOOP; END $$"
        )


def _backend_pids(pg: PgTarget, application_name: str) -> list[int]:
    with _raw(pg) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s", [application_name]
        ).fetchall()
    return [row[0] for row in rows]


def _terminate(pg: PgTarget, pids: list[int]) -> None:
    with _raw(pg) as conn:
        for pid in pids:
            conn.execute("SELECT pg_terminate_backend(%s, 5000)", [pid])


async def _drain(store: PostgresStore[Any], after: int) -> list[Event[Any]]:
    events: list[Event[Any]] = []
    while batch := await store.read_all(after_position=after, limit=7):
        events.extend(batch)
        after = batch[-1].position
    return events


@pytest.mark.parametrize("outcome", ["commit", "rollback"])
async def test_late_commit_holds_followers_back(pg: PgTarget, outcome: str) -> None:
    """While an append transaction is open, later writers queue behind it and a follower
    never reads past it; after it commits (or rolls back) the follower resumes in order."""
    with trio.fail_after(60), _raw(pg) as late:
        async with _store(pg, "late-writers") as writers, _store(pg, "late-follower") as follower:
            before = await writers.append("early", [NewEvent(Note("early"))])
            head = before[-1].position

            late.execute("BEGIN")
            held = await trio.to_thread.run_sync(
                lambda: append_in_transaction(
                    late, CODEC, "late", [NewEvent(Note("late"))], schema=pg.schema
                )
            )
            assert held[0].position > head
            stored: list[Event[Any]] = []

            async def write(n: int) -> None:
                stored.extend(await writers.append(f"w-{n}", [NewEvent(Counted(n, 0))]))

            async with trio.open_nursery() as nursery:
                for n in range(3):
                    nursery.start_soon(write, n)
                # The group writer sends the three appends as one call, queued on the lock.
                await trio.to_thread.run_sync(_wait_for_backends, pg, "late-writers", "advisory", 1)
                assert await follower.read_all(after_position=head) == []
                assert await follower.head_position() == head
                assert stored == []
                await trio.to_thread.run_sync(late.execute, outcome.upper())

            seen = await _drain(follower, head)
        positions = [event.position for event in seen]
        assert positions == sorted(set(positions))
        expected = sorted(stored, key=lambda event: event.position)
        if outcome == "commit":
            assert seen == [held[0], *expected]
        else:
            assert seen == expected
            assert expected[0].position > held[0].position


async def test_terminated_connection_fails_in_flight_call_and_pool_recovers(
    pg: PgTarget,
) -> None:
    """Killing the backend of an append in flight raises OutcomeUnknownError for that
    append only; killing idle pooled backends goes unnoticed; the store keeps working."""
    with trio.fail_after(60), _raw(pg) as late:
        async with _store(pg, "doomed") as store:
            await store.append("s", [NewEvent(Note("before"))])
            late.execute("BEGIN")
            await trio.to_thread.run_sync(
                lambda: append_in_transaction(
                    late, CODEC, "blocker", [NewEvent(Note("x"))], schema=pg.schema
                )
            )
            failure: list[BaseException] = []

            async def doomed_append() -> None:
                with pytest.raises(OutcomeUnknownError) as info:
                    await store.append("s", [NewEvent(Note("lost"))])
                failure.append(info.value)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(doomed_append)
                await trio.to_thread.run_sync(_wait_for_backends, pg, "doomed", "advisory", 1)
                await trio.to_thread.run_sync(_terminate, pg, _backend_pids(pg, "doomed"))
            await trio.to_thread.run_sync(late.execute, "ROLLBACK")
            assert "may or may not have been stored" in str(failure[0])

            # Every pooled connection is now dead or new; none of that reaches callers.
            await trio.to_thread.run_sync(_terminate, pg, _backend_pids(pg, "doomed"))
            after = await store.append("s", [NewEvent(Note("after"))])
            loaded = await store.load("s")
        assert [event.data.text for event in loaded] == ["before", "after"]
        assert loaded[-1] == after[0]


async def test_closing_the_store_cancels_its_waiting_query(pg: PgTarget) -> None:
    """Closing a store whose writer waits in PostgreSQL cancels the query on the server
    (nothing is stored) and fails the waiting append with ClosedResourceError."""

    async def outlived_append(store: PostgresStore[Any]) -> None:
        with pytest.raises(trio.ClosedResourceError):
            await store.append("victim", [NewEvent(Note("never"))])

    with trio.fail_after(60), _raw(pg) as late:
        async with trio.open_nursery() as outer, _store(pg, "closing") as store:
            late.execute("BEGIN")
            await trio.to_thread.run_sync(
                lambda: append_in_transaction(
                    late, CODEC, "blocker", [NewEvent(Note("x"))], schema=pg.schema
                )
            )
            outer.start_soon(outlived_append, store)
            await trio.to_thread.run_sync(_wait_for_backends, pg, "closing", "advisory", 1)
        await trio.to_thread.run_sync(late.execute, "COMMIT")
        async with _store(pg, "after") as store:
            assert await store.load("victim") == []
            assert [e.data.text for e in await store.read_all()] == ["x"]


async def test_cancelled_call_is_cancelled_on_the_server(pg: PgTarget) -> None:
    """Cancelling a checkpoint save that waits on a row lock cancels its query: it
    returns at once, changes nothing, and the store stays usable."""
    with trio.fail_after(60), _raw(pg) as other:
        async with _store(pg, "cancelled") as store:
            await store.save_checkpoint("c", 1, expected=None)
            table = psycopg.sql.SQL("{}.checkpoints").format(psycopg.sql.Identifier(pg.schema))
            other.execute("BEGIN")
            other.execute(
                psycopg.sql.SQL("UPDATE {} SET position = 2 WHERE name = 'c'").format(table)
            )
            with trio.CancelScope() as scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(partial(store.save_checkpoint, "c", 3, expected=1))
                    await trio.to_thread.run_sync(
                        _wait_for_backends, pg, "cancelled", "transactionid", 1
                    )
                    scope.cancel()
            assert scope.cancelled_caught
            await trio.to_thread.run_sync(other.execute, "ROLLBACK")
            assert await store.load_checkpoint("c") == 1
            await store.save_checkpoint("c", 4, expected=1)
            assert await store.load_checkpoint("c") == 4


async def test_unique_index_fences_writers_that_bypass_the_lock(pg: PgTarget) -> None:
    """A row inserted without the append lock that takes the next version turns the
    store's append into a ConcurrencyError carrying the actual version."""
    with trio.fail_after(60), _raw(pg) as rogue:
        async with _store(pg, "fenced") as store:
            rogue.execute("BEGIN")
            rogue.execute(
                psycopg.sql.SQL(
                    "INSERT INTO {}.events (stream_id, version, type, schema_version, data, "
                    "metadata, event_id, recorded_at) VALUES ('x', 1, 'contract.Note', 1, "
                    "'{{\"text\":\"rogue\"}}', '{{}}', gen_random_uuid(), now())"
                ).format(psycopg.sql.Identifier(pg.schema))
            )
            async with trio.open_nursery() as nursery:

                async def append() -> None:
                    with pytest.raises(ConcurrencyError) as info:
                        await store.append("x", [NewEvent(Note("mine"))])
                    assert info.value.actual == 1

                nursery.start_soon(append)
                await trio.to_thread.run_sync(_wait_for_backends, pg, "fenced", "transactionid", 1)
                await trio.to_thread.run_sync(rogue.execute, "COMMIT")
            assert [e.data.text for e in await store.load("x")] == ["rogue"]


@pytest.mark.parametrize(
    "suffix",
    ['Odd "Name"', "$eskit$ tag", "semi; DROP TABLE x; --", "\u00fcml\u00e4ut \U0001f600", "UPPER"],
)
async def test_odd_schema_names_are_quoted(pg: PgTarget, suffix: str) -> None:
    """Schema names with quotes, dollar tags, SQL, Unicode and capitals work as given."""
    schema = f"{pg.schema} {suffix}"
    try:
        async with _store(pg, "odd", schema) as store:
            stored = await store.append("s", [NewEvent(Note("hi"))], idempotency_key="k")
            assert await store.load("s") == stored
            assert await store.find_idempotent("k") == stored
            await store.save_checkpoint("c", 1, expected=None)
            snapshots = store.snapshots(Tally)
            await snapshots.save_snapshot(Snapshot("s", 1, Tally(1)))
            assert await snapshots.load_snapshot("s") == Snapshot("s", 1, Tally(1))
        async with _store(pg, "odd", schema) as again:
            assert await again.load_checkpoint("c") == 1
        with _raw(pg) as conn:
            found = conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", [schema])
            assert found.fetchone() is not None
    finally:
        with _raw(pg) as conn:
            conn.execute(
                psycopg.sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
                    psycopg.sql.Identifier(schema)
                )
            )


async def test_schema_names_postgres_would_truncate_are_refused(pg: PgTarget) -> None:
    """A schema name over PostgreSQL's 63-byte limit is refused instead of truncated."""
    with pytest.raises(ValueError, match="63"):
        async with _store(pg, "long", "x" * 64):
            pass


async def test_two_schemas_do_not_see_each_other(pg: PgTarget) -> None:
    """Stores on two schemas of one database keep separate streams, positions,
    idempotency keys, checkpoints and snapshots."""
    other = f"{pg.schema}_other"
    try:
        async with _store(pg, "a") as a, _store(pg, "b", other) as b:
            in_a = await a.append("s", [NewEvent(Note("a"))], idempotency_key="k")
            in_b = await b.append("s", [NewEvent(Note("b1")), NewEvent(Note("b2"))])
            await a.save_checkpoint("c", 5, expected=None)
            assert [e.data.text for e in await a.load("s")] == ["a"]
            assert [e.data.text for e in await b.read_all()] == ["b1", "b2"]
            assert in_a[0].position == in_b[0].position == 1
            assert await b.find_idempotent("k") is None
            assert await b.load_checkpoint("c") is None
            assert await a.head_position() == 1
            assert await b.head_position() == 2
    finally:
        with _raw(pg) as conn:
            conn.execute(
                psycopg.sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
                    psycopg.sql.Identifier(other)
                )
            )


async def test_migrations_are_recorded_and_newer_schemas_refused(pg: PgTarget) -> None:
    """Opening records the schema version once; a schema from a newer eskit is refused."""
    async with _store(pg, "m"):
        pass
    async with _store(pg, "m"):
        pass
    table = psycopg.sql.SQL("{}.schema_migrations").format(psycopg.sql.Identifier(pg.schema))
    with _raw(pg) as conn:
        versions = conn.execute(psycopg.sql.SQL("SELECT version FROM {}").format(table))
        assert [row[0] for row in versions.fetchall()] == [1]
        conn.execute(psycopg.sql.SQL("INSERT INTO {} (version) VALUES (99)").format(table))
    with pytest.raises(EskitError, match="newer than this eskit"):
        async with _store(pg, "m"):
            pass


async def test_wait_for_new_events_wakes_on_other_clients_and_after_reconnect(
    pg: PgTarget,
) -> None:
    """A follower waiting for new events wakes on another client's append, also after
    its LISTEN connection was killed."""
    with trio.fail_after(60):
        async with _store(pg, "waiter") as waiter, _store(pg, "appender") as appender:
            first = await appender.append("s", [NewEvent(Note("one"))])
            await waiter.wait_for_new_events(0)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(waiter.wait_for_new_events, first[0].position)
                await trio.testing.wait_all_tasks_blocked()
                await appender.append("s", [NewEvent(Note("two"))])

            await trio.to_thread.run_sync(_terminate, pg, _backend_pids(pg, "waiter-listen"))
            head = await waiter.head_position()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(waiter.wait_for_new_events, head)
                await trio.testing.wait_all_tasks_blocked()
                await appender.append("s", [NewEvent(Note("three"))])
            assert [e.data.text for e in await waiter.read_all()] == ["one", "two", "three"]


async def test_group_commit_gives_each_append_its_own_result(pg: PgTarget) -> None:
    """Concurrent appends written in one group commit succeed or conflict one by one, and
    every append gets back exactly the versions and positions that were stored."""
    async with _store(pg, "group") as store:
        results: dict[str, Any] = {}

        async def append(name: str, stream_id: str, size: int, **options: Any) -> None:
            events = [NewEvent(Counted(len(results), i)) for i in range(size)]
            try:
                results[name] = await store.append(stream_id, events, **options)
            except ConcurrencyError as error:
                results[name] = error

        async with trio.open_nursery() as nursery:
            for n in range(8):
                nursery.start_soon(partial(append, f"race-{n}", "same", 1, expected_version=0))
                nursery.start_soon(append, f"multi-{n}", f"multi-{n % 3}", 1 + n % 4)
            nursery.start_soon(partial(append, "keyed", "k", 2, idempotency_key="key"))
            nursery.start_soon(partial(append, "keyed-again", "k", 2, idempotency_key="key"))
        stats = store.statistics()
        everything = await _drain(store, 0)
    races = [r for name, r in results.items() if name.startswith("race")]
    assert len([r for r in races if not isinstance(r, ConcurrencyError)]) == 1
    assert all(r.actual == 1 for r in races if isinstance(r, ConcurrencyError))
    assert results["keyed"] == results["keyed-again"]
    stored = [e for r in results.values() if not isinstance(r, ConcurrencyError) for e in r]
    assert sorted({e.event_id: e for e in stored}.values(), key=lambda e: e.position) == everything
    assert stats.largest_group > 1


async def test_read_pool_serves_reads(pg: PgTarget) -> None:
    """With ``read_dsn`` the store opens a second pool for load, read_all and head."""
    async with open_postgres_store(
        pg.dsn, CODEC, schema=pg.schema, read_dsn=pg.dsn, read_pool_size=2, name="split"
    ) as store:
        stored = await store.append("s", [NewEvent(Note("x"))])
        assert await store.load("s") == stored
        assert await store.read_all() == stored
        assert await store.head_position() == stored[0].position
        pids = await trio.to_thread.run_sync(_backend_pids, pg, "split")
    assert len(pids) >= 2
