"""Deciding and applying the cancel-order slice."""

from __future__ import annotations

import attrs

from engine import DomainError
from eskit_orders.cancel_order.command import CancelOrder
from eskit_orders.cancel_order.event import OrderCancelled
from eskit_orders.state import OrderState, OrderStatus


def decide(state: OrderState, command: CancelOrder) -> list[OrderCancelled]:
    """Drafts and submitted orders can be cancelled; shipped ones cannot."""
    if state.status is OrderStatus.NONE:
        raise DomainError("order does not exist")
    if state.status is OrderStatus.CANCELLED:
        return []
    if state.status is OrderStatus.SHIPPED:
        raise DomainError("cannot cancel a shipped order")
    return [OrderCancelled(command.reason)]


def evolve(state: OrderState, event: OrderCancelled) -> OrderState:
    """The order is cancelled."""
    return attrs.evolve(state, status=OrderStatus.CANCELLED)
