"""Specifications of the ship-order slice."""

from engine.testing import DeciderSpec
from eskit_orders import order_decider
from eskit_orders.add_item.event import ItemAdded
from eskit_orders.create_order.event import OrderCreated
from eskit_orders.ship_order.command import ShipOrder
from eskit_orders.ship_order.event import OrderShipped
from eskit_orders.submit_order.event import OrderSubmitted

spec = DeciderSpec(order_decider)
submitted = (OrderCreated("c"), ItemAdded("a", 1, 1), OrderSubmitted(1))


def test_ships_a_submitted_order() -> None:
    """A submitted order ships under its tracking number."""
    spec.given(*submitted).when(ShipOrder("TRK-1")).then_expect(OrderShipped("TRK-1"))


def test_a_draft_does_not_ship() -> None:
    """A draft must be submitted before it ships."""
    spec.given(OrderCreated("c")).when(ShipOrder("TRK-1")).then_error("draft")


def test_shipping_twice_decides_nothing() -> None:
    """Shipping a shipped order is accepted and changes nothing (idempotent)."""
    spec.given(*submitted, OrderShipped("TRK-1")).when(ShipOrder("TRK-2")).then_expect()
