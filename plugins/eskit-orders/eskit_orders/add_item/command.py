"""The add-item command."""

import attrs


@attrs.frozen
class AddItem:
    """Add ``quantity`` of ``sku`` at ``unit_price`` cents to a draft order."""

    sku: str = attrs.field(validator=attrs.validators.min_len(1))
    quantity: int = attrs.field(validator=attrs.validators.gt(0))
    unit_price: int = attrs.field(validator=attrs.validators.ge(0))
