"""The order-created event."""

import attrs


@attrs.frozen
class OrderCreated:
    """A draft order exists for the customer."""

    customer_id: str
    digital: bool = False
