"""Rebuilding a projection in a running engine: a new version built beside the live one,
switched with its queries once caught up, over HTTP and the CLI."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from engine import Event, Plugin, ProjectionContext, ProjectionDefinition, ProjectionSetup
from engine.__main__ import main
from engine.daemon.engine import Engine, open_engine
from tests.conftest import PgTarget
from tests.daemon.test_engine import config_for, http, wait_for
from tests.daemon.test_sql_read_models import _balance, _bank, _send


async def _rebuilt(engine: Engine, name: str) -> dict[str, Any]:
    """Wait until the rebuild of ``name`` is no longer running; return its status."""
    with trio.fail_after(30):
        while True:
            status, runners = await http(f"{engine.http_urls[0]}/runners")
            assert status == 200
            rebuild = runners[name]["rebuild"]
            if rebuild["state"] != "running":
                return dict(rebuild)
            await trio.sleep(0.05)


async def test_rebuild_a_sql_read_model_while_commands_flow(tmp_path: Path) -> None:
    """The bank's balances are rebuilt as version 2 in their own table while deposits
    keep arriving; after the switch the queries answer from version 2, exactly."""
    async with open_engine(config_for(tmp_path), plugins=[_bank(1)]) as engine:
        for n in range(20):
            await _send(engine, "OpenAccount", f"acc-{n}", n)
        base = engine.http_urls[0]
        status, started = await http(
            f"{base}/projections/bank.balances/rebuild", method="POST", body={}
        )
        assert status == 202, started
        assert (started["from_version"], started["version"]) == (1, 2)
        for n in range(20):
            await _send(engine, "Deposit", f"acc-{n}", 1)
        rebuild = await _rebuilt(engine, "bank.balances")
        assert rebuild["state"] == "done", rebuild
        await wait_for(engine, "bank.balances")
        assert engine.runners["bank.balances"].statistics().checkpoint == 40
        status, runners = await http(f"{base}/runners")
        assert runners["bank.balances"]["version"] == 2
        assert [await _balance(engine, f"acc-{n}") for n in range(20)] == [n + 1 for n in range(20)]
        store: Any = engine.store
        rows = await store.transactional().fetch(
            "SELECT count(*), sum(balance) FROM bank_balances_v2"
        )
        assert rows == [(20, sum(range(20)) + 20)]
        assert await store.load_checkpoint("bank.balances@2") == 40


def _gated_plugin(gate: trio.Event) -> Plugin:
    """A plugin whose in-memory counter waits at ``gate`` in every version but the first."""

    def setup(context: ProjectionContext) -> ProjectionSetup:
        seen: list[int] = []

        async def handle(event: Event[Any]) -> None:
            if context.version > 1:
                await gate.wait()
            seen.append(event.position)

        async def count(params: Mapping[str, str]) -> dict[str, Any]:
            return {"version": context.version, "count": len(seen)}

        return ProjectionSetup(handler=handle, queries={"count": count})

    bank = _bank(1)
    return attrs.evolve(
        bank,
        projections=[
            *bank.projections,
            ProjectionDefinition(name="counter", setup=setup),
        ],
    )


async def test_a_rebuild_runs_once_at_a_time_and_switches_its_queries(tmp_path: Path) -> None:
    """A second rebuild while one runs is refused with 409 and an unknown projection
    with 404; the live version answers until the switch, the new one after it."""
    gate = trio.Event()
    async with open_engine(config_for(tmp_path), plugins=[_gated_plugin(gate)]) as engine:
        base = engine.http_urls[0]
        for n in range(3):
            await _send(engine, "OpenAccount", f"acc-{n}", 5)
        await wait_for(engine, "bank.counter")
        status, body = await http(f"{base}/projections/bank.counter/rebuild", method="POST")
        assert status == 202, body
        status, body = await http(f"{base}/projections/bank.counter/rebuild", method="POST")
        assert (status, body["error"]["code"]) == (409, "rebuild_in_progress")
        status, body = await http(f"{base}/projections/bank.nope/rebuild", method="POST")
        assert (status, body["error"]["code"]) == (404, "not_found")
        status, body = await http(f"{base}/projections/bank.counter/rebuild")
        assert status == 405
        status, body = await http(f"{base}/queries/bank/count")
        assert body == {"version": 1, "count": 3}  # the live version, while v2 waits
        gate.set()
        assert (await _rebuilt(engine, "bank.counter"))["state"] == "done"
        status, body = await http(f"{base}/queries/bank/count")
        assert body == {"version": 2, "count": 3}


async def test_the_cli_rebuilds_with_a_progress_bar(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``eskit projections rebuild NAME`` starts the rebuild, draws its progress and
    exits 0 once the projection switched; an unknown name exits with the 404."""
    async with open_engine(config_for(tmp_path), plugins=[_bank(1)]) as engine:
        for n in range(30):
            await _send(engine, "OpenAccount", f"acc-{n}", 1)
        url = engine.http_urls[0]
        code = await trio.to_thread.run_sync(
            main, ["projections", "rebuild", "bank.balances", "--url", url]
        )
        assert code == 0
        out, err = capsys.readouterr()
        assert "version 1 -> 2" in err
        assert "30/30 events (100%)" in err
        assert "'bank.balances' switched to version 2 at position 30" in out
        with pytest.raises(SystemExit, match="404 not_found"):
            await trio.to_thread.run_sync(
                main, ["projections", "rebuild", "bank.nope", "--url", url]
            )


async def _folded_balances(engine: Engine) -> dict[str, int]:
    """Each account's balance folded straight from the log (what the read model must say)."""
    from eskit_bank.domain import AccountOpened, MoneyDeposited, MoneyWithdrawn

    balances: dict[str, int] = {}
    after = 0
    while True:
        events = await engine.store.read_all(after_position=after, limit=500)
        if not events:
            return balances
        for event in events:
            match event.data:
                case AccountOpened(initial_balance=amount) | MoneyDeposited(amount=amount):
                    balances[event.stream_id] = balances.get(event.stream_id, 0) + amount
                case MoneyWithdrawn(amount=amount):
                    balances[event.stream_id] = balances.get(event.stream_id, 0) - amount
        after = events[-1].position


async def _rebuild_while_depositing(engine: Engine, accounts: int) -> dict[str, Any]:
    """Rebuild ``bank.balances`` while a task keeps depositing; return the rebuild's status."""
    base = engine.http_urls[0]
    done = trio.Event()

    async def deposit() -> None:
        n = 0
        while not done.is_set() and n < 200:  # bounded: at most 200 deposits per rebuild
            await _send(engine, "Deposit", f"acc-{n % accounts}", 1 + n % 3)
            n += 1

    async with trio.open_nursery() as nursery:
        nursery.start_soon(deposit)
        status, started = await http(f"{base}/projections/bank.balances/rebuild", method="POST")
        assert status == 202, started
        rebuild = await _rebuilt(engine, "bank.balances")
        done.set()
    return rebuild


@pytest.fixture(params=["sqlite", "postgres"])
def sql_store(request: pytest.FixtureRequest) -> dict[str, Any]:
    """The ``[store]`` section of a store with SQL read models: SQLite, PostgreSQL."""
    if request.param == "sqlite":
        return {"backend": "sqlite"}
    pg: PgTarget = request.getfixturevalue("pg")
    return {"backend": "postgres", "dsn": pg.dsn, "schema": pg.schema}


async def test_rebuilds_across_restarts_never_count_an_event_twice(
    tmp_path: Path, sql_store: dict[str, Any]
) -> None:
    """Rebuild, restart, rebuild, restart, rebuild (deposits flowing throughout): every
    rebuild targets a version never used before, a restarted engine serves the version
    it switched to, and every balance equals its fold of the log."""
    config = config_for(tmp_path, store=sql_store)
    accounts = 10
    versions = []
    for round_ in range(3):
        async with open_engine(config, plugins=[_bank(1)]) as engine:
            if round_ == 0:
                for n in range(accounts):
                    await _send(engine, "OpenAccount", f"acc-{n}", 100)
            runner = engine.runners["bank.balances"]
            await wait_for(engine, "bank.balances")
            # A restarted engine answers from the version it switched to, unchanged.
            assert runner.statistics().state.value in ("live", "catching_up")
            expected = await _folded_balances(engine)
            assert {a: await _balance(engine, a) for a in expected} == expected
            rebuild = await _rebuild_while_depositing(engine, accounts)
            assert rebuild["state"] == "done", rebuild
            versions.append(rebuild["version"])
            await wait_for(engine, "bank.balances")
            expected = await _folded_balances(engine)
            assert {a: await _balance(engine, a) for a in expected} == expected
            status, totals = await http(f"{engine.http_urls[0]}/queries/bank/totals")
            assert status == 200
            assert totals == {"accounts": accounts, "total": sum(expected.values())}
    assert versions == [2, 3, 4]
    async with open_engine(config, plugins=[_bank(1)]) as engine:
        await wait_for(engine, "bank.balances")
        assert engine.runners_status()["bank.balances"]["version"] == 4
        expected = await _folded_balances(engine)
        assert {a: await _balance(engine, a) for a in expected} == expected


async def test_a_rebuild_cut_short_by_a_stop_is_never_resumed_into(
    tmp_path: Path, sql_store: dict[str, Any]
) -> None:
    """An engine stopped in the middle of a rebuild leaves the half-built version
    behind: after the restart the old version still answers, and the next rebuild
    builds a version never used before, so no event counts twice."""
    config = config_for(tmp_path, store=sql_store, runners={"batch_size": 1})
    async with open_engine(config, plugins=[_bank(1)]) as engine:
        for n in range(40):
            await _send(engine, "OpenAccount", f"acc-{n % 4}-{n}", 10)
        await wait_for(engine, "bank.balances")
        base = engine.http_urls[0]
        status, started = await http(f"{base}/projections/bank.balances/rebuild", method="POST")
        assert (status, started["version"]) == (202, 2)
        with trio.fail_after(30):
            while True:  # the rebuild's progress: until it is well under way
                if engine.rebuilds["bank.balances"].done >= 5:
                    break
                await trio.sleep(0.01)
        assert engine.rebuilds["bank.balances"].state == "running"
    async with open_engine(config, plugins=[_bank(1)]) as engine:
        await wait_for(engine, "bank.balances")
        assert engine.runners_status()["bank.balances"]["version"] == 1
        expected = await _folded_balances(engine)
        assert {a: await _balance(engine, a) for a in expected} == expected
        status, started = await http(
            f"{engine.http_urls[0]}/projections/bank.balances/rebuild", method="POST"
        )
        assert (status, started["version"]) == (202, 3)
        assert (await _rebuilt(engine, "bank.balances"))["state"] == "done"
        await wait_for(engine, "bank.balances")
        assert {a: await _balance(engine, a) for a in expected} == expected


async def test_a_query_waiting_across_the_switch_answers_from_the_new_version(
    tmp_path: Path,
) -> None:
    """A read-your-writes query whose wait ends with the switch to the rebuilt version
    answers from that version, never from the old one (which stopped before its
    position and is fed no more)."""
    gate = trio.Event()
    config = config_for(tmp_path, store={"backend": "memory"}, http={"enabled": False})
    async with open_engine(config, plugins=[_gated_plugin(gate)]) as engine:
        runner = engine.runners["bank.counter"]
        await engine.send_command(
            "bank", "OpenAccount", stream_id="a", data={"initial_balance": 1}, command_id=None
        )
        await wait_for(engine, "bank.counter")
        await engine.rebuild_projection("bank.counter")
        await trio.testing.wait_all_tasks_blocked()  # version 2 waits at the gate
        answers: list[Any] = []

        async def read() -> None:
            answers.append(await engine.run_query("bank", "count", {"wait_for_position": "2"}))

        # Hold the live loop between two batches (what the rebuild's switch does) so that
        # the order is: the rebuild queues for the switch, then the live loop, then a
        # query waits for an event only the rebuild will have handled. (trio's locks
        # are fair: they are handed over in that order.)
        async with trio.open_nursery() as nursery, runner._batch_lock:
            gate.set()
            await trio.testing.wait_all_tasks_blocked()
            await engine.send_command(
                "bank", "Deposit", stream_id="a", data={"amount": 1}, command_id=None
            )
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(read)
            await trio.testing.wait_all_tasks_blocked()
            assert answers == []
        assert answers == [{"version": 2, "count": 2}]
