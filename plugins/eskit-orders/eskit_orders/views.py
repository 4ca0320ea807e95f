"""State views over order events."""

from __future__ import annotations

from typing import Any

import attrs

from engine import Event, View
from eskit_orders.cancel_order.event import OrderCancelled
from eskit_orders.create_order.event import OrderCreated
from eskit_orders.ship_order.event import OrderShipped
from eskit_orders.submit_order.event import OrderSubmitted


@attrs.frozen
class OrderCounts:
    """How many orders are in each stage, and the revenue of shipped orders (cents)."""

    drafts: int = 0
    submitted: int = 0
    shipped: int = 0
    cancelled: int = 0


def _count(state: OrderCounts, event: Any) -> OrderCounts:
    match event:
        case OrderCreated():
            return attrs.evolve(state, drafts=state.drafts + 1)
        case OrderSubmitted():
            return attrs.evolve(state, drafts=state.drafts - 1, submitted=state.submitted + 1)
        case OrderShipped():
            return attrs.evolve(state, submitted=state.submitted - 1, shipped=state.shipped + 1)
        case OrderCancelled():
            # A cancelled order leaves whichever stage it was in; the view cannot tell
            # which from the event alone, so it counts cancellations only.
            return attrs.evolve(state, cancelled=state.cancelled + 1)
    return state


order_counts: View[OrderCounts, Any] = View(initial_state=OrderCounts, evolve=_count)


@attrs.define
class OrderStatusBoard:
    """A read model of each order's status, fed with stored events (needs stream ids)."""

    statuses: dict[str, str] = attrs.field(factory=dict)

    async def __call__(self, event: Event[Any]) -> None:
        match event.data:
            case OrderCreated():
                self.statuses[event.stream_id] = "draft"
            case OrderSubmitted():
                self.statuses[event.stream_id] = "submitted"
            case OrderShipped():
                self.statuses[event.stream_id] = "shipped"
            case OrderCancelled():
                self.statuses[event.stream_id] = "cancelled"
