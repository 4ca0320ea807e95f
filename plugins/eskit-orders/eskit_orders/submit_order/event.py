"""The order-submitted event."""

import attrs

from eskit_orders.state import LineItem


@attrs.frozen
class OrderSubmitted:
    """The order was submitted with this total (cents) and these lines."""

    total: int
    digital: bool = False
    items: tuple[LineItem, ...] = ()
