"""Specifications of the submit-order slice."""

from engine.testing import DeciderSpec
from eskit_orders import order_decider
from eskit_orders.add_item.event import ItemAdded
from eskit_orders.create_order.event import OrderCreated
from eskit_orders.state import LineItem
from eskit_orders.submit_order.command import SubmitOrder
from eskit_orders.submit_order.event import OrderSubmitted

spec = DeciderSpec(order_decider)


def test_submits_with_the_total() -> None:
    """Submitting records the order's total."""
    spec.given(OrderCreated("c"), ItemAdded("a", 2, 150), ItemAdded("b", 1, 99)).when(
        SubmitOrder()
    ).then_expect(OrderSubmitted(399, items=(LineItem("a", 2, 150), LineItem("b", 1, 99))))


def test_an_empty_order_cannot_be_submitted() -> None:
    """An order with no items stays a draft."""
    spec.given(OrderCreated("c")).when(SubmitOrder()).then_error("empty")


def test_an_order_is_submitted_once() -> None:
    """A submitted order cannot be submitted again."""
    spec.given(OrderCreated("c"), ItemAdded("a", 1, 1), OrderSubmitted(1)).when(
        SubmitOrder()
    ).then_error("cannot submit a submitted order")
