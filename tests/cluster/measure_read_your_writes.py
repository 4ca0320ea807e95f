"""Measure read-your-writes on both nodes of a two-node cluster (not a test).

Two engines in one process on a real PostgreSQL (store, locks) and nats-server (bus), the
bank plugin's SQL balances. Each round sends a deposit to one node (alternately), then
runs the balance query with ``wait_for_position`` on one node (the one whose runner is
active or the standby, every writer/reader pair in turn) and records how long the query
took, the command excluded. Prints percentiles per reading node.

    .venv/bin/python -m tests.cluster.measure_read_your_writes [rounds]
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path

import trio

from engine.daemon.engine import Engine, open_engine
from tests.cluster.test_read_models_on_every_node import RUNNER, node_config, wait_state
from tests.conftest import NatsTarget, PgTarget
from tests.daemon.test_sql_read_models import _bank
from tests.servers import run_nats, run_postgres


def _percentiles(samples: list[float]) -> str:
    ordered = sorted(samples)
    pick = [ordered[int(q * (len(ordered) - 1))] * 1000 for q in (0.5, 0.95, 0.99)]
    return "p50 {:.2f} ms, p95 {:.2f} ms, p99 {:.2f} ms, max {:.2f} ms".format(
        *pick, max(ordered) * 1000
    )


async def _query(engine: Engine, position: int) -> float:
    started = trio.current_time()
    answer = await engine.run_query(
        "bank", "balance", {"account": "acc", "wait_for_position": str(position)}
    )
    assert answer["account"] == "acc"
    return trio.current_time() - started


async def measure(rounds: int, pg: PgTarget, nats: NatsTarget, folder: Path) -> None:
    """Run ``rounds`` rounds and print the query latencies on each node."""
    plugin = _bank(1)
    async with open_engine(node_config(folder, "a", pg, nats), plugins=[plugin]) as a:
        await wait_state(a, RUNNER, "live")
        async with open_engine(node_config(folder, "b", pg, nats), plugins=[plugin]) as b:
            await wait_state(b, RUNNER, "standby")
            await a.send_command(
                "bank", "OpenAccount", stream_id="acc", data={"initial_balance": 1}, command_id=None
            )
            active: list[float] = []
            standby: list[float] = []
            for n in range(rounds):
                result = await (a, b)[n % 2].send_command(
                    "bank", "Deposit", stream_id="acc", data={"amount": 1}, command_id=None
                )
                position = int(result["events"][-1]["position"])
                # Every combination of writer and reader node, in turn.
                reader, samples = ((a, active), (b, standby))[(n // 2) % 2]
                samples.append(await _query(reader, position))
    print(f"{rounds} rounds, read-your-writes query right after the command:")
    print(f"  active node:  {_percentiles(active)}")
    print(f"  standby node: {_percentiles(standby)}")
    print(
        f"  mean active {statistics.mean(active) * 1000:.2f} ms, "
        f"standby {statistics.mean(standby) * 1000:.2f} ms"
    )


def main() -> None:
    """Start the servers, measure, stop them."""
    import psycopg

    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    with (
        run_postgres() as postgres,
        run_nats() as nats_server,
        tempfile.TemporaryDirectory() as tmp,
    ):
        with psycopg.connect(postgres.dsn, autocommit=True) as conn:
            conn.execute('CREATE SCHEMA "measure"')
        pg = PgTarget(postgres.dsn, "measure")
        nats = NatsTarget(nats_server.url, "MEASURE")
        trio.run(measure, rounds, pg, nats, Path(tmp))


if __name__ == "__main__":
    main()
