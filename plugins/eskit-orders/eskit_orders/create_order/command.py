"""The create-order command."""

import attrs


@attrs.frozen
class CreateOrder:
    """Start a new draft order for a customer; ``digital`` orders ship without a parcel."""

    customer_id: str = attrs.field(validator=attrs.validators.min_len(1))
    digital: bool = False
