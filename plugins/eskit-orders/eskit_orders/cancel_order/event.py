"""The order-cancelled event."""

import attrs


@attrs.frozen
class OrderCancelled:
    """The order was cancelled."""

    reason: str
