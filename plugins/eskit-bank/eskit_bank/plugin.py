"""The bank as an engine plugin: commands over HTTP, a balances read model, an automation."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Mapping, Sequence
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
from engine.runners import TransactionalProjection
from engine.stores.base import SqlDatabase, SqlTransaction
from eskit_bank.domain import (
    AccountOpened,
    BalanceLimitExceeded,
    Deposit,
    MoneyDeposited,
    MoneyWithdrawn,
    bank_decider,
    bank_registry,
)

#: Accounts opened with at least this much get a welcome bonus.
BONUS_THRESHOLD = 1000
BONUS = 10


def balances(context: ProjectionContext) -> ProjectionSetup | Awaitable[ProjectionSetup]:
    """Each account's balance: a table in the event store's database when it has one
    (SQLite, PostgreSQL), committed with the runner's checkpoint, so it survives restarts
    and each event counts exactly once; else kept in memory and rebuilt at start."""
    if context.sql is None:
        return _memory_balances()
    return _sql_balances(context.sql, context.version)


def _delta(event: Event[Any]) -> int:
    match event.data:
        case AccountOpened(initial_balance=initial):
            return int(initial)
        case MoneyDeposited(amount=amount):
            return int(amount)
        case MoneyWithdrawn(amount=amount):
            return -int(amount)
    return 0


def _memory_balances() -> ProjectionSetup:
    table: dict[str, int] = {}

    async def handle(event: Event[Any]) -> None:
        if isinstance(event.data, (AccountOpened, MoneyDeposited, MoneyWithdrawn)):
            table[event.stream_id] = table.get(event.stream_id, 0) + _delta(event)

    async def balance(params: Mapping[str, str]) -> dict[str, Any]:
        account = params.get("account", "")
        if account not in table:
            raise NotFoundError(f"no account {account!r}")
        return {"account": account, "balance": table[account]}

    async def accounts(params: Mapping[str, str]) -> dict[str, Any]:
        return {"accounts": len(table), "total": sum(table.values())}

    return ProjectionSetup(handler=handle, queries={"balance": balance, "totals": accounts})


async def _sql_balances(sql: SqlDatabase, version: int) -> ProjectionSetup:
    # A table per version: a new version is built from the start beside the old one.
    table = f"bank_balances_v{version}"
    p = sql.placeholder
    await sql.ensure_schema(
        f"CREATE TABLE IF NOT EXISTS {table} (account TEXT PRIMARY KEY, balance BIGINT NOT NULL)"
    )
    # One upsert per account and batch; it adds to the row without reading it first
    # (the portable way: SQLite runs a batch's statements when the batch commits).
    upsert = (
        f"INSERT INTO {table} (account, balance) VALUES ({p}, {p})"
        f" ON CONFLICT (account) DO UPDATE SET balance = {table}.balance + excluded.balance"
    )

    async def handle(events: Sequence[Event[Any]], tx: SqlTransaction) -> None:
        deltas: dict[str, int] = {}
        for event in events:
            if isinstance(event.data, (AccountOpened, MoneyDeposited, MoneyWithdrawn)):
                deltas[event.stream_id] = deltas.get(event.stream_id, 0) + _delta(event)
        if deltas:
            await tx.executemany(upsert, list(deltas.items()))

    async def balance(params: Mapping[str, str]) -> dict[str, Any]:
        account = params.get("account", "")
        rows = await sql.fetch(f"SELECT balance FROM {table} WHERE account = {p}", [account])
        if not rows:
            raise NotFoundError(f"no account {account!r}")
        return {"account": account, "balance": int(rows[0][0])}

    async def accounts(params: Mapping[str, str]) -> dict[str, Any]:
        rows = await sql.fetch(f"SELECT count(*), coalesce(sum(balance), 0) FROM {table}")
        return {"accounts": int(rows[0][0]), "total": int(rows[0][1])}

    return ProjectionSetup(
        handler=TransactionalProjection(sql, handle),
        queries={"balance": balance, "totals": accounts},
    )


def _large_opening(event: Any) -> bool:
    return isinstance(event, AccountOpened) and event.initial_balance >= BONUS_THRESHOLD


async def _pay_bonus(event: Event[Any], send: CommandSender) -> None:
    # An account that reached the balance limit first gets no bonus (nothing to retry).
    with contextlib.suppress(BalanceLimitExceeded):
        await send(event.stream_id, Deposit(amount=BONUS))


plugin = Plugin(
    name="bank",
    description="Bank accounts: open, deposit, withdraw; balances; a welcome bonus.",
    events=bank_registry(),
    commands=[CommandBinding(decider=bank_decider, snapshot_every=100)],
    projections=[ProjectionDefinition(name="balances", setup=balances)],
    reactors={"welcome-bonus": Reactor(trigger=_large_opening, execute=_pay_bonus)},
)
