"""The status page's pieces: runner history on virtual time, recent errors, the event model."""

from __future__ import annotations

import datetime as dt

import attrs
import trio
import trio.testing

from engine.daemon.plugins import load_plugins
from engine.observability.status import EventModel, RecentErrors, RunnerHistory
from engine.runners.base import RunnerState, RunnerStatistics


def stats(**changes: object) -> RunnerStatistics:
    base = RunnerStatistics(
        name="r",
        state=RunnerState.LIVE,
        checkpoint=0,
        head=0,
        lag=0,
        rate=0.0,
        processed=0,
        retries=0,
        restarts=0,
        parked=0,
        leases_lost=0,
        rebuild_checkpoint=None,
        last_error=None,
    )
    return attrs.evolve(base, **changes)


async def test_history_samples_lag_and_throughput(autojump_clock: trio.testing.MockClock) -> None:
    """Every interval the sampler keeps each runner's lag and events/s, for ``seconds``."""
    current = {"r": stats()}
    errors = RecentErrors(now=lambda: dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    history = RunnerHistory(interval=2.0, seconds=10.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(history.run, lambda: current, errors)  # samples at t=0, 2, 4...
        await trio.sleep(1)
        current["r"] = stats(processed=10, lag=4)
        await trio.sleep(2)  # t=3
        current["r"] = stats(processed=30, lag=0, retries=1, last_error="ValueError: bad")
        await trio.sleep(2)  # t=5
        current["r"] = stats(processed=30, retries=1, restarts=1, last_error="ValueError: bad")
        await trio.sleep(1.5)  # t=6.5
        document = history.to_json()
        assert document["runners"]["r"] == {
            "age": [6.5, 4.5, 2.5, 0.5],
            "lag": [0, 4, 0, 0],
            "throughput": [0.0, 5.0, 10.0, 0.0],
        }
        await trio.sleep(20)
        assert len(history.to_json()["runners"]["r"]["age"]) == 6  # 10 s at 2 s, both ends
        nursery.cancel_scope.cancel()
    assert [(e.kind, e.message) for e in errors.entries()] == [
        ("restart", "restarted (1 time(s)); last handler error: ValueError: bad"),
        ("runner error", "ValueError: bad"),
    ]
    assert errors.total == 2


def test_recent_errors_are_bounded_and_redacted() -> None:
    """Only the newest errors are kept, newest first, with secrets scrubbed."""
    errors = RecentErrors(size=2)
    for n in range(3):
        errors.add("store", "failed", f"error {n} at postgresql://u:pw{n}@db/x")
    assert [e.message for e in errors.entries()] == [
        "error 2 at postgresql://u:[redacted]@db/x",
        "error 1 at postgresql://u:[redacted]@db/x",
    ]
    assert errors.total == 3


def test_the_event_model_of_the_example_plugins() -> None:
    """Declared nodes and edges come from the plugins; observed edges carry counts."""
    plugins = load_plugins(None)
    model = EventModel.from_plugins(plugins)
    document = model.to_json()
    bank = next(p for p in document["plugins"] if p["name"] == "bank")
    assert [c["id"] for c in bank["commands"]] == [
        "command:bank.OpenAccount",
        "command:bank.Deposit",
        "command:bank.Withdraw",
    ]
    assert [e["name"] for e in bank["events"]] == [
        "bank.AccountOpened",
        "bank.MoneyDeposited",
        "bank.MoneyWithdrawn",
    ]
    assert bank["projections"] == [{"id": "projection:bank.balances", "name": "balances"}]
    assert bank["automations"] == [{"id": "automation:bank.welcome-bonus", "name": "welcome-bonus"}]
    assert bank["deciders"][0]["commands"] == [c["id"] for c in bank["commands"]]

    bank_plugin = next(p for p in plugins if p.name == "bank")
    open_account, deposit = bank_plugin.commands[0].decider.command_types[:2]
    model.record_command(open_account, ["bank.AccountOpened"])
    model.record_command(open_account, ["bank.AccountOpened"])
    model.record_trigger("bank.AccountOpened", "bank.welcome-bonus")
    model.record_sent("bank.welcome-bonus", deposit)
    edges = {(e["from"], e["kind"], e["to"]): e for e in model.to_json()["edges"]}
    opened = edges["command:bank.OpenAccount", "emits", "event:bank.AccountOpened"]
    assert (opened["declared"], opened["count"]) == (True, 2)
    assert edges["command:bank.Deposit", "emits", "event:bank.AccountOpened"]["count"] is None
    trigger = edges["event:bank.AccountOpened", "triggers", "automation:bank.welcome-bonus"]
    assert (trigger["declared"], trigger["count"]) == (False, 1)
    assert edges["automation:bank.welcome-bonus", "sends", "command:bank.Deposit"]["count"] == 1
    reads = [key for key in edges if key[1] == "reads" and key[2] == "projection:bank.balances"]
    assert len(reads) == 3
