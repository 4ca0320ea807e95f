"""The submit-order command."""

import attrs


@attrs.frozen
class SubmitOrder:
    """Submit the draft order for fulfilment."""
