"""The bank account example, as specifications and through a real command handler."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import trio
from eskit_bank import (
    MAX_AMOUNT,
    MAX_BALANCE,
    AccountOpened,
    BalanceLimitExceeded,
    BankAccount,
    BankTotals,
    Deposit,
    InsufficientFunds,
    MoneyDeposited,
    MoneyWithdrawn,
    OpenAccount,
    Withdraw,
    balances_view,
    bank_decider,
    bank_registry,
)

from engine import Codec, CommandHandler, MemoryStore
from engine.testing import DeciderSpec, ViewSpec

spec = DeciderSpec(bank_decider)


def test_open_account() -> None:
    """A new account opens with its initial balance."""
    spec.given().when(OpenAccount(initial_balance=100)).then_expect(AccountOpened(100))


def test_open_account_twice_is_rejected() -> None:
    """An account cannot be opened twice."""
    spec.given(AccountOpened(100)).when(OpenAccount(50)).then_error("already exists")


def test_deposit_to_existing_account() -> None:
    """A deposit to an open account is recorded."""
    spec.given(AccountOpened(100)).when(Deposit(50)).then_expect(MoneyDeposited(50))


def test_deposit_to_missing_account_is_rejected() -> None:
    """Money cannot go into an account that was never opened."""
    spec.given().when(Deposit(50)).then_error("does not exist")


def test_withdraw_insufficient_funds() -> None:
    """A withdrawal larger than the balance is rejected as insufficient."""
    error = spec.given(AccountOpened(50)).when(Withdraw(100)).then_error("insufficient")
    assert isinstance(error, InsufficientFunds)


def test_withdraw_exact_balance() -> None:
    """The whole balance can be withdrawn, leaving zero."""
    spec.given(AccountOpened(50)).when(Withdraw(50)).then_state(BankAccount(True, 0))


def test_balances_view() -> None:
    """The totals view counts accounts and sums the money held."""
    ViewSpec(balances_view).given(
        AccountOpened(100), AccountOpened(10), MoneyDeposited(5), MoneyWithdrawn(15)
    ).then(BankTotals(accounts=2, total=100))


def test_commands_validate_their_fields() -> None:
    """Negative or zero amounts never reach the decider."""
    with pytest.raises(ValueError, match="between 1 and"):
        Deposit(0)
    with pytest.raises(ValueError, match="initial_balance"):
        OpenAccount(-1)


@pytest.mark.parametrize(
    "make",
    [
        lambda: Deposit(MAX_AMOUNT + 1),
        lambda: Withdraw(2**63 - 1),
        lambda: OpenAccount(2**63 - 1),
    ],
)
def test_amounts_are_bounded(make: Callable[[], object]) -> None:
    """An amount above MAX_AMOUNT (such as 2**63-1) is refused before the decider."""
    with pytest.raises(ValueError, match=f"between [01] and {MAX_AMOUNT}"):
        make()


def test_balance_is_bounded() -> None:
    """A deposit may take the balance up to MAX_BALANCE, and one beyond it is rejected."""
    assert MAX_AMOUNT * 1000 == MAX_BALANCE
    spec.given(AccountOpened(MAX_AMOUNT), *[MoneyDeposited(MAX_AMOUNT)] * 998).when(
        Deposit(MAX_AMOUNT)
    ).then_expect(MoneyDeposited(MAX_AMOUNT))
    spec.given(AccountOpened(MAX_AMOUNT), *[MoneyDeposited(MAX_AMOUNT)] * 999).when(
        Deposit(1)
    ).then_error(BalanceLimitExceeded)


async def test_open_deposit_withdraw_through_the_handler() -> None:
    """Open with 100 and deposit 50 gives 150; an overdraft is rejected and stores nothing."""
    store = MemoryStore(Codec(bank_registry()))
    handler = CommandHandler(decider=bank_decider, store=store)
    await handler.handle("acc-1", OpenAccount(100))
    result = await handler.handle("acc-1", Deposit(50))
    assert result.state == BankAccount(True, 150)
    assert result.version == 2
    with pytest.raises(InsufficientFunds, match="insufficient"):
        await handler.handle("acc-1", Withdraw(151))
    assert await store.stream_version("acc-1") == 2


async def test_concurrent_deposits_are_all_kept() -> None:
    """10 tasks x 20 concurrent deposits on one stream end with the exact sum, versions
    contiguous, nothing lost or duplicated: conflicts are absorbed by retries."""
    store = MemoryStore(Codec(bank_registry()))
    handler = CommandHandler(decider=bank_decider, store=store)
    await handler.handle("acc-hot", OpenAccount(0))

    async def depositor(task: int) -> None:
        for i in range(20):
            await handler.handle("acc-hot", Deposit(task * 100 + i + 1))
            await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        for task in range(10):
            nursery.start_soon(depositor, task)

    events = await store.load("acc-hot")
    expected_total = sum(task * 100 + i + 1 for task in range(10) for i in range(20))
    assert [e.version for e in events] == list(range(1, 202))
    amounts = sorted(e.data.amount for e in events[1:])
    assert amounts == sorted(task * 100 + i + 1 for task in range(10) for i in range(20))
    state, version = await handler.load("acc-hot")
    assert state.balance == expected_total
    assert version == 201
    assert handler.statistics().conflicts > 0, "the test must really interleave writers"
