"""The item-added event."""

import attrs


@attrs.frozen
class ItemAdded:
    """A product line was added to the order."""

    sku: str
    quantity: int
    unit_price: int
