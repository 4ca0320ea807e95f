"""The order decider, assembled from the vertical slices.

Each slice owns one command, its event and the two functions that decide and apply it;
this module only routes a command to its slice's ``decide`` and an event to its slice's
``evolve``. Adding a slice means adding one folder and one line in :data:`SLICES`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import attrs

from engine import Decider, EventRegistry
from eskit_orders.add_item import decider as add_item
from eskit_orders.add_item.command import AddItem
from eskit_orders.add_item.event import ItemAdded
from eskit_orders.cancel_order import decider as cancel_order
from eskit_orders.cancel_order.command import CancelOrder
from eskit_orders.cancel_order.event import OrderCancelled
from eskit_orders.create_order import decider as create_order
from eskit_orders.create_order.command import CreateOrder
from eskit_orders.create_order.event import OrderCreated
from eskit_orders.inventory.event import ReservationFailed, Restocked, StockReserved
from eskit_orders.ship_order import decider as ship_order
from eskit_orders.ship_order.command import ShipOrder
from eskit_orders.ship_order.event import OrderShipped
from eskit_orders.state import OrderState
from eskit_orders.submit_order import decider as submit_order
from eskit_orders.submit_order.command import SubmitOrder
from eskit_orders.submit_order.event import OrderSubmitted


@attrs.frozen
class Slice:
    """One vertical slice: a command, the event it produces and the functions between."""

    command: type
    event: type
    event_name: str
    decide: Callable[[OrderState, Any], Sequence[Any]]
    evolve: Callable[[OrderState, Any], OrderState]


SLICES: tuple[Slice, ...] = (
    Slice(
        CreateOrder, OrderCreated, "orders.OrderCreated", create_order.decide, create_order.evolve
    ),
    Slice(AddItem, ItemAdded, "orders.ItemAdded", add_item.decide, add_item.evolve),
    Slice(
        SubmitOrder,
        OrderSubmitted,
        "orders.OrderSubmitted",
        submit_order.decide,
        submit_order.evolve,
    ),
    Slice(ShipOrder, OrderShipped, "orders.OrderShipped", ship_order.decide, ship_order.evolve),
    Slice(
        CancelOrder,
        OrderCancelled,
        "orders.OrderCancelled",
        cancel_order.decide,
        cancel_order.evolve,
    ),
)

_BY_COMMAND = {item.command: item for item in SLICES}
_BY_EVENT = {item.event: item for item in SLICES}


def decide(state: OrderState, command: Any) -> Sequence[Any]:
    """Route the command to its slice."""
    try:
        slice_ = _BY_COMMAND[type(command)]
    except KeyError:
        raise TypeError(f"not an order command: {command!r}") from None
    return slice_.decide(state, command)


def evolve(state: OrderState, event: Any) -> OrderState:
    """Route the event to its slice."""
    slice_ = _BY_EVENT.get(type(event))
    return state if slice_ is None else slice_.evolve(state, event)


order_decider: Decider[OrderState, Any, Any] = Decider(
    initial_state=OrderState,
    decide=decide,
    evolve=evolve,
    command_types=tuple(item.command for item in SLICES),
    event_types=tuple(item.event for item in SLICES),
)


def order_registry() -> EventRegistry:
    """A registry with every order and inventory event under a stable name."""
    registry = EventRegistry()
    for item in SLICES:
        registry.register(item.event, name=item.event_name)
    registry.register(Restocked, name="inventory.Restocked")
    registry.register(StockReserved, name="inventory.StockReserved")
    registry.register(ReservationFailed, name="inventory.ReservationFailed")
    return registry
