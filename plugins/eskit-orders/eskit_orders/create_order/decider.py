"""Deciding and applying the create-order slice."""

from __future__ import annotations

import attrs

from engine import DomainError
from eskit_orders.create_order.command import CreateOrder
from eskit_orders.create_order.event import OrderCreated
from eskit_orders.state import OrderState, OrderStatus


def decide(state: OrderState, command: CreateOrder) -> list[OrderCreated]:
    """An order can be created once."""
    if state.status is not OrderStatus.NONE:
        raise DomainError("order already exists")
    return [OrderCreated(command.customer_id, command.digital)]


def evolve(state: OrderState, event: OrderCreated) -> OrderState:
    """A created order is a draft for its customer."""
    return attrs.evolve(
        state, status=OrderStatus.DRAFT, customer_id=event.customer_id, digital=event.digital
    )
