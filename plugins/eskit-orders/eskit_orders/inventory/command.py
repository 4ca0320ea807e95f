"""The inventory commands."""

import attrs


@attrs.frozen
class Restock:
    """Add ``quantity`` units of the product (stream ``inventory-<sku>``) to the shelf."""

    quantity: int = attrs.field(validator=attrs.validators.gt(0))


@attrs.frozen
class ReserveStock:
    """Reserve ``quantity`` units for an order."""

    order_id: str = attrs.field(validator=attrs.validators.min_len(1))
    quantity: int = attrs.field(validator=attrs.validators.gt(0))
