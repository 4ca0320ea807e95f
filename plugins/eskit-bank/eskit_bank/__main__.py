"""Run the bank example: ``python -m eskit_bank``.

Opens an account, deposits, tries an overdraft, and prints what happened at each step.
"""

from __future__ import annotations

import trio

from engine import Codec, CommandHandler, DomainError, EventProjector, MemoryStore, ViewProjection
from eskit_bank.domain import (
    Deposit,
    OpenAccount,
    Withdraw,
    balances_view,
    bank_decider,
    bank_registry,
)


async def main() -> None:
    """Drive a few commands through a command handler and an inline view."""
    totals = ViewProjection(balances_view)
    projector: EventProjector[object] = EventProjector()
    projector.register("bank-totals", totals)
    handler = CommandHandler(
        decider=bank_decider, store=MemoryStore(Codec(bank_registry())), projector=projector
    )
    for stream_id, command in [
        ("acc-123", OpenAccount(initial_balance=100)),
        ("acc-123", Deposit(amount=50)),
        ("acc-456", OpenAccount(initial_balance=10)),
        ("acc-123", Withdraw(amount=500)),
        ("acc-123", Withdraw(amount=30)),
    ]:
        try:
            result = await handler.handle(stream_id, command)
        except DomainError as rejected:
            print(f"{stream_id}: {command!r} rejected: {rejected}")
            continue
        for event in result.events:
            print(f"{stream_id} v{event.version} @{event.position}: {event.type} {event.data!r}")
        print(f"{stream_id}: balance {result.state.balance}")
    print(f"bank totals: {totals.state!r}")


if __name__ == "__main__":
    trio.run(main)
