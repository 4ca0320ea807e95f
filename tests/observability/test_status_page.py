"""The status page in a real headless Chromium, against a running engine."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from engine.daemon.engine import Engine, open_engine
from tests.daemon.test_engine import config_for, http
from tests.observability.browser import Browser, open_chromium

#: Accounts opened in the burst (besides three digital orders).
BURST = 24
#: Opening balances: those of 1000 or more earn a welcome bonus (a Deposit).
BALANCES = [500 + 100 * n for n in range(BURST)]
BONUSES = sum(1 for balance in BALANCES if balance >= 1000)


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[Engine]:
    async with open_engine(config_for(tmp_path, engine={"node_id": "node-s"})) as running:
        yield running


@pytest.fixture
async def browser(tmp_path: Path) -> AsyncIterator[Browser]:
    async with open_chromium(tmp_path / "chromium-profile") as running:
        yield running


async def burst(base: str) -> None:
    """Send ``BURST`` accounts and a few digital orders, concurrently."""

    async def open_account(n: int) -> None:
        status, body = await http(
            f"{base}/commands/bank/OpenAccount",
            method="POST",
            body={"stream_id": f"acc-{n}", "data": {"initial_balance": BALANCES[n]}},
        )
        assert status == 200, body

    async def digital_order(n: int) -> None:
        for command, data in [
            ("CreateOrder", {"customer_id": f"c-{n}", "digital": True}),
            ("AddItem", {"sku": "ebook", "quantity": 1, "unit_price": 900}),
            ("SubmitOrder", {}),
        ]:
            status, body = await http(
                f"{base}/commands/orders/{command}",
                method="POST",
                body={"stream_id": f"order-{n}", "data": data},
            )
            assert status == 200, body

    async with trio.open_nursery() as nursery:
        for n in range(BURST):
            nursery.start_soon(open_account, n)
        for n in range(3):
            nursery.start_soon(digital_order, n)


RUNNERS = [
    "bank.balances",
    "bank.welcome-bonus",
    "orders.order-list",
    "orders.reserve-inventory",
    "orders.ship-digital",
]


async def test_the_status_page_shows_the_engine_live(
    engine: Engine, browser: Browser, tmp_path: Path
) -> None:
    """The page shows runners and the example plugins' event model, and lag back at zero
    after a burst of commands; a screenshot is kept."""
    base = engine.http_urls[0]
    page = await browser.open_page(f"{base}/status?refresh=250")
    with trio.fail_after(20):
        rows = await page.wait_for(
            f"document.querySelectorAll('tr[data-runner]').length === {len(RUNNERS)} && "
            "[...document.querySelectorAll('tr[data-runner]')].map(r => r.dataset.runner)"
        )
    assert rows == RUNNERS
    nodes = await page.evaluate(
        "[...document.querySelectorAll('#model-svg g.node')].map(g => g.dataset.node)"
    )
    assert {
        "command:bank.OpenAccount",
        "command:bank.Deposit",
        "event:bank.AccountOpened",
        "event:bank.MoneyDeposited",
        "projection:bank.balances",
        "automation:bank.welcome-bonus",
        "command:orders.ShipOrder",
        "event:orders.OrderSubmitted",
        "projection:orders.order-list",
        "automation:orders.ship-digital",
    } <= set(nodes)
    labels = await page.evaluate("document.getElementById('model-svg').textContent")
    assert "OpenAccount" in labels
    assert "welcome-bonus" in labels

    await burst(base)
    # Each account, each bonus the automation pays, and 3 orders of 3 events each
    # shipped by the other automation.
    head = BURST + BONUSES + 3 * 4
    with trio.fail_after(20):
        await page.wait_for(
            f"Number(document.body.dataset.head) === {head} && "
            "[...document.querySelectorAll('tr[data-runner]')].every(r => "
            f"r.dataset.lag === '0' && Number(r.dataset.checkpoint) === {head})"
        )
        # The automations' edges were learned from the burst and drawn solid.
        counts = await page.wait_for(
            "(() => { const c = {}; for (const p of document.querySelectorAll("
            "'#model-svg path.edge.observed')) c[p.dataset.from + ' ' + p.dataset.kind + ' ' + "
            "p.dataset.to] = Number(p.dataset.count); "
            "return c['automation:orders.ship-digital sends command:orders.ShipOrder'] === 3 "
            "&& c; })()"
        )
    assert counts["command:bank.OpenAccount emits event:bank.AccountOpened"] == BURST
    assert counts["event:bank.AccountOpened triggers automation:bank.welcome-bonus"] == BONUSES
    assert counts["automation:bank.welcome-bonus sends command:bank.Deposit"] == BONUSES
    assert await engine.store.head_position() == head
    lags = await page.evaluate(
        "[...document.querySelectorAll('tr[data-runner] td.lag')].map(td => td.textContent)"
    )
    assert lags == ["0"] * len(RUNNERS)
    operations = await page.evaluate(
        "[...document.querySelectorAll('tr[data-operation]')].map(r => r.dataset.operation)"
    )
    assert {"command.OpenAccount", "store.append", "store.read_all"} <= set(operations)
    leases = await page.evaluate(
        "[...document.querySelectorAll('tr[data-lock]')].map(r => r.dataset.lock)"
    )
    # The bank's balances live in the SQLite file (durable): their runner holds a lease.
    assert leases == [
        "runner/bank.balances",
        "runner/bank.welcome-bonus",
        "runner/orders.reserve-inventory",
        "runner/orders.ship-digital",
    ]

    status, _ = await http(
        f"{base}/commands/bank/Deposit",
        method="POST",
        body={"stream_id": "nobody", "data": {"amount": 5}},
    )
    assert status == 422
    with trio.fail_after(20):
        await page.wait_for("document.getElementById('errors').textContent.includes('nobody')")

    shot = await page.screenshot(tmp_path / "status-page.png")
    print(f"status page screenshot: {shot}")
    assert shot.stat().st_size > 10_000
    assert page.errors == []
