"""The bank account example: one decider, three commands, three events, one view."""

from eskit_bank.domain import (
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

__all__ = [
    "MAX_AMOUNT",
    "MAX_BALANCE",
    "AccountOpened",
    "BalanceLimitExceeded",
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
