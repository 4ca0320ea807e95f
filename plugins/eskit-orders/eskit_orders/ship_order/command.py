"""The ship-order command."""

import attrs


@attrs.frozen
class ShipOrder:
    """Hand the submitted order to a carrier under a tracking number."""

    tracking_number: str = attrs.field(validator=attrs.validators.min_len(1))
