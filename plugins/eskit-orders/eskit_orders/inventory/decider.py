"""Deciding and applying the inventory slice (one stream per product: ``inventory-<sku>``).

A reservation that cannot be met is recorded as :class:`ReservationFailed` rather than
rejected, so that the automation that asks for it always succeeds and the order's owner
can see (and act on) the shortage.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs

from engine import Decider
from eskit_orders.inventory.command import ReserveStock, Restock
from eskit_orders.inventory.event import ReservationFailed, Restocked, StockReserved


@attrs.frozen
class Stock:
    """Units on the shelf and the orders that already hold a reservation."""

    available: int = 0
    reserved_for: frozenset[str] = frozenset()


def decide(state: Stock, command: Restock | ReserveStock) -> Sequence[Any]:
    """Restocking always works; a reservation holds once per order and never overdraws."""
    match command:
        case Restock(quantity=quantity):
            return [Restocked(quantity)]
        case ReserveStock(order_id=order_id, quantity=quantity):
            if order_id in state.reserved_for:
                return []
            if quantity > state.available:
                return [ReservationFailed(order_id, quantity, state.available)]
            return [StockReserved(order_id, quantity)]
    raise TypeError(f"not an inventory command: {command!r}")


def evolve(state: Stock, event: Any) -> Stock:
    """Apply one inventory event."""
    match event:
        case Restocked(quantity=quantity):
            return attrs.evolve(state, available=state.available + quantity)
        case StockReserved(order_id=order_id, quantity=quantity):
            return Stock(state.available - quantity, state.reserved_for | {order_id})
    return state


inventory_decider: Decider[Stock, Any, Any] = Decider(
    initial_state=Stock,
    decide=decide,
    evolve=evolve,
    command_types=(Restock, ReserveStock),
    event_types=(Restocked, StockReserved, ReservationFailed),
)


def inventory_stream(sku: str) -> str:
    """The stream that holds a product's stock."""
    return f"inventory-{sku}"
