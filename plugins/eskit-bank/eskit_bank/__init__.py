"""The bank account example: one decider, three commands, three events, one view."""

from eskit_bank.domain import (
    AccountOpened,
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

__all__ = [
    "AccountOpened",
    "BankAccount",
    "BankTotals",
    "Deposit",
    "InsufficientFunds",
    "MoneyDeposited",
    "MoneyWithdrawn",
    "OpenAccount",
    "Withdraw",
    "balances_view",
    "bank_decider",
    "bank_registry",
]
