"""The order state every slice reads: the one thing the slices share."""

from __future__ import annotations

import enum

import attrs


class OrderStatus(enum.Enum):
    """Where an order is in its life."""

    NONE = "none"
    DRAFT = "draft"
    SUBMITTED = "submitted"
    SHIPPED = "shipped"
    CANCELLED = "cancelled"


@attrs.frozen
class LineItem:
    """One product line of an order (price in cents)."""

    sku: str
    quantity: int
    unit_price: int


@attrs.frozen
class OrderState:
    """An order as the deciders see it."""

    status: OrderStatus = OrderStatus.NONE
    customer_id: str = ""
    items: tuple[LineItem, ...] = ()
    digital: bool = False

    @property
    def total(self) -> int:
        """The order's total in cents."""
        return sum(item.quantity * item.unit_price for item in self.items)
