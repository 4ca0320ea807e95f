"""Deciding and applying the ship-order slice."""

from __future__ import annotations

import attrs

from engine import DomainError
from eskit_orders.ship_order.command import ShipOrder
from eskit_orders.ship_order.event import OrderShipped
from eskit_orders.state import OrderState, OrderStatus


def decide(state: OrderState, command: ShipOrder) -> list[OrderShipped]:
    """Only submitted orders ship; shipping twice is a no-op, not an error."""
    if state.status is OrderStatus.SHIPPED:
        return []
    if state.status is not OrderStatus.SUBMITTED:
        raise DomainError(f"cannot ship an order that is {state.status.value}")
    return [OrderShipped(command.tracking_number)]


def evolve(state: OrderState, event: OrderShipped) -> OrderState:
    """The order is shipped."""
    return attrs.evolve(state, status=OrderStatus.SHIPPED)
