"""The cancel-order command."""

import attrs


@attrs.frozen
class CancelOrder:
    """Cancel the order, giving a reason."""

    reason: str = attrs.field(validator=attrs.validators.min_len(1))
