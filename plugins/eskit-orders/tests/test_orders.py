"""The order example end to end: slices combined, a view, a projection and an automation."""

from __future__ import annotations

from typing import Any

from eskit_orders import (
    AddItem,
    CreateOrder,
    ItemAdded,
    LineItem,
    OrderCancelled,
    OrderCounts,
    OrderCreated,
    OrderShipped,
    OrderStatus,
    OrderStatusBoard,
    OrderSubmitted,
    ShipOrder,
    SubmitOrder,
    order_counts,
    order_decider,
    order_registry,
    reserve_inventory,
    ship_digital_orders,
)
from eskit_orders.inventory.command import ReserveStock

from engine import (
    Codec,
    CommandHandler,
    CommandRouter,
    EventProjector,
    MemoryStore,
    ReactorRegistry,
)
from engine.testing import ProjectionSpec, ReactorSpec, ViewSpec, as_events


def test_order_counts_view() -> None:
    """The counts view moves orders between stages."""
    ViewSpec(order_counts).given(
        OrderCreated("a"), OrderCreated("b"), OrderSubmitted(5), OrderShipped("T")
    ).then(OrderCounts(drafts=1, submitted=0, shipped=1))


async def test_status_board_projection() -> None:
    """The status board shows each order's latest status."""
    board = OrderStatusBoard()
    events = as_events([OrderCreated("c"), OrderSubmitted(10), OrderCancelled("no")])
    await (
        ProjectionSpec(board, lambda: board.statuses)
        .given(*events)
        .then({"spec-stream": "cancelled"})
    )


async def test_digital_orders_ship_on_submission() -> None:
    """Submitting a digital order sends the ship command for the same order."""
    await (
        ReactorSpec(ship_digital_orders)
        .given(OrderSubmitted(10, digital=True))
        .then_sends(("spec-stream", ShipOrder("digital-spec-stream")))
    )


async def test_parcel_orders_wait_for_the_warehouse() -> None:
    """A parcel order's submission sends no command."""
    await ReactorSpec(ship_digital_orders).given(OrderSubmitted(10)).then_sends_nothing()


async def test_the_automation_closes_the_loop() -> None:
    """A digital order submitted through the handler ends up shipped via the reactor, and a
    redelivered event does not ship it twice (command ids derived from the event id)."""
    store: MemoryStore[Any] = MemoryStore(Codec(order_registry()))
    router = CommandRouter()
    reactors: ReactorRegistry[Any] = ReactorRegistry(router)
    reactors.register("ship-digital", ship_digital_orders)
    board = OrderStatusBoard()
    projector: EventProjector[Any] = EventProjector()
    projector.register("status-board", board)
    projector.register("automations", reactors.handle)
    handler = CommandHandler(decider=order_decider, store=store, projector=projector)
    router.route_decider(handler)

    await router("o-1", CreateOrder("cust", digital=True))
    await router("o-1", AddItem("ebook", 1, 999))
    await router("o-1", SubmitOrder())

    state, version = await handler.load("o-1")
    assert state.status is OrderStatus.SHIPPED
    assert board.statuses == {"o-1": "shipped"}
    submitted = next(e for e in await store.load("o-1") if isinstance(e.data, OrderSubmitted))
    await reactors.handle(submitted)  # at-least-once delivery may repeat an event
    assert await store.stream_version("o-1") == version == 4
    shipped = (await store.load("o-1"))[-1]
    assert shipped.data == OrderShipped("digital-o-1")
    assert shipped.metadata["causation_id"] == str(submitted.event_id)


def test_registry_names_every_slice_event() -> None:
    """Every slice's event has a stable registered name."""
    assert order_registry().names() == [
        "inventory.ReservationFailed",
        "inventory.Restocked",
        "inventory.StockReserved",
        "orders.ItemAdded",
        "orders.OrderCancelled",
        "orders.OrderCreated",
        "orders.OrderShipped",
        "orders.OrderSubmitted",
    ]


def test_item_added_round_trips_through_the_codec() -> None:
    """Order events survive encoding and decoding."""
    codec: Codec[Any] = Codec(order_registry())
    encoded = codec.encode(ItemAdded("sku", 2, 300))
    assert codec.decode(encoded.type, encoded.schema_version, encoded.data) == ItemAdded(
        "sku", 2, 300
    )


async def test_parcel_orders_reserve_their_stock() -> None:
    """A submitted parcel order reserves each line's quantity on its product's stream."""
    items = (LineItem("book", 2, 900), LineItem("pen", 1, 100))
    await (
        ReactorSpec(reserve_inventory)
        .given(OrderSubmitted(1900, items=items))
        .then_sends(
            ("inventory-book", ReserveStock("spec-stream", 2)),
            ("inventory-pen", ReserveStock("spec-stream", 1)),
        )
    )


async def test_digital_orders_reserve_nothing() -> None:
    """Digital orders have no stock to reserve."""
    items = (LineItem("ebook", 1, 900),)
    await (
        ReactorSpec(reserve_inventory)
        .given(OrderSubmitted(900, digital=True, items=items))
        .then_sends_nothing()
    )
