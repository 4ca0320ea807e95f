"""Specifications of the cancel-order slice."""

from engine.testing import DeciderSpec
from eskit_orders import order_decider
from eskit_orders.add_item.event import ItemAdded
from eskit_orders.cancel_order.command import CancelOrder
from eskit_orders.cancel_order.event import OrderCancelled
from eskit_orders.create_order.event import OrderCreated
from eskit_orders.ship_order.event import OrderShipped
from eskit_orders.submit_order.event import OrderSubmitted

spec = DeciderSpec(order_decider)


def test_cancels_a_submitted_order() -> None:
    """A submitted order can still be cancelled."""
    spec.given(OrderCreated("c"), ItemAdded("a", 1, 1), OrderSubmitted(1)).when(
        CancelOrder("changed my mind")
    ).then_expect(OrderCancelled("changed my mind"))


def test_a_shipped_order_cannot_be_cancelled() -> None:
    """Once shipped, an order stays shipped."""
    spec.given(OrderCreated("c"), ItemAdded("a", 1, 1), OrderSubmitted(1), OrderShipped("T")).when(
        CancelOrder("too late")
    ).then_error("shipped")


def test_cancelling_twice_decides_nothing() -> None:
    """Cancelling a cancelled order is accepted and changes nothing."""
    spec.given(OrderCreated("c"), OrderCancelled("x")).when(CancelOrder("y")).then_expect()
