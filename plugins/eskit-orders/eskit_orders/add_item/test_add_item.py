"""Specifications of the add-item slice."""

from engine.testing import DeciderSpec
from eskit_orders import order_decider
from eskit_orders.add_item.command import AddItem
from eskit_orders.add_item.event import ItemAdded
from eskit_orders.create_order.event import OrderCreated
from eskit_orders.submit_order.event import OrderSubmitted

spec = DeciderSpec(order_decider)


def test_adds_an_item_to_a_draft() -> None:
    """A draft order takes new lines."""
    spec.given(OrderCreated("c")).when(AddItem("sku-1", 2, 500)).then_expect(
        ItemAdded("sku-1", 2, 500)
    )


def test_no_items_without_an_order() -> None:
    """Items cannot go into an order that does not exist."""
    spec.given().when(AddItem("sku-1", 1, 1)).then_error("does not exist")


def test_no_items_after_submission() -> None:
    """A submitted order is closed for new lines."""
    spec.given(OrderCreated("c"), ItemAdded("a", 1, 1), OrderSubmitted(1)).when(
        AddItem("b", 1, 1)
    ).then_error("submitted")
