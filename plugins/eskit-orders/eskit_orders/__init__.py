"""The order-processing example as vertical slices: create, add item, submit, ship, cancel."""

from eskit_orders.add_item.command import AddItem
from eskit_orders.add_item.event import ItemAdded
from eskit_orders.automations import reserve_inventory, ship_digital_orders
from eskit_orders.cancel_order.command import CancelOrder
from eskit_orders.cancel_order.event import OrderCancelled
from eskit_orders.create_order.command import CreateOrder
from eskit_orders.create_order.event import OrderCreated
from eskit_orders.decider import SLICES, order_decider, order_registry
from eskit_orders.ship_order.command import ShipOrder
from eskit_orders.ship_order.event import OrderShipped
from eskit_orders.state import LineItem, OrderState, OrderStatus
from eskit_orders.submit_order.command import SubmitOrder
from eskit_orders.submit_order.event import OrderSubmitted
from eskit_orders.views import OrderCounts, OrderStatusBoard, order_counts

__all__ = [
    "SLICES",
    "AddItem",
    "CancelOrder",
    "CreateOrder",
    "ItemAdded",
    "LineItem",
    "OrderCancelled",
    "OrderCounts",
    "OrderCreated",
    "OrderShipped",
    "OrderState",
    "OrderStatus",
    "OrderStatusBoard",
    "OrderSubmitted",
    "ShipOrder",
    "SubmitOrder",
    "order_counts",
    "order_decider",
    "order_registry",
    "reserve_inventory",
    "ship_digital_orders",
]
