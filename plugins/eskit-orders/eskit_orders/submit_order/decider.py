"""Deciding and applying the submit-order slice."""

from __future__ import annotations

import attrs

from engine import DomainError
from eskit_orders.state import OrderState, OrderStatus
from eskit_orders.submit_order.command import SubmitOrder
from eskit_orders.submit_order.event import OrderSubmitted


def decide(state: OrderState, command: SubmitOrder) -> list[OrderSubmitted]:
    """Only a draft with at least one item can be submitted."""
    if state.status is OrderStatus.NONE:
        raise DomainError("order does not exist")
    if state.status is not OrderStatus.DRAFT:
        raise DomainError(f"cannot submit a {state.status.value} order")
    if not state.items:
        raise DomainError("cannot submit an empty order")
    return [OrderSubmitted(state.total, state.digital, state.items)]


def evolve(state: OrderState, event: OrderSubmitted) -> OrderState:
    """The order is submitted."""
    return attrs.evolve(state, status=OrderStatus.SUBMITTED)
