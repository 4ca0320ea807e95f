"""The three-node scenario: shared PostgreSQL and NATS, round-robin commands, a SIGKILL.

Used by the bounded test (small load) and the slow soak (larger load). Nothing here
asserts on time; the figures it measures (commands per second, failover time) are
returned for the test to print.
"""

from __future__ import annotations

import collections
import itertools
import uuid
from pathlib import Path
from typing import Any

import attrs
import psycopg
import trio

from tests.cluster.audit_plugin import DSN_VARIABLE, SCHEMA_VARIABLE
from tests.cluster.client import HttpConnection, NodeDown
from tests.cluster.nodes import Node, write_config
from tests.conftest import NatsTarget, PgTarget
from tests.servers import free_port

#: Runners that hold a lease: each must be active on exactly one node.
DURABLE_RUNNERS = ("audit.audit", "bank.welcome-bonus")
ACTIVE = ("live", "catching_up", "retrying")
#: Accounts opened with this much get the bank plugin's welcome bonus (an automation).
BONUS_THRESHOLD = 1000
BONUS = 10
#: Attempts per command before the scenario gives up on it.
MAX_ATTEMPTS = 50


@attrs.frozen(kw_only=True)
class Load:
    """How much work the scenario sends."""

    streams: int
    deposits_before_kill: int
    deposits_after_kill: int
    workers: int
    lease_ttl: float = 2.0
    routing: bool = True


@attrs.define
class Figures:
    """What the scenario measured and counted."""

    commands: int = 0
    first_phase_commands: int = 0
    first_phase_seconds: float = 0.0
    retries: collections.Counter[str] = attrs.field(factory=collections.Counter)
    runner_failover_seconds: float = 0.0
    duplicates: int = 0
    forwarded: int = 0
    served: int = 0
    audit_redeliveries: int = 0

    @property
    def commands_per_second(self) -> float:
        """Commands per second across the three nodes before the kill."""
        return self.first_phase_commands / max(self.first_phase_seconds, 1e-9)


def cluster_config(
    tmp_path: Path,
    name: str,
    *,
    pg: PgTarget,
    nats: NatsTarget,
    locks: str,
    ttl: float,
    routing: bool = True,
) -> tuple[Path, int]:
    """A tier-2 node's config: PostgreSQL store, NATS bus, shared locks, routing on."""
    port = free_port()
    config = write_config(
        tmp_path / f"{name}.toml",
        {
            "engine": {"node_id": name, "data_dir": str(tmp_path / name), "grace_period": 5},
            "store": {
                "backend": "postgres",
                "dsn": pg.dsn,
                "schema": pg.schema,
                "namespace": nats.namespace,
                "pool_size": 4,
            },
            "nats": {"url": nats.url},
            "bus": {"backend": "nats"},
            "locks": {"backend": locks, "ttl": ttl},
            "cluster": {
                "routing": routing,
                "forward_timeout": 2.0,
                "idle_release": 5.0,
                "take_timeout": 0.5,
            },
            "http": {"port": port},
            "plugins": {
                "enabled": ["bank", "audit"],
                "modules": ["tests.cluster.audit_plugin:plugin"],
            },
            "runners": {"poll_interval": 0.2, "batch_size": 200},
        },
    )
    return config, port


@attrs.define(eq=False)
class Client:
    """Sends commands round-robin to the nodes, retrying with the same command id."""

    nodes: list[Node]
    figures: Figures
    _turn: itertools.count[int] = attrs.field(factory=itertools.count)

    async def send(
        self,
        connections: dict[str, HttpConnection],
        command: str,
        stream_id: str,
        data: dict[str, Any],
    ) -> dict[str, Any]:
        """Send one command until a node answers 200 (same command id on every try)."""
        command_id = uuid.uuid4().hex
        body = {"stream_id": stream_id, "data": data, "command_id": command_id}
        last: object = None
        for _ in range(MAX_ATTEMPTS):
            node = self.nodes[next(self._turn) % len(self.nodes)]
            try:
                status, answer = await connections[node.name].request(
                    "POST", f"/commands/bank/{command}", body
                )
            except NodeDown as exc:
                self.figures.retries["node_down"] += 1
                last = exc
                continue
            if status == 200:
                self.figures.commands += 1
                self.figures.duplicates += bool(answer["duplicate"])
                return dict(answer)
            code = answer["error"]["code"]
            if status == 504:
                assert answer["error"]["command_id"] == command_id
            if status in (503, 504) or code in ("retries_exhausted",):
                self.figures.retries[code] += 1
                last = (node.name, status, answer)
                continue
            raise AssertionError(f"{command} on {stream_id} via {node.name}: {status} {answer}")
        raise AssertionError(f"{command} on {stream_id} failed {MAX_ATTEMPTS} times: {last}")


def opening_balance(index: int) -> int:
    """Every other account qualifies for the welcome bonus."""
    return BONUS_THRESHOLD if index % 2 == 0 else 100


def deposit_amount(round_: int) -> int:
    """A different amount per round (never the bonus), so each deposit can be told apart."""
    return 100 + round_


async def send_rounds(
    client: Client,
    load: Load,
    streams: list[str],
    rounds: range,
    *,
    kill_at: int | None = None,
    killed: trio.Event | None = None,
) -> None:
    """Each worker sends one deposit per stream of its share per round."""

    async def worker(share: list[str]) -> None:
        connections = {node.name: HttpConnection(node.url) for node in client.nodes}
        try:
            for round_ in rounds:
                for stream_id in share:
                    if (
                        kill_at is not None
                        and killed is not None
                        and client.figures.commands >= kill_at
                    ):
                        killed.set()
                    await client.send(
                        connections, "Deposit", stream_id, {"amount": deposit_amount(round_)}
                    )
        finally:
            for connection in connections.values():
                await connection.aclose()

    async with trio.open_nursery() as nursery:
        for w in range(load.workers):
            nursery.start_soon(worker, streams[w :: load.workers])


async def runner_placement(nodes: list[Node]) -> dict[str, list[str]]:
    """Durable runner name -> the nodes where it is active."""
    placement: dict[str, list[str]] = {name: [] for name in DURABLE_RUNNERS}
    for node in nodes:
        runners = await node.get("/runners")
        for name in DURABLE_RUNNERS:
            if runners[name]["state"] in ACTIVE:
                placement[name].append(node.name)
    return placement


async def wait_runners_placed(nodes: list[Node]) -> dict[str, list[str]]:
    """Wait until each durable runner is active on exactly one of ``nodes``."""
    with trio.fail_after(60):
        while True:
            placement = await runner_placement(nodes)
            if all(len(active) == 1 for active in placement.values()):
                return placement
            # Leases move on the registry's clock; there is nothing to wait on here.
            await trio.sleep(0.05)


async def wait_caught_up(nodes: list[Node], position: int) -> None:
    """Wait until every durable runner, wherever active, has handled ``position``."""
    with trio.fail_after(60):
        while True:
            done = set()
            for node in nodes:
                runners = await node.get("/runners")
                for name in DURABLE_RUNNERS:
                    stats = runners[name]
                    if stats["state"] in ACTIVE and stats["checkpoint"] >= position:
                        done.add(name)
            if done == set(DURABLE_RUNNERS):
                return
            await trio.sleep(0.1)


async def run_scenario(
    tmp_path: Path, pg: PgTarget, nats: NatsTarget, *, locks: str, load: Load
) -> Figures:
    """Three nodes; load; SIGKILL one mid-load; check every stream, bonus and audit row."""
    env = {DSN_VARIABLE: pg.dsn, SCHEMA_VARIABLE: pg.schema, "ESKIT_LOG_LEVEL": "WARNING"}
    nodes = []
    for i in (1, 2, 3):
        config, port = cluster_config(
            tmp_path,
            f"node-{i}",
            pg=pg,
            nats=nats,
            locks=locks,
            ttl=load.lease_ttl,
            routing=load.routing,
        )
        nodes.append(Node(f"node-{i}", config, port, tmp_path / f"node-{i}.log", env))
    victim = nodes[2]
    figures = Figures()
    client = Client(nodes, figures)
    streams = [f"acc-{i}" for i in range(load.streams)]
    try:
        # The victim starts first, so it holds the durable runners' leases.
        await victim.start()
        assert await wait_runners_placed([victim]) == {n: [victim.name] for n in DURABLE_RUNNERS}
        async with trio.open_nursery() as nursery:
            for node in nodes[:2]:
                nursery.start_soon(node.start)

        started = trio.current_time()
        connections = {node.name: HttpConnection(node.url) for node in nodes}
        for i, stream_id in enumerate(streams):
            await client.send(
                connections, "OpenAccount", stream_id, {"initial_balance": opening_balance(i)}
            )
        for connection in connections.values():
            await connection.aclose()
        await send_rounds(client, load, streams, range(load.deposits_before_kill))
        figures.first_phase_seconds = trio.current_time() - started
        figures.first_phase_commands = figures.commands
        assert await runner_placement(nodes) == {n: [victim.name] for n in DURABLE_RUNNERS}

        killed = trio.Event()
        kill_at = figures.commands + load.streams * load.deposits_after_kill // 3
        async with trio.open_nursery() as nursery:

            async def kill_when_asked() -> None:
                await killed.wait()
                victim.kill()
                killed_at = trio.current_time()
                await victim.process.wait() if victim.process else None
                placement = await wait_runners_placed(nodes[:2])
                figures.runner_failover_seconds = trio.current_time() - killed_at
                assert all(victim.name not in active for active in placement.values())

            nursery.start_soon(kill_when_asked)
            rounds = range(
                load.deposits_before_kill, load.deposits_before_kill + load.deposits_after_kill
            )
            await send_rounds(client, load, streams, rounds, kill_at=kill_at, killed=killed)
            killed.set()

        survivors = nodes[:2]
        log = await survivors[0].get("/events?after=0&limit=1")
        head = log["head"]
        await wait_caught_up(survivors, head)
        placement = await wait_runners_placed(survivors)
        assert all(len(active) == 1 for active in placement.values()), placement
        for node in survivors:
            routing = await node.get("/cluster")
            figures.forwarded += routing.get("forwarded", 0)
            figures.served += routing.get("served", 0)
        await check_streams(survivors[0], streams, load)
        await check_rejections(survivors, streams[0])
        # Bonus commands may still be in flight when the automation caught up: check
        # the audit after them.
        head = (await survivors[0].get("/events?after=0&limit=1"))["head"]
        await wait_caught_up(survivors, head)
        figures.audit_redeliveries = await check_audit(pg, head)
    finally:
        for node in nodes:
            await node.stop()
    return figures


async def check_rejections(nodes: list[Node], stream_id: str) -> None:
    """A domain rejection looks the same from every node, forwarded or not."""
    body = {"stream_id": stream_id, "data": {"amount": 10**9}}
    answers = []
    for node in nodes:
        connection = HttpConnection(node.url)
        try:
            answers.append(await connection.request("POST", "/commands/bank/Withdraw", body))
        finally:
            await connection.aclose()
    assert [status for status, _ in answers] == [422] * len(nodes)
    assert len({str(answer) for _, answer in answers}) == 1, answers
    assert answers[0][1]["error"]["code"] == "insufficient_funds"


async def check_streams(node: Node, streams: list[str], load: Load) -> None:
    """Every stream: versions 1..n, each client deposit exactly once, one bonus if due."""
    rounds = load.deposits_before_kill + load.deposits_after_kill
    for i, stream_id in enumerate(streams):
        body = await node.get(f"/streams/{stream_id}?limit=1000")
        events = body["events"]
        assert [e["version"] for e in events] == list(range(1, len(events) + 1)), stream_id
        assert events[0]["type"] == "bank.AccountOpened"
        deposits = sorted(e["data"]["amount"] for e in events if e["type"] == "bank.MoneyDeposited")
        bonuses = [amount for amount in deposits if amount == BONUS]
        assert bonuses == ([BONUS] if opening_balance(i) >= BONUS_THRESHOLD else []), stream_id
        client_deposits = [amount for amount in deposits if amount != BONUS]
        assert client_deposits == [deposit_amount(r) for r in range(rounds)], stream_id


async def check_audit(pg: PgTarget, head: int) -> int:
    """The durable projection recorded every stored event (at least once).

    Returns:
        How many rows were delivered more than once (a batch redone after the kill).
    """

    def read() -> tuple[list[tuple[str, int, int]], int]:
        with psycopg.connect(pg.dsn, autocommit=True) as conn:
            audited = conn.execute(
                f'SELECT stream_id, version, position FROM "{pg.schema}".audit ORDER BY position'
            ).fetchall()
            redelivered = conn.execute(
                f'SELECT count(*) FROM "{pg.schema}".audit WHERE deliveries > 1'
            ).fetchone()
            stored = conn.execute(
                f'SELECT stream_id, version, position FROM "{pg.schema}".events ORDER BY position'
            ).fetchall()
        assert audited == stored
        assert stored[-1][2] == head
        return audited, int(redelivered[0] if redelivered else 0)

    _, redelivered = await trio.to_thread.run_sync(read)
    return redelivered
