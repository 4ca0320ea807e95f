"""The inventory events."""

import attrs


@attrs.frozen
class Restocked:
    """Units were added to the shelf."""

    quantity: int


@attrs.frozen
class StockReserved:
    """Units were set aside for an order."""

    order_id: str
    quantity: int


@attrs.frozen
class ReservationFailed:
    """An order asked for more units than were available; nothing was set aside."""

    order_id: str
    requested: int
    available: int
