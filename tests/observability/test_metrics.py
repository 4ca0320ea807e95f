"""A running engine's /metrics, /profiler and /status.json after a known load."""

from __future__ import annotations

import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from engine.daemon.engine import Engine, open_engine
from engine.daemon.plugins import load_plugins
from tests.daemon.test_engine import config_for, http
from tests.observability import probe

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    """Every sample of a Prometheus scrape, keyed by (name, sorted labels)."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def commands(samples: Samples) -> dict[tuple[str, str, str], float]:
    """``eskit_commands_total`` as {(plugin, command, outcome): count}."""
    found = {}
    for (name, labels), value in samples.items():
        if name == "eskit_commands_total":
            plain = dict(labels)
            found[plain["plugin"], plain["command"], plain["outcome"]] = value
    return found


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[Engine]:
    config = config_for(
        tmp_path,
        engine={"node_id": "node-m"},
        store={"backend": "memory"},
        runners={"max_retries": 0},
    )
    async with open_engine(config, plugins=[*load_plugins(None), probe.plugin]) as running:
        yield running


async def send(base: str, plugin: str, command: str, stream_id: str, **body: Any) -> int:
    status, _ = await http(
        f"{base}/commands/{plugin}/{command}",
        method="POST",
        body={"stream_id": stream_id, "data": body.pop("data", {}), **body},
    )
    return status


async def caught_up(engine: Engine) -> int:
    head = await engine.store.head_position()
    with trio.fail_after(10):
        for runner in engine.runners.values():
            await runner.wait_caught_up(head)
    return head


async def test_metrics_count_a_known_load(engine: Engine) -> None:
    """After a known mix of commands, /metrics holds exactly the expected counts."""
    base = engine.http_urls[0]
    statuses = []
    for n in range(4):
        statuses.append(
            await send(base, "bank", "OpenAccount", f"acc-{n}", data={"initial_balance": 100})
        )
    for n in range(2):  # each earns a welcome bonus: one more Deposit, sent by the automation
        statuses.append(
            await send(base, "bank", "OpenAccount", f"big-{n}", data={"initial_balance": 1000})
        )
    for _ in range(2):  # the second is answered from the command id: no new event
        statuses.append(
            await send(
                base, "bank", "OpenAccount", "dup", data={"initial_balance": 5}, command_id="c-1"
            )
        )
    for n in range(3):
        statuses.append(await send(base, "bank", "Deposit", f"ghost-{n}", data={"amount": 5}))
    statuses.append(await send(base, "bank", "Withdraw", "acc-0", data={"amount": 5000}))
    for _ in range(3):
        statuses.append(await send(base, "probe", "Ping", "p-1"))
    statuses.append(await send(base, "probe", "Explode", "p-1"))
    statuses.append(await send(base, "probe", "Refuse", "p-1"))
    statuses.append(await send(base, "probe", "Refuse", "p-1"))
    statuses.append(await send(base, "probe", "Poison", "p-2"))
    assert statuses == [200] * 8 + [422] * 4 + [200] * 3 + [500, 422, 422, 200]
    head = await caught_up(engine)
    assert head == 4 + 2 * 2 + 1 + 3 + 1

    status, text = await http(f"{base}/metrics")
    assert status == 200
    samples = parse(text)
    assert commands(samples) == {
        ("bank", "OpenAccount", "handled"): 8,
        ("bank", "Deposit", "handled"): 2,
        ("bank", "Deposit", "rejected"): 3,
        ("bank", "Withdraw", "rejected"): 1,
        ("probe", "Ping", "handled"): 3,
        ("probe", "Poison", "handled"): 1,
        ("probe", "Explode", "failed"): 1,
        ("probe", "Refuse", "rejected"): 2,
    }
    duration = (("command", "OpenAccount"), ("plugin", "bank"))
    assert samples["eskit_command_duration_seconds_count", duration] == 8
    assert samples["eskit_store_events_appended_total", ()] == head
    assert samples["eskit_store_append_duration_seconds_count", ()] == head  # one per event here
    assert samples["eskit_command_conflicts_total", (("plugin", "bank"),)] == 0
    for name in engine.runners:
        assert samples["eskit_runner_lag", (("runner", name),)] == 0
        assert samples["eskit_runner_checkpoint", (("runner", name),)] == head
        assert samples["eskit_runner_state", (("runner", name), ("state", "live"))] == 1
    assert samples["eskit_runner_parked", (("runner", "probe.pings"),)] == 1
    assert samples["eskit_runner_processed_total", (("runner", "probe.pings"),)] == head
    for key in ("runner/bank.welcome-bonus", "runner/orders.ship-digital"):
        assert samples["eskit_lock_held", (("key", key), ("owner", "node-m"))] == 1
    assert samples["eskit_lock_lost_total", ()] == 0
    assert samples["eskit_bus_published_total", ()] == head
    assert samples["eskit_bus_reconnects_total", ()] == 0
    assert samples["eskit_info", (("node_id", "node-m"), ("version", "0.1.0"))] == 1
    assert samples["eskit_profiler_degraded", (("operation", "command.OpenAccount"),)] == 0
    assert (
        "eskit_profiler_seconds",
        (("operation", "store.append"), ("quantile", "0.95")),
    ) in samples

    status, profiler = await http(f"{base}/profiler")
    assert status == 200
    assert profiler["operations"]["command.OpenAccount"]["count"] == 8
    assert profiler["operations"]["command.Explode"]["errors"] == 1
    assert profiler["operations"]["store.append"]["count"] == head
    assert profiler["degraded"] == []

    status, board = await http(f"{base}/status.json")
    assert status == 200
    assert board["head"] == head
    assert board["parked"]["total"] == 1
    assert board["parked"]["recent"][0]["type"] == "probe.Poisoned"
    kinds = {(e["source"], e["kind"]) for e in board["errors"]["recent"]}
    assert ("command probe.Explode", "failed") in kinds
    assert ("command bank.Deposit", "rejected") in kinds
    assert "hunter2" not in str(board)
    edges = {(e["from"], e["to"], e["kind"]): e["count"] for e in board["model"]["edges"]}
    assert edges["command:bank.OpenAccount", "event:bank.AccountOpened", "emits"] == 7
    assert edges["event:bank.AccountOpened", "automation:bank.welcome-bonus", "triggers"] == 2
    assert edges["automation:bank.welcome-bonus", "command:bank.Deposit", "sends"] == 2
    assert edges["event:probe.Pinged", "projection:probe.pings", "reads"] is None


async def test_each_engine_has_its_own_registry(tmp_path: Path) -> None:
    """A second engine in the same process starts from zero (no global registry)."""
    for run in range(2):
        config = config_for(tmp_path / str(run), store={"backend": "memory"})
        async with open_engine(config) as engine:
            base = engine.http_urls[0]
            assert await send(base, "bank", "OpenAccount", "a", data={"initial_balance": 1}) == 200
            samples = parse((await http(f"{base}/metrics"))[1])
            assert commands(samples) == {("bank", "OpenAccount", "handled"): 1}


def head_request(url: str, token: str = "") -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url)
    if token:
        request.add_header("authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


async def test_status_page_and_token(tmp_path: Path) -> None:
    """The page needs no token and is locked down by its CSP; its data needs the token."""
    config = config_for(tmp_path, store={"backend": "memory"}, http={"token": "s3cret"})
    async with open_engine(config) as engine:
        base = engine.http_urls[0]
        status, headers, body = await trio.to_thread.run_sync(head_request, f"{base}/status")
        assert status == 200
        assert headers["content-type"] == "text/html; charset=utf-8"
        assert "default-src 'none'" in headers["content-security-policy"]
        assert b"status.json" in body
        assert b"s3cret" not in body
        for path in ("/status.json", "/profiler", "/metrics"):
            assert (await trio.to_thread.run_sync(head_request, base + path))[0] == 401
            assert (await trio.to_thread.run_sync(head_request, base + path, "s3cret"))[0] == 200
