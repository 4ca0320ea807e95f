"""The bank as an engine plugin: commands over HTTP, a balances read model, an automation."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from engine import (
    CommandBinding,
    CommandSender,
    Event,
    NotFoundError,
    Plugin,
    ProjectionContext,
    ProjectionDefinition,
    ProjectionSetup,
    Reactor,
)
from eskit_bank.domain import (
    AccountOpened,
    Deposit,
    MoneyDeposited,
    MoneyWithdrawn,
    bank_decider,
    bank_registry,
)

#: Accounts opened with at least this much get a welcome bonus.
BONUS_THRESHOLD = 1000
BONUS = 10


def balances(context: ProjectionContext) -> ProjectionSetup:
    """Each account's balance, kept in memory (rebuilt from the log at start)."""
    table: dict[str, int] = {}

    async def handle(event: Event[Any]) -> None:
        match event.data:
            case AccountOpened(initial_balance=initial):
                table[event.stream_id] = initial
            case MoneyDeposited(amount=amount):
                table[event.stream_id] = table.get(event.stream_id, 0) + amount
            case MoneyWithdrawn(amount=amount):
                table[event.stream_id] = table.get(event.stream_id, 0) - amount

    async def balance(params: Mapping[str, str]) -> dict[str, Any]:
        account = params.get("account", "")
        if account not in table:
            raise NotFoundError(f"no account {account!r}")
        return {"account": account, "balance": table[account]}

    async def accounts(params: Mapping[str, str]) -> dict[str, Any]:
        return {"accounts": len(table), "total": sum(table.values())}

    return ProjectionSetup(handler=handle, queries={"balance": balance, "totals": accounts})


def _large_opening(event: Any) -> bool:
    return isinstance(event, AccountOpened) and event.initial_balance >= BONUS_THRESHOLD


async def _pay_bonus(event: Event[Any], send: CommandSender) -> None:
    await send(event.stream_id, Deposit(amount=BONUS))


plugin = Plugin(
    name="bank",
    description="Bank accounts: open, deposit, withdraw; balances; a welcome bonus.",
    events=bank_registry(),
    commands=[CommandBinding(decider=bank_decider, snapshot_every=100)],
    projections=[ProjectionDefinition(name="balances", setup=balances)],
    reactors={"welcome-bonus": Reactor(trigger=_large_opening, execute=_pay_bonus)},
)
