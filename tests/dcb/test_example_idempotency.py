"""dcb.events example: preventing duplicate records with an idempotency token.

A client sends a token with each order; the order event is tagged with it, and placing
an order checks that no event carries the token yet. Re-submitting a form (or a retry
after a lost reply) cannot create a second order. Separately, the store itself treats
re-appending the same event ids as a retry of the same append.
"""

from __future__ import annotations

from typing import Any

import attrs
import trio

from engine.codec import Codec, EventRegistry
from engine.dcb.base import AppendCondition, DcbEvent, Query
from engine.dcb.handler import DecisionHandler, DecisionModel, DecisionProjection
from engine.errors import DomainError
from engine.testing.dcb import DecisionSpec
from tests.dcb.conftest import DcbOpener


@attrs.frozen
class OrderPlaced:
    order_id: str
    idempotency_token: str


@attrs.frozen
class PlaceOrder:
    order_id: str
    idempotency_token: str


def order_registry() -> EventRegistry:
    registry = EventRegistry()
    registry.register(OrderPlaced)
    return registry


def token_used(token: str) -> DecisionProjection[bool, Any]:
    return DecisionProjection(
        query=Query.of(types=["OrderPlaced"], tags=[f"idempotency:{token}"]),
        initial_state=lambda: False,
        evolve=lambda used, event: True,
    )


def _place(used: bool, command: PlaceOrder) -> list[DcbEvent[Any]]:
    if used:
        raise DomainError("Re-submission")
    return [placed(command.order_id, command.idempotency_token)]


place_order: DecisionModel[bool, PlaceOrder, Any] = DecisionModel(
    projection=lambda command: token_used(command.idempotency_token), decide=_place
)


def placed(order_id: str, token: str) -> DcbEvent[Any]:
    return DcbEvent(OrderPlaced(order_id, token), [f"order:{order_id}", f"idempotency:{token}"])


def test_place_an_order() -> None:
    """An order with a fresh token is placed."""
    DecisionSpec(place_order).given().when(PlaceOrder("o1", "tok-1")).then_expect(
        placed("o1", "tok-1")
    )


def test_resubmission_is_refused() -> None:
    """A second order with a used token is refused."""
    DecisionSpec(place_order).given(placed("o1", "tok-1")).when(
        PlaceOrder("o2", "tok-1")
    ).then_error("Re-submission")


async def test_double_submit_places_one_order(open_dcb: DcbOpener) -> None:
    """Five concurrent submissions with one token place exactly one order."""
    codec: Codec[Any] = Codec(order_registry())
    outcomes: list[str] = []

    async def submit(n: int) -> None:
        async with open_dcb(codec) as store:
            handler = DecisionHandler(model=place_order, store=store, max_attempts=50)
            try:
                await handler.handle(PlaceOrder(f"o{n}", "tok-1"))
                outcomes.append("placed")
            except DomainError as exc:
                outcomes.append(str(exc))

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for n in range(5):
                nursery.start_soon(submit, n)
    assert sorted(outcomes) == ["Re-submission"] * 4 + ["placed"]


async def test_retrying_an_append_returns_the_original_position(open_dcb: DcbOpener) -> None:
    """A retried append (same event ids) is answered with the first position, even though
    its own events now fail the condition, and nothing is stored twice."""
    codec: Codec[Any] = Codec(order_registry())
    event = placed("o1", "tok-1")
    condition = AppendCondition(Query.of(tags=["idempotency:tok-1"]))
    async with open_dcb(codec) as store:
        first = await store.append([event], condition)
        await store.append([placed("o2", "tok-2")])
        retried = await store.append([event], condition)
        events, _ = await store.read(Query.of(types=["OrderPlaced"]))
    assert retried == first
    assert [e.data.order_id for e in events] == ["o1", "o2"]
