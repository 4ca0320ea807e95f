"""Specifications of the create-order slice."""

from engine.testing import DeciderSpec
from eskit_orders import order_decider
from eskit_orders.create_order.command import CreateOrder
from eskit_orders.create_order.event import OrderCreated

spec = DeciderSpec(order_decider)


def test_creates_a_draft_order() -> None:
    """A new order is created for its customer."""
    spec.given().when(CreateOrder("cust-1")).then_expect(OrderCreated("cust-1"))


def test_an_order_is_created_once() -> None:
    """Creating an existing order is rejected."""
    spec.given(OrderCreated("cust-1")).when(CreateOrder("cust-2")).then_error("already exists")
