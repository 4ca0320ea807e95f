"""Specifications of the inventory slice."""

from engine.testing import DeciderSpec
from eskit_orders.inventory.command import ReserveStock, Restock
from eskit_orders.inventory.decider import inventory_decider
from eskit_orders.inventory.event import ReservationFailed, Restocked, StockReserved

spec = DeciderSpec(inventory_decider)


def test_restock() -> None:
    """Restocking adds units."""
    spec.given().when(Restock(5)).then_expect(Restocked(5))


def test_reserve_what_is_available() -> None:
    """A reservation within the stock sets units aside."""
    spec.given(Restocked(5)).when(ReserveStock("o-1", 3)).then_expect(StockReserved("o-1", 3))


def test_shortage_is_recorded_not_rejected() -> None:
    """Asking for more than is there records a failed reservation."""
    spec.given(Restocked(2), StockReserved("o-1", 1)).when(ReserveStock("o-2", 2)).then_expect(
        ReservationFailed("o-2", 2, 1)
    )


def test_one_reservation_per_order() -> None:
    """A repeated reservation for the same order decides nothing."""
    spec.given(Restocked(5), StockReserved("o-1", 3)).when(ReserveStock("o-1", 3)).then_expect()
