"""The benchmark domain, identical on both sides: an account that takes deposits.

Each event carries a ~200-byte payload (DESIGN.md's decode figures use 207 bytes), so the
codec cost is realistic and the same for eskit, the raw-driver floor and the peer.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import attrs

from engine import ORJSON, Codec, Decider, EventRegistry

NOTE = "benchmark payload " + "x" * 160


@attrs.frozen
class Deposit:
    amount: int


@attrs.frozen
class Deposited:
    amount: int
    note: str = NOTE
    reference: str = "ref-0000000000"


@attrs.frozen
class Account:
    balance: int = 0
    deposits: int = 0


def _decide(state: Account, command: Deposit) -> Sequence[Deposited]:
    return [Deposited(command.amount)]


def _evolve(state: Account, event: Deposited) -> Account:
    return Account(state.balance + event.amount, state.deposits + 1)


account = Decider(initial_state=Account, decide=_decide, evolve=_evolve)


def codec(fast: bool = True) -> Codec[Any]:
    registry = EventRegistry()
    registry.register(Deposited, name="bench.Deposited")
    return Codec(registry, format=ORJSON) if fast else Codec(registry)


@functools.cache
def payload_bytes() -> bytes:
    """The encoded payload the floors write, byte for byte what eskit writes (computed once:
    the floors must not pay for building a codec per row)."""
    return codec().encode(Deposited(1)).data
