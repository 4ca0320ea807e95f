"""Test plugin: the bank's SQL balances, whose rebuilt versions take their time.

Every version after the first waits 5 ms per batch, so that a test can kill the engine
process in the middle of a rebuild (``[plugins] modules`` names it; it replaces ``bank``).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import attrs
import trio
from eskit_bank.plugin import balances
from eskit_bank.plugin import plugin as bank

from engine import Event, ProjectionContext, ProjectionDefinition, ProjectionSetup
from engine.runners import TransactionalProjection

#: Seconds a rebuilt version waits before each batch.
DELAY = 0.005


async def slow_balances(context: ProjectionContext) -> ProjectionSetup:
    """The bank's balances; from version 2 on, each batch waits ``DELAY`` first."""
    setup = balances(context)
    if inspect.isawaitable(setup):
        setup = await setup
    assert isinstance(setup, ProjectionSetup)
    inner = setup.handler
    if context.version < 2 or not isinstance(inner, TransactionalProjection):
        return setup

    async def handle(events: Sequence[Event[Any]], transaction: Any) -> None:
        await trio.sleep(DELAY)
        await inner.handle(events, transaction)

    return attrs.evolve(setup, handler=TransactionalProjection(inner.store, handle))


plugin = attrs.evolve(
    bank,
    projections=[ProjectionDefinition(name="balances", setup=slow_balances)],
    reactors={},
)
