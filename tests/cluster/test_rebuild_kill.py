"""An engine process killed (SIGKILL) in the middle of a rebuild: the half-built version
is never built into again, and the read model stays equal to its fold of the log."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio

from tests.cluster.client import HttpConnection
from tests.cluster.nodes import Node, write_config
from tests.servers import free_port

RUNNER = "bank.balances"
ACCOUNTS = 10


async def _request(node: Node, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    connection = HttpConnection(node.url)
    try:
        return await connection.request(method, path, body)
    finally:
        await connection.aclose()


async def _balances(node: Node) -> dict[str, int]:
    """Every account's balance as the node answers it (read-your-writes at the head)."""
    status, log = await _request(node, "GET", "/events?after=0&limit=1")
    assert status == 200, log
    found = {}
    for n in range(ACCOUNTS):
        status, body = await _request(
            node,
            "GET",
            f"/queries/bank/balance?account=acc-{n}&wait_for_position={log['head']}",
        )
        assert status == 200, body
        found[f"acc-{n}"] = body["balance"]
    return found


async def _rebuild(node: Node) -> int:
    """Start a rebuild; return the version it builds."""
    status, started = await _request(node, "POST", f"/projections/{RUNNER}/rebuild", {})
    assert status == 202, started
    return int(started["version"])


async def _rebuild_status(node: Node) -> dict[str, Any]:
    status, runners = await _request(node, "GET", "/runners")
    assert status == 200, runners
    return dict(runners[RUNNER]["rebuild"] or {})


async def test_an_engine_killed_mid_rebuild_never_builds_into_that_version_again(
    tmp_path: Path,
) -> None:
    """Kill the engine while version 2 is half built: after the restart version 1 still
    answers, exactly; the next rebuild builds version 3 (not 2 again) and switches to
    it; a restart after that serves version 3, exactly."""
    port = free_port()
    config = write_config(
        tmp_path / "node.toml",
        {
            "engine": {"node_id": "k", "data_dir": str(tmp_path / "k")},
            "http": {"port": port},
            "plugins": {
                "enabled": ["bank"],
                "modules": ["tests.cluster.slow_rebuild_plugin:plugin"],
            },
            "runners": {"poll_interval": 0.2, "batch_size": 1},
        },
    )
    node = Node("k", config, port, tmp_path / "k.log", env={})
    expected = {f"acc-{n}": 0 for n in range(ACCOUNTS)}
    connection = HttpConnection(node.url)
    try:
        await node.start()
        for n in range(200):
            account = f"acc-{n % ACCOUNTS}"
            command, field = (
                ("OpenAccount", "initial_balance") if n < ACCOUNTS else ("Deposit", "amount")
            )
            status, body = await connection.request(
                "POST", f"/commands/bank/{command}", {"stream_id": account, "data": {field: n}}
            )
            assert status == 200, body
            expected[account] += n
        await connection.aclose()
        assert await _balances(node) == expected
        assert await _rebuild(node) == 2
        with trio.fail_after(30):
            while True:  # until the rebuild is well under way, not done
                rebuild = await _rebuild_status(node)
                if rebuild["done"] >= 20:
                    break
                await trio.sleep(0.01)
        assert rebuild["state"] == "running", rebuild
        node.kill()
        assert node.process is not None
        await node.process.wait()

        await node.start()
        status, runners = await _request(node, "GET", "/runners")
        assert runners[RUNNER]["version"] == 1
        assert await _balances(node) == expected
        assert await _rebuild(node) == 3
        with trio.fail_after(60):
            while True:
                if (await _rebuild_status(node))["state"] != "running":
                    break
                await trio.sleep(0.05)
        assert (await _rebuild_status(node))["state"] == "done"
        assert await _balances(node) == expected
        assert await node.stop() == 0

        await node.start()
        status, runners = await _request(node, "GET", "/runners")
        assert runners[RUNNER]["version"] == 3
        assert await _balances(node) == expected
    finally:
        await connection.aclose()
        await node.stop()
