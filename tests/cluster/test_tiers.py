"""The example plugins run unchanged on all three tiers, each an ``eskit run`` process.

Tier 1: SQLite, in-process bus and locks. Tier 2: PostgreSQL store with a read DSN,
NATS bus, PostgreSQL locks. NATS-only: JetStream store, NATS bus and NATS locks, on the engine's
embedded nats-server, which must also survive the engine being killed with SIGKILL.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.cluster.client import HttpConnection
from tests.cluster.nodes import Node, write_config
from tests.conftest import NatsTarget, PgTarget
from tests.servers import free_port

READ_ONLY = "?options=-c%20default_transaction_read_only%3Don"


def tier_sections(tier: str, pg: PgTarget, nats: NatsTarget) -> dict[str, dict[str, Any]]:
    """The config sections that make ``tier`` (what docs/deployment.md shows)."""
    if tier == "tier-1":
        return {}
    if tier == "tier-2":
        return {
            "store": {
                "backend": "postgres",
                "dsn": pg.dsn,
                # The "replica" is the same server with read-only sessions: a write
                # sent to it would fail, so this checks where the store sends what.
                "read_dsn": pg.dsn + READ_ONLY,
                "schema": pg.schema,
                "pool_size": 4,
                "min_pool_size": 2,
                "read_pool_size": 3,
            },
            "nats": {"url": nats.url},
            "bus": {"backend": "nats"},
            "locks": {"backend": "postgres", "ttl": 5},
        }
    assert tier == "nats-only"
    return {
        "store": {"backend": "nats", "namespace": nats.namespace},
        "nats": {"embedded": True},
        "bus": {"backend": "nats"},
        "locks": {"backend": "nats", "ttl": 5},
    }


async def post(connection: HttpConnection, command: str, body: dict[str, Any]) -> Any:
    """POST a command (``plugin/Command``) and return the result (asserting 200)."""
    status, answer = await connection.request("POST", f"/commands/{command}", body)
    assert status == 200, (command, status, answer)
    return answer


async def wait_for_version(connection: HttpConnection, stream_id: str, version: int) -> Any:
    """Wait until ``stream_id`` has ``version`` events (an automation appends them)."""
    with trio.fail_after(30):
        while True:
            status, body = await connection.request("GET", f"/streams/{stream_id}")
            if status == 200 and len(body["events"]) >= version:
                return body["events"][version - 1]
            # The automation runs in the engine process: nothing to wait on from here.
            await trio.sleep(0.05)


async def exercise_examples(connection: HttpConnection) -> None:
    """Bank and orders, each with its projection and automation."""
    await post(
        connection, "bank/OpenAccount", {"stream_id": "acc-1", "data": {"initial_balance": 1500}}
    )
    bonus = await wait_for_version(connection, "acc-1", 2)
    assert bonus["type"] == "bank.MoneyDeposited"
    status, balance = await connection.request(
        "GET", f"/queries/bank/balance?account=acc-1&wait_for_position={bonus['position']}"
    )
    assert (status, balance) == (200, {"account": "acc-1", "balance": 1510})

    order = {"stream_id": "o-1"}
    await post(
        connection, "orders/CreateOrder", {**order, "data": {"customer_id": "c-1", "digital": True}}
    )
    await post(
        connection,
        "orders/AddItem",
        {**order, "data": {"sku": "ebook", "quantity": 1, "unit_price": 900}},
    )
    await post(connection, "orders/SubmitOrder", {**order, "data": {}})
    shipped = await wait_for_version(connection, "o-1", 4)
    status, orders = await connection.request(
        "GET", f"/queries/orders/orders?wait_for_position={shipped['position']}"
    )
    assert (status, orders) == (200, {"o-1": "shipped"})


@pytest.mark.parametrize("tier", ["tier-1", "tier-2", "nats-only"])
async def test_example_plugins_on_every_tier(
    tmp_path: Path, pg: PgTarget, nats: NatsTarget, tier: str
) -> None:
    """The bank and orders plugins work the same on each tier; a SIGKILLed engine
    restarts on its data (on NATS-only, replacing the embedded server it left behind)."""
    port = free_port()
    sections = {
        "engine": {"node_id": "solo", "data_dir": str(tmp_path / "data"), "grace_period": 5},
        **tier_sections(tier, pg, nats),
        "http": {"port": port},
        "plugins": {"enabled": ["bank", "orders"]},
        "runners": {"poll_interval": 0.2},
    }
    config = write_config(tmp_path / "eskit.toml", sections)
    node = Node("solo", config, port, tmp_path / "solo.log", {"ESKIT_LOG_LEVEL": "WARNING"})
    connection = HttpConnection(node.url)
    try:
        await node.start()
        await exercise_examples(connection)
        node.kill()
        assert node.process is not None
        await node.process.wait()
        await connection.aclose()
        await node.start()
        status, stream = await connection.request("GET", "/streams/acc-1")
        assert status == 200
        assert [e["version"] for e in stream["events"]] == [1, 2]
        await post(connection, "bank/Deposit", {"stream_id": "acc-1", "data": {"amount": 5}})
        if tier == "nats-only":
            pid_file = tmp_path / "data" / "nats" / "nats-server.pid"
            assert pid_file.exists()
            assert "stopping a stale nats-server" in node.log_tail(20000)
    finally:
        await connection.aclose()
        assert await node.stop() == 0, node.log_tail()
    if tier == "nats-only":
        assert not embedded_server_running(tmp_path / "data")


def embedded_server_running(data_dir: Path) -> bool:
    """Whether the embedded nats-server of ``data_dir`` still runs (by its pid file)."""
    pid = int((data_dir / "nats" / "nats-server.pid").read_text())
    return os.path.exists(f"/proc/{pid}")
