"""Orders as an engine plugin: the slices' commands, an order list, the digital-shipping automation."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from engine import CommandBinding, Plugin, ProjectionContext, ProjectionDefinition, ProjectionSetup
from eskit_orders.automations import reserve_inventory, ship_digital_orders
from eskit_orders.decider import order_decider, order_registry
from eskit_orders.inventory.command import ReserveStock
from eskit_orders.inventory.decider import inventory_decider
from eskit_orders.views import OrderStatusBoard


def order_list(context: ProjectionContext) -> ProjectionSetup:
    """Every order's status, kept in memory (rebuilt from the log at start)."""
    board = OrderStatusBoard()

    async def orders(params: Mapping[str, str]) -> dict[str, Any]:
        status = params.get("status")
        return {
            order: state
            for order, state in sorted(board.statuses.items())
            if status is None or state == status
        }

    return ProjectionSetup(handler=board, queries={"orders": orders})


plugin = Plugin(
    name="orders",
    description="Order processing as vertical slices; an order list; stock reservation; digital orders ship themselves.",
    events=order_registry(),
    commands=[
        CommandBinding(decider=order_decider),
        # Stock is reserved by the reserve-inventory automation only, never over HTTP.
        CommandBinding(decider=inventory_decider, internal={ReserveStock}),
    ],
    projections=[ProjectionDefinition(name="order-list", setup=order_list)],
    reactors={"ship-digital": ship_digital_orders, "reserve-inventory": reserve_inventory},
)
