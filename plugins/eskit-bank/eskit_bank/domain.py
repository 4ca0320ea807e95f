"""A bank account as a decider: the seed's example, translated to Python.

Commands and events are frozen attrs classes; the decider is three pure functions.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from engine import Decider, DomainError, EventRegistry, View

# -- state ----------------------------------------------------------------------------


@attrs.frozen
class BankAccount:
    """An account's state: whether it is open and its balance (in cents)."""

    exists: bool = False
    balance: int = 0


# -- commands -------------------------------------------------------------------------


#: The largest amount one command may move (cents): ten billion.
MAX_AMOUNT = 10**12
#: The largest balance an account may hold (cents). Far inside 64-bit integers, so a
#: balance, and the bank's total over millions of accounts, fit every read model's column.
MAX_BALANCE = 10**15


def _positive(_: object, attribute: attrs.Attribute[int], value: int) -> None:
    if not 0 < value <= MAX_AMOUNT:
        raise ValueError(f"{attribute.name}: must be between 1 and {MAX_AMOUNT}, got {value}")


def _opening(_: object, attribute: attrs.Attribute[int], value: int) -> None:
    if not 0 <= value <= MAX_AMOUNT:
        raise ValueError(f"{attribute.name}: must be between 0 and {MAX_AMOUNT}, got {value}")


@attrs.frozen
class OpenAccount:
    """Open an account with an initial balance."""

    initial_balance: int = attrs.field(validator=_opening)


@attrs.frozen
class Deposit:
    """Put money into an open account."""

    amount: int = attrs.field(validator=_positive)


@attrs.frozen
class Withdraw:
    """Take money out of an open account, never below zero."""

    amount: int = attrs.field(validator=_positive)


BankCommand = OpenAccount | Deposit | Withdraw

# -- events ---------------------------------------------------------------------------


@attrs.frozen
class AccountOpened:
    """An account was opened."""

    initial_balance: int


@attrs.frozen
class MoneyDeposited:
    """Money was deposited."""

    amount: int


@attrs.frozen
class MoneyWithdrawn:
    """Money was withdrawn."""

    amount: int


BankEvent = AccountOpened | MoneyDeposited | MoneyWithdrawn

# -- errors ---------------------------------------------------------------------------


class AccountAlreadyExists(DomainError):
    """The account is open already."""

    code = "account_already_exists"


class AccountNotFound(DomainError):
    """The account has not been opened."""

    code = "account_not_found"


class BalanceLimitExceeded(DomainError):
    """A deposit would take the balance above :data:`MAX_BALANCE`."""

    code = "balance_limit_exceeded"


class InsufficientFunds(DomainError):
    """A withdrawal is larger than the balance."""

    code = "insufficient_funds"


# -- the decider ------------------------------------------------------------------------


def decide(state: BankAccount, command: BankCommand) -> Sequence[BankEvent]:
    """Decide what a command means for an account."""
    match command:
        case OpenAccount(initial_balance=initial):
            if state.exists:
                raise AccountAlreadyExists("account already exists")
            return [AccountOpened(initial)]
        case Deposit(amount=amount):
            if not state.exists:
                raise AccountNotFound("account does not exist")
            if state.balance + amount > MAX_BALANCE:
                raise BalanceLimitExceeded(
                    f"balance limit: balance {state.balance} + deposit {amount} would exceed "
                    f"{MAX_BALANCE}"
                )
            return [MoneyDeposited(amount)]
        case Withdraw(amount=amount):
            if not state.exists:
                raise AccountNotFound("account does not exist")
            if state.balance < amount:
                raise InsufficientFunds(
                    f"insufficient funds: balance {state.balance}, withdrawal {amount}"
                )
            return [MoneyWithdrawn(amount)]
    raise TypeError(f"not a bank command: {command!r}")


def evolve(state: BankAccount, event: BankEvent) -> BankAccount:
    """Apply one event to an account."""
    match event:
        case AccountOpened(initial_balance=initial):
            return BankAccount(exists=True, balance=initial)
        case MoneyDeposited(amount=amount):
            return attrs.evolve(state, balance=state.balance + amount)
        case MoneyWithdrawn(amount=amount):
            return attrs.evolve(state, balance=state.balance - amount)
    return state


bank_decider: Decider[BankAccount, BankCommand, BankEvent] = Decider(
    initial_state=BankAccount,
    decide=decide,
    evolve=evolve,
    command_types=(OpenAccount, Deposit, Withdraw),
    event_types=(AccountOpened, MoneyDeposited, MoneyWithdrawn),
)


def bank_registry() -> EventRegistry:
    """A registry with the bank's event types under stable names."""
    registry = EventRegistry()
    registry.register(AccountOpened, name="bank.AccountOpened")
    registry.register(MoneyDeposited, name="bank.MoneyDeposited")
    registry.register(MoneyWithdrawn, name="bank.MoneyWithdrawn")
    return registry


# -- a view: total money held by the bank, and the number of accounts ----------------


@attrs.frozen
class BankTotals:
    """The bank-wide read model."""

    accounts: int = 0
    total: int = 0


def _totals(state: BankTotals, event: BankEvent) -> BankTotals:
    match event:
        case AccountOpened(initial_balance=initial):
            return BankTotals(state.accounts + 1, state.total + initial)
        case MoneyDeposited(amount=amount):
            return attrs.evolve(state, total=state.total + amount)
        case MoneyWithdrawn(amount=amount):
            return attrs.evolve(state, total=state.total - amount)
    return state


balances_view: View[BankTotals, BankEvent] = View(initial_state=BankTotals, evolve=_totals)
