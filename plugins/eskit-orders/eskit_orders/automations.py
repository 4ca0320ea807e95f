"""Automations: events of one slice that trigger commands of another."""

from __future__ import annotations

from typing import Any

from engine import CommandSender, Event, Reactor
from eskit_orders.inventory.command import ReserveStock
from eskit_orders.inventory.decider import inventory_stream
from eskit_orders.ship_order.command import ShipOrder
from eskit_orders.submit_order.event import OrderSubmitted


def _is_digital_submission(event: Any) -> bool:
    return isinstance(event, OrderSubmitted) and event.digital


async def _ship_digitally(event: Event[Any], send: CommandSender) -> None:
    await send(event.stream_id, ShipOrder(tracking_number=f"digital-{event.stream_id}"))


#: A submitted digital order ships at once: there is no parcel to pack.
ship_digital_orders: Reactor[Any] = Reactor(trigger=_is_digital_submission, execute=_ship_digitally)


def _has_parcel_items(event: Any) -> bool:
    return isinstance(event, OrderSubmitted) and not event.digital and bool(event.items)


async def _reserve_stock(event: Event[Any], send: CommandSender) -> None:
    for item in event.data.items:
        await send(
            inventory_stream(item.sku),
            ReserveStock(order_id=event.stream_id, quantity=item.quantity),
        )


#: A submitted parcel order reserves its items' stock, one command per product stream.
reserve_inventory: Reactor[Any] = Reactor(trigger=_has_parcel_items, execute=_reserve_stock)
