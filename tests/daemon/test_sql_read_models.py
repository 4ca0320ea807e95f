"""Durable SQL read models in the engine: a plugin's table in the event store's database,
committed with its runner's checkpoint, kept across restarts and rebuilt per version."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import pytest
from eskit_bank.plugin import balances
from eskit_bank.plugin import plugin as bank

from engine.daemon import engine as engine_module
from engine.daemon.engine import Engine, open_engine
from engine.errors import NotCaughtUpError
from engine.plugin import ProjectionDefinition
from tests.conftest import PgTarget
from tests.daemon.test_engine import config_for, http, wait_for


async def _send(engine: Engine, command: str, account: str, amount: int) -> None:
    field = "initial_balance" if command == "OpenAccount" else "amount"
    status, body = await http(
        f"{engine.http_urls[0]}/commands/bank/{command}",
        method="POST",
        body={"stream_id": account, "data": {field: amount}},
    )
    assert status == 200, body


async def _balance(engine: Engine, account: str) -> Any:
    status, body = await http(f"{engine.http_urls[0]}/queries/bank/balance?account={account}")
    assert status == 200, body
    return body["balance"]


def _bank(version: int) -> Any:
    definition = ProjectionDefinition(name="balances", setup=balances, version=version)
    return attrs.evolve(bank, projections=[definition], reactors={})


@pytest.fixture(params=["sqlite", "postgres"])
def store_section(request: pytest.FixtureRequest) -> dict[str, Any]:
    if request.param == "sqlite":
        return {"backend": "sqlite"}
    pg: PgTarget = request.getfixturevalue("pg")
    return {"backend": "postgres", "dsn": pg.dsn, "schema": pg.schema}


async def test_a_sql_read_model_survives_a_restart_without_a_replay(
    tmp_path: Path, store_section: dict[str, Any]
) -> None:
    """The bank's balances live in the store's database: after a restart the runner goes
    on from its checkpoint (nothing replayed) and the answers are unchanged."""
    config = config_for(tmp_path, store=store_section)
    async with open_engine(config, plugins=[_bank(1)]) as engine:
        for n in range(5):
            await _send(engine, "OpenAccount", f"acc-{n}", 100 * n)
            await _send(engine, "Deposit", f"acc-{n}", 7)
        await wait_for(engine, "bank.balances")
        assert [await _balance(engine, f"acc-{n}") for n in range(5)] == [7, 107, 207, 307, 407]
        head = await engine.store.head_position()
    async with open_engine(config, plugins=[_bank(1)]) as engine:
        runner = engine.runners["bank.balances"]
        await wait_for(engine, "bank.balances")
        assert runner.statistics().checkpoint == head
        assert runner.statistics().processed == 0  # nothing replayed
        assert await _balance(engine, "acc-3") == 307
        await _send(engine, "Withdraw", "acc-3", 300)
        await wait_for(engine, "bank.balances")
        assert await _balance(engine, "acc-3") == 7
        status, totals = await http(f"{engine.http_urls[0]}/queries/bank/totals")
        assert (status, totals) == (200, {"accounts": 5, "total": 1035 - 300})


async def test_a_new_version_is_built_from_the_start_in_its_own_table(tmp_path: Path) -> None:
    """Bumping the read model's version builds a new table from position 0 (under a
    checkpoint of its own) and leaves the old version's table as it was."""
    config = config_for(tmp_path)
    async with open_engine(config, plugins=[_bank(1)]) as engine:
        await _send(engine, "OpenAccount", "a", 50)
        await wait_for(engine, "bank.balances")
    async with open_engine(config, plugins=[_bank(2)]) as engine:
        await _send(engine, "Deposit", "a", 5)
        await wait_for(engine, "bank.balances")
        runner = engine.runners["bank.balances"]
        assert runner.statistics().processed == 2  # both events, from the start
        assert await _balance(engine, "a") == 55
        store: Any = engine.store
        database = store.transactional()
        assert await database.fetch("SELECT account, balance FROM bank_balances_v1") == [("a", 50)]
        assert await database.fetch("SELECT account, balance FROM bank_balances_v2") == [("a", 55)]
        # The checkpoints committed with the rows: version 1's stayed where it was.
        assert await store.load_checkpoint("bank.balances@1") == 1
        assert await store.load_checkpoint("bank.balances@2") == 2


async def test_read_your_writes_that_runs_out_of_time_is_a_not_caught_up_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Waiting for a position the read model does not reach in time raises
    NotCaughtUpError naming the runner, the position and how far it got (an
    expected timeout, not a crash)."""
    monkeypatch.setattr(engine_module, "READ_YOUR_WRITES_TIMEOUT", 0.2)
    async with open_engine(config_for(tmp_path), plugins=[_bank(1)]) as engine:
        await _send(engine, "OpenAccount", "a", 50)
        await wait_for(engine, "bank.balances")
        answer = await engine.run_query(
            "bank", "balance", {"account": "a", "wait_for_position": "1"}
        )
        assert answer == {"account": "a", "balance": 50}
        with pytest.raises(NotCaughtUpError) as raised:
            await engine.run_query("bank", "balance", {"account": "a", "wait_for_position": "7"})
        error = raised.value
        assert (error.position, error.reached, error.what) == (7, 1, "bank.balances")
        assert error.code == "not_caught_up"
        assert str(error) == (
            "bank.balances did not reach position 7 in time (it is at 1); retry the read"
        )
