"""Deciding and applying the add-item slice."""

from __future__ import annotations

import attrs

from engine import DomainError
from eskit_orders.add_item.command import AddItem
from eskit_orders.add_item.event import ItemAdded
from eskit_orders.state import LineItem, OrderState, OrderStatus

#: Orders are capped so that one order cannot grow without bound.
MAX_LINES = 100


def decide(state: OrderState, command: AddItem) -> list[ItemAdded]:
    """Items go into draft orders only, up to :data:`MAX_LINES` lines."""
    if state.status is OrderStatus.NONE:
        raise DomainError("order does not exist")
    if state.status is not OrderStatus.DRAFT:
        raise DomainError(f"cannot add items to a {state.status.value} order")
    if len(state.items) >= MAX_LINES:
        raise DomainError(f"an order holds at most {MAX_LINES} lines")
    return [ItemAdded(command.sku, command.quantity, command.unit_price)]


def evolve(state: OrderState, event: ItemAdded) -> OrderState:
    """The line is appended to the order."""
    line = LineItem(event.sku, event.quantity, event.unit_price)
    return attrs.evolve(state, items=(*state.items, line))
