"""The engine in-process: plugins, runners and the HTTP ingress over a real socket."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from engine.daemon.config import Config, parse_config
from engine.daemon.engine import Engine, open_engine
from engine.daemon.plugins import load_plugins
from engine.errors import PluginError


def request(
    url: str, *, method: str = "GET", body: Any = None, raw: bytes | None = None, token: str = ""
) -> tuple[int, Any]:
    """One HTTP request with the standard library; returns (status, parsed JSON or text)."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(url, data=data, method=method)
    if token:
        req.add_header("authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as response:
            status, payload = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, payload = error.code, error.read()
    try:
        return status, json.loads(payload)
    except ValueError:
        return status, payload.decode()


async def http(url: str, **kwargs: Any) -> tuple[int, Any]:
    return await trio.to_thread.run_sync(lambda: request(url, **kwargs))


def config_for(tmp_path: Path, **sections: dict[str, Any]) -> Config:
    document: dict[str, Any] = {
        "engine": {"data_dir": str(tmp_path / "data"), "node_id": "test-node"},
        "http": {"port": 0},
        "runners": {"poll_interval": 0.5},
    }
    for name, values in sections.items():
        document.setdefault(name, {}).update(values)
    return parse_config(document, environ={})


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[Engine]:
    async with open_engine(config_for(tmp_path, http={"max_body_bytes": 4096})) as running:
        yield running


async def wait_for(engine: Engine, runner: str) -> None:
    head = await engine.store.head_position()
    with trio.fail_after(10):
        await engine.runners[runner].wait_caught_up(head)


async def test_command_in_projection_out(engine: Engine) -> None:
    """A command sent over HTTP is stored, projected, and triggers its automation."""
    base = engine.http_urls[0]
    status, body = await http(
        f"{base}/commands/bank/OpenAccount",
        method="POST",
        body={"stream_id": "acc-1", "data": {"initial_balance": 1000}, "command_id": "c1"},
    )
    assert status == 200
    assert body["version"] == 1
    assert body["state"] == {"exists": True, "balance": 1000}
    assert body["events"][0]["type"] == "bank.AccountOpened"
    await wait_for(engine, "bank.welcome-bonus")
    head = await engine.store.head_position()
    status, body = await http(f"{base}/queries/bank/balance?account=acc-1&wait_for_position={head}")
    assert (status, body) == (200, {"account": "acc-1", "balance": 1010})
    status, again = await http(
        f"{base}/commands/bank/OpenAccount",
        method="POST",
        body={"stream_id": "acc-1", "data": {"initial_balance": 1000}, "command_id": "c1"},
    )
    assert status == 200
    assert again["duplicate"] is True
    status, stream = await http(f"{base}/streams/acc-1")
    assert [e["type"] for e in stream["events"]] == ["bank.AccountOpened", "bank.MoneyDeposited"]
    status, log = await http(f"{base}/events?after=1&limit=5")
    assert log["head"] == 2
    assert [e["position"] for e in log["events"]] == [2]


@pytest.mark.parametrize(
    ("method", "path", "raw", "status", "code"),
    [
        ("POST", "/commands/bank/Deposit", b"{not json", 400, "bad_json"),
        ("POST", "/commands/bank/Deposit", b"[1, 2]", 400, "bad_request"),
        ("POST", "/commands/bank/Deposit", b'{"stream_id": 5}', 400, "bad_request"),
        (
            "POST",
            "/commands/bank/Deposit",
            b'{"stream_id": "a", "data": {"amount": -1}}',
            400,
            "codec_error",
        ),
        (
            "POST",
            "/commands/bank/Deposit",
            b'{"stream_id": "a", "data": {"amount": 1, "x": 1}}',
            400,
            "codec_error",
        ),
        ("POST", "/commands/bank/Deposit", b'{"data": {"amount": 1}}', 400, "stream_id_required"),
        (
            "POST",
            "/commands/bank/Deposit",
            b'{"stream_id": "", "data": {"amount": 1}}',
            400,
            "invalid_stream_id",
        ),
        (
            "POST",
            "/commands/bank/Deposit",
            b'{"stream_id": "nobody", "data": {"amount": 1}}',
            422,
            "account_not_found",
        ),
        ("POST", "/commands/bank/Nope", b"{}", 404, "unknown_command"),
        ("POST", "/commands/nope/Deposit", b"{}", 404, "unknown_plugin"),
        ("GET", "/queries/bank/nope", None, 404, "unknown_query"),
        ("GET", "/queries/bank/balance?account=ghost", None, 404, "not_found"),
        ("GET", "/commands/bank/Deposit", None, 405, "method_not_allowed"),
        ("GET", "/streams/a?limit=5000", None, 400, "bad_parameter"),
        ("GET", "/nowhere", None, 404, "not_found"),
        ("POST", "/commands/bank/Deposit", b'{"pad": "' + b"x" * 5000 + b'"}', 413, "too_large"),
    ],
)
async def test_bad_requests_get_4xx_and_the_engine_keeps_serving(
    engine: Engine, method: str, path: str, raw: bytes | None, status: int, code: str
) -> None:
    """Each kind of bad input gets its status and stable code; the next request works."""
    base = engine.http_urls[0]
    got, body = await http(base + path, method=method, raw=raw)
    assert (got, body["error"]["code"]) == (status, code), body
    assert (await http(f"{base}/health/live"))[0] == 200


async def test_bearer_token(tmp_path: Path) -> None:
    """With a token, requests without it get 401; liveness stays open."""
    async with open_engine(config_for(tmp_path, http={"token": "s3cret"})) as running:
        base = running.http_urls[0]
        assert (await http(f"{base}/runners"))[0] == 401
        assert (await http(f"{base}/runners", token="wrong"))[0] == 401
        assert (await http(f"{base}/runners", token="s3cret"))[0] == 200
        assert (await http(f"{base}/health/live"))[0] == 200


async def test_readiness_metrics_and_runners(engine: Engine) -> None:
    """Readiness reports every runner; metrics are Prometheus text."""
    base = engine.http_urls[0]
    for name in engine.runners:
        await wait_for(engine, name)
    status, ready = await http(f"{base}/health/ready")
    assert status == 200
    assert set(ready["runners"]) == {
        "bank.balances",
        "bank.welcome-bonus",
        "orders.order-list",
        "orders.reserve-inventory",
        "orders.ship-digital",
    }
    status, metrics = await http(f"{base}/metrics")
    assert status == 200
    assert 'eskit_runner_lag{runner="bank.balances"} 0' in metrics


async def test_digital_orders_ship_through_the_engine(engine: Engine) -> None:
    """The orders plugin's automation ships a digital order in the running engine."""
    base = engine.http_urls[0]
    for command, data in [
        ("CreateOrder", {"customer_id": "c-1", "digital": True}),
        ("AddItem", {"sku": "ebook", "quantity": 1, "unit_price": 900}),
        ("SubmitOrder", {}),
    ]:
        status, body = await http(
            f"{base}/commands/orders/{command}",
            method="POST",
            body={"stream_id": "order-9", "data": data},
        )
        assert status == 200, body
    with trio.fail_after(10):
        while (await engine.store.stream_version("order-9")) < 4:
            await engine.runners["orders.ship-digital"].wait_caught_up()
    await wait_for(engine, "orders.order-list")
    status, orders = await http(f"{base}/queries/orders/orders?status=shipped")
    assert orders == {"order-9": "shipped"}


def test_plugin_errors_name_the_plugin() -> None:
    """Missing or broken plugins raise PluginError naming them."""
    with pytest.raises(PluginError, match="ghost"):
        load_plugins(["ghost"])
    with pytest.raises(PluginError, match="no_such_module"):
        load_plugins([], modules=["no_such_module:plugin"])
    with pytest.raises(PluginError, match=r"not an engine\.Plugin"):
        load_plugins([], modules=["json:decoder"])
    with pytest.raises(PluginError, match="failed to build"):
        load_plugins([], modules=["json:dumps"])


async def test_submitted_orders_reserve_stock_through_the_engine(engine: Engine) -> None:
    """The reservation automation reserves a parcel order's stock in the running engine."""
    base = engine.http_urls[0]
    for stream_id, command, data in [
        ("inventory-book", "Restock", {"quantity": 3}),
        ("order-1", "CreateOrder", {"customer_id": "c-1"}),
        ("order-1", "AddItem", {"sku": "book", "quantity": 2, "unit_price": 900}),
        ("order-1", "SubmitOrder", {}),
    ]:
        status, body = await http(
            f"{base}/commands/orders/{command}",
            method="POST",
            body={"stream_id": stream_id, "data": data},
        )
        assert status == 200, body
    with trio.fail_after(10):
        while (await engine.store.stream_version("inventory-book")) < 2:
            await engine.runners["orders.reserve-inventory"].wait_caught_up()
    status, stream = await http(f"{base}/streams/inventory-book")
    assert [e["type"] for e in stream["events"]] == [
        "inventory.Restocked",
        "inventory.StockReserved",
    ]
    assert stream["events"][1]["data"] == {"order_id": "order-1", "quantity": 2}
