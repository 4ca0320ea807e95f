"""Where automations and projections declared in a plugin start: the whole log, or only
what is stored after they first start (for a store filled by copying events)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import pytest
from eskit_bank.plugin import plugin as bank

from engine import Event, Plugin, ProjectionDefinition, ProjectionSetup, Reactor
from engine.daemon.engine import Engine, open_engine
from tests.daemon.test_engine import config_for, http, wait_for
from tests.daemon.test_sql_read_models import _bank, _send

BONUS = "bank.welcome-bonus"


def _bank_with_bonus(start: str) -> Plugin:
    """The bank with its welcome-bonus automation starting at ``start``."""
    reactor = bank.reactors["welcome-bonus"]
    return attrs.evolve(_bank(1), reactors={"welcome-bonus": attrs.evolve(reactor, start=start)})


async def _versions(engine: Engine, *accounts: str) -> list[int]:
    """How many events each account's stream holds (2 = opened and given the bonus)."""
    return [await engine.store.stream_version(account) for account in accounts]


async def test_an_automation_starting_at_the_end_skips_the_history_then_resumes(
    tmp_path: Path,
) -> None:
    """An automation declared ``start="end"`` does not react to events stored before
    its first start, reacts to later ones, and after a restart resumes from its
    checkpoint (events stored while it was down are reacted to)."""
    config = config_for(tmp_path)
    async with open_engine(config, plugins=[_bank(1)]) as engine:  # copied history
        await _send(engine, "OpenAccount", "old", 5000)
    async with open_engine(config, plugins=[_bank_with_bonus("end")]) as engine:
        await wait_for(engine, BONUS)
        await _send(engine, "OpenAccount", "new", 2000)
        await wait_for(engine, BONUS)
        await wait_for(engine, BONUS)  # and the bonus it sent, stored after it
        assert await _versions(engine, "old", "new") == [1, 2]
    async with open_engine(config, plugins=[_bank(1)]) as engine:  # the automation is off
        await _send(engine, "OpenAccount", "meanwhile", 3000)
    async with open_engine(config, plugins=[_bank_with_bonus("end")]) as engine:
        await wait_for(engine, BONUS)
        await wait_for(engine, BONUS)
        assert await _versions(engine, "old", "new", "meanwhile") == [1, 2, 2]


async def test_an_automation_starts_at_the_beginning_by_default(tmp_path: Path) -> None:
    """Without ``start`` an automation reacts to the whole log on its first start."""
    config = config_for(tmp_path)
    async with open_engine(config, plugins=[_bank(1)]) as engine:
        await _send(engine, "OpenAccount", "old", 5000)
    async with open_engine(config, plugins=[_bank_with_bonus("beginning")]) as engine:
        await wait_for(engine, BONUS)
        await wait_for(engine, BONUS)
        assert await _versions(engine, "old") == [2]


def _seen_plugin(start: str) -> Plugin:
    """The bank with an in-memory read model of the positions it was fed, starting at ``start``."""

    def setup(context: Any) -> ProjectionSetup:
        seen: list[int] = []

        async def handle(event: Event[Any]) -> None:
            seen.append(event.position)

        async def positions(params: Mapping[str, str]) -> list[int]:
            return seen

        return ProjectionSetup(handler=handle, queries={"seen": positions})

    return attrs.evolve(
        _bank(1), projections=[ProjectionDefinition(name="seen", setup=setup, start=start)]
    )


async def test_a_projection_starting_at_the_end_sees_only_new_events(tmp_path: Path) -> None:
    """A projection declared ``start="end"`` is fed only the events stored after it
    started; a bad start value is refused when the plugin is defined."""
    config = config_for(tmp_path)
    async with open_engine(config, plugins=[_bank(1)]) as engine:
        await _send(engine, "OpenAccount", "old", 1)
    async with open_engine(config, plugins=[_seen_plugin("end")]) as engine:
        await wait_for(engine, "bank.seen")
        await _send(engine, "Deposit", "old", 1)
        await wait_for(engine, "bank.seen")
        status, body = await http(f"{engine.http_urls[0]}/queries/bank/seen")
        assert (status, body) == (200, [2])
    with pytest.raises(ValueError, match="start"):
        _seen_plugin("middle")
    with pytest.raises(ValueError, match="start"):
        Reactor(trigger=bool, execute=bank.reactors["welcome-bonus"].execute, start="now")  # type: ignore[arg-type]
