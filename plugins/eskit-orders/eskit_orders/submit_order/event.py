"""The order-submitted event."""

import attrs


@attrs.frozen
class OrderSubmitted:
    """The order was submitted with this total (cents)."""

    total: int
    digital: bool = False
