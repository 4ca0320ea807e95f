"""dcb.events example: consecutive invoice numbers with no gaps, under concurrency.

The next number is one more than the last ``InvoiceCreated``; the append condition on
that event type makes two writers that read the same last number conflict, and the
loser decides again with the new number. No sequence, no lock, no gap.
"""

from __future__ import annotations

from typing import Any

import attrs
import trio

from engine.codec import Codec, EventRegistry
from engine.dcb.base import DcbEvent, Query
from engine.dcb.handler import DecisionHandler, DecisionModel, DecisionProjection
from engine.testing.dcb import DecisionSpec
from tests.dcb.conftest import DcbOpener


@attrs.frozen
class InvoiceCreated:
    invoice_number: int
    customer: str


@attrs.frozen
class SomethingElseHappened:
    note: str


@attrs.frozen
class CreateInvoice:
    customer: str


def invoice_registry() -> EventRegistry:
    registry = EventRegistry()
    registry.register(InvoiceCreated)
    registry.register(SomethingElseHappened)
    return registry


next_invoice_number: DecisionProjection[int, Any] = DecisionProjection(
    query=Query.of(types=["InvoiceCreated"]),
    initial_state=lambda: 1,
    evolve=lambda number, event: event.invoice_number + 1,
)


def _create(number: int, command: CreateInvoice) -> list[DcbEvent[Any]]:
    return [DcbEvent(InvoiceCreated(number, command.customer), [f"invoice:{number}"])]


create_invoice: DecisionModel[int, CreateInvoice, Any] = DecisionModel(
    projection=lambda command: next_invoice_number, decide=_create
)


def invoice(number: int, customer: str) -> DcbEvent[Any]:
    return DcbEvent(InvoiceCreated(number, customer), [f"invoice:{number}"])


def test_first_invoice_is_number_one() -> None:
    """With no invoice yet, the first gets number 1."""
    DecisionSpec(create_invoice).given().when(CreateInvoice("acme")).then_expect(invoice(1, "acme"))


def test_next_invoice_follows_the_last() -> None:
    """The next number is one more than the last invoice's."""
    DecisionSpec(create_invoice).given(invoice(1, "a"), invoice(2, "b")).when(
        CreateInvoice("c")
    ).then_expect(invoice(3, "c"))


async def test_concurrent_invoices_are_numbered_without_gaps(open_dcb: DcbOpener) -> None:
    """Eight clients creating ten invoices each, beside unrelated writers, number them
    1..80 with no gap and no duplicate."""
    codec: Codec[Any] = Codec(invoice_registry())
    clients, per_client = 8, 10
    conflicts: list[int] = []

    async def clerk(n: int) -> None:
        async with open_dcb(codec) as store:
            handler = DecisionHandler(model=create_invoice, store=store, max_attempts=1000)
            for _ in range(per_client):
                await handler.handle(CreateInvoice(f"customer-{n}"))
            conflicts.append(handler.statistics().conflicts)

    async def bystander() -> None:
        async with open_dcb(codec) as store:
            for n in range(20):
                await store.append([DcbEvent(SomethingElseHappened(str(n)), ["noise"])])

    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(bystander)
            for n in range(clients):
                nursery.start_soon(clerk, n)
    async with open_dcb(codec) as store:
        events, _ = await store.read(Query.of(types=["InvoiceCreated"]))
    numbers = [event.data.invoice_number for event in events]
    assert numbers == list(range(1, clients * per_client + 1))
    assert len(conflicts) == clients
