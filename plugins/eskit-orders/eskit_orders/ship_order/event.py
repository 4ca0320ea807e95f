"""The order-shipped event."""

import attrs


@attrs.frozen
class OrderShipped:
    """The order left the warehouse (or was delivered digitally)."""

    tracking_number: str
