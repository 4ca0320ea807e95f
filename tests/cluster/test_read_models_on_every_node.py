"""Two engines in one process on a shared PostgreSQL and NATS: read-your-writes and
rebuilds work the same on the node whose runner is active and on the one standing by."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from engine import ProjectionDefinition, ProjectionSetup
from engine.daemon.config import Config
from engine.daemon.engine import Engine, open_engine
from engine.errors import NotActiveError
from engine.plugin import Plugin, ProjectionContext
from engine.runners import BatchProjection
from tests.conftest import NatsTarget, PgTarget
from tests.daemon.test_engine import config_for, http
from tests.daemon.test_sql_read_models import _bank

RUNNER = "bank.balances"


def node_config(tmp_path: Path, node: str, pg: PgTarget, nats: NatsTarget) -> Config:
    """Node ``node`` of a cluster: PostgreSQL store and locks, NATS bus, its own port."""
    return config_for(
        tmp_path / node,
        engine={"data_dir": str(tmp_path / node / "data"), "node_id": node},
        store={
            "backend": "postgres",
            "dsn": pg.dsn,
            "schema": pg.schema,
            "namespace": nats.namespace,
        },
        nats={"url": nats.url},
        bus={"backend": "nats"},
        locks={"backend": "postgres", "ttl": 5},
    )


@asynccontextmanager
async def open_node(config: Config, plugin: Plugin) -> AsyncIterator[Engine]:
    """One node; started after another, its runners stand by (the lease is taken)."""
    async with open_engine(config, plugins=[plugin]) as engine:
        yield engine


async def wait_state(engine: Engine, runner: str, state: str) -> None:
    """Wait until ``runner`` on ``engine`` is in ``state`` (live, standby...)."""
    with trio.fail_after(30):
        while True:
            if engine.runners[runner].statistics().state.value == state:
                return
            await trio.sleep(0.01)


async def deposit(engine: Engine, account: str, amount: int, *, open_: bool = False) -> int:
    """Send a command to ``engine``; return the position of its last event."""
    command, field = ("OpenAccount", "initial_balance") if open_ else ("Deposit", "amount")
    status, body = await http(
        f"{engine.http_urls[0]}/commands/bank/{command}",
        method="POST",
        body={"stream_id": account, "data": {field: amount}},
    )
    assert status == 200, body
    return int(body["events"][-1]["position"])


async def read_balance(engine: Engine, account: str, position: int) -> tuple[int, Any]:
    """``GET /queries/bank/balance`` with read-your-writes at ``position``."""
    return await http(
        f"{engine.http_urls[0]}/queries/bank/balance?account={account}&wait_for_position={position}"
    )


async def test_read_your_writes_succeeds_on_the_standby_node_too(
    tmp_path: Path, pg: PgTarget, nats: NatsTarget
) -> None:
    """A query waiting for a position answers at once on the node whose runner stands
    by (it waits on the checkpoint the active node saves), and that node's ``/runners``
    shows the shared checkpoint instead of 0."""
    async with AsyncExitStack() as stack:
        a = await stack.enter_async_context(
            open_node(node_config(tmp_path, "a", pg, nats), _bank(1))
        )
        await wait_state(a, RUNNER, "live")
        b = await stack.enter_async_context(
            open_node(node_config(tmp_path, "b", pg, nats), _bank(1))
        )
        assert b.runners[RUNNER].statistics().state.value == "standby"
        for n in range(6):
            node = (a, b)[n % 2]
            position = await deposit(node, f"acc-{n % 3}", 10 + n, open_=n < 3)
            for reader in (a, b):
                with trio.fail_after(4):  # well under the 5 s the query may wait
                    status, body = await read_balance(reader, f"acc-{n % 3}", position)
                assert status == 200, (reader.config.engine.node_id, body)
        balances = [(await read_balance(b, f"acc-{n}", 6))[1]["balance"] for n in range(3)]
        assert balances == [10 + 13, 11 + 14, 12 + 15]
        head = await b.store.head_position()
        with trio.fail_after(10):
            while True:
                status, runners = await http(f"{b.http_urls[0]}/runners")
                if runners[RUNNER]["checkpoint"] == head:
                    break
                await trio.sleep(0.05)
        assert runners[RUNNER]["state"] == "standby"
        assert runners[RUNNER]["head"] == head


async def balances_on(engine: Engine, position: int) -> dict[str, int]:
    """Every account's balance as ``engine`` answers it, read-your-writes at ``position``."""
    found = {}
    for n in range(3):
        status, body = await read_balance(engine, f"acc-{n}", position)
        assert status == 200, (engine.config.engine.node_id, body)
        found[f"acc-{n}"] = body["balance"]
    return found


async def test_a_rebuild_switches_every_node_and_outlives_restarts(
    tmp_path: Path, pg: PgTarget, nats: NatsTarget
) -> None:
    """After a rebuild on the active node the standby answers from the new version on
    its next query; when the active node stops, the standby feeds the new version, and
    restarted nodes serve it too."""
    config_a = node_config(tmp_path, "a", pg, nats)
    config_b = node_config(tmp_path, "b", pg, nats)
    expected = {f"acc-{n}": 0 for n in range(3)}
    async with open_node(config_a, _bank(1)) as a:
        async with open_node(config_b, _bank(1)) as b:
            await wait_state(a, RUNNER, "live")
            await wait_state(b, RUNNER, "standby")
            for n in range(3):
                position = await deposit(b, f"acc-{n}", 100, open_=True)
                expected[f"acc-{n}"] += 100
            status, started = await http(
                f"{a.http_urls[0]}/projections/{RUNNER}/rebuild", method="POST"
            )
            assert (status, started["version"]) == (202, 2), started
            with trio.fail_after(30):
                while True:
                    if a.rebuilds[RUNNER].state != "running":
                        break
                    await trio.sleep(0.01)
            assert a.rebuilds[RUNNER].state == "done", a.rebuilds[RUNNER]
            position = await deposit(a, "acc-0", 5)
            expected["acc-0"] += 5
            # The standby's next query follows the switch: the new version, fed.
            assert await balances_on(b, position) == expected
            status, totals = await http(f"{b.http_urls[0]}/queries/bank/totals")
            assert (status, totals) == (200, {"accounts": 3, "total": 305})
            assert b.runners_status()[RUNNER]["version"] == 2
        # The standby is gone; the active node goes on with the new version.
        position = await deposit(a, "acc-1", 7)
        expected["acc-1"] += 7
        assert await balances_on(a, position) == expected
    # Both stopped. The old standby starts first now and becomes the active node: it
    # feeds the version switched to, not the one its code declares.
    async with open_node(config_b, _bank(1)) as b:
        await wait_state(b, RUNNER, "live")
        assert b.runners_status()[RUNNER]["version"] == 2
        position = await deposit(b, "acc-2", 9)
        expected["acc-2"] += 9
        async with open_node(config_a, _bank(1)) as a:
            assert a.runners_status()[RUNNER]["version"] == 2
            for node in (a, b):
                assert await balances_on(node, position) == expected
        store: Any = b.store
        rows = await store.transactional().fetch(
            "SELECT count(*), sum(balance) FROM bank_balances_v1"
        )
        assert rows == [(3, 300)]  # version 1 stopped at the switch, never fed again


def counting_plugin() -> Plugin:
    """The bank with a durable read model that lives in the active node's memory only."""

    def setup(context: ProjectionContext) -> ProjectionSetup:
        seen: list[int] = []

        async def handle(events: Any) -> None:
            seen.extend(event.position for event in events)

        async def count(params: Mapping[str, str]) -> dict[str, Any]:
            return {"node": context.node_id, "count": len(seen)}

        return ProjectionSetup(
            handler=BatchProjection(handle), queries={"count": count}, durable=True
        )

    bank = _bank(1)
    return attrs.evolve(
        bank, projections=[*bank.projections, ProjectionDefinition(name="local", setup=setup)]
    )


async def test_a_read_model_only_the_active_node_has_is_refused_elsewhere(
    tmp_path: Path, pg: PgTarget, nats: NatsTarget
) -> None:
    """A durable read model that is not shared answers on the active node and is
    refused on the standby with :class:`NotActiveError` naming the active node."""
    async with AsyncExitStack() as stack:
        a = await stack.enter_async_context(
            open_node(node_config(tmp_path, "a", pg, nats), counting_plugin())
        )
        await wait_state(a, "bank.local", "live")
        b = await stack.enter_async_context(
            open_node(node_config(tmp_path, "b", pg, nats), counting_plugin())
        )
        position = await deposit(b, "acc-0", 1, open_=True)
        status, body = await http(
            f"{a.http_urls[0]}/queries/bank/count?wait_for_position={position}"
        )
        assert (status, body) == (200, {"node": "a", "count": 1})
        for params in ({}, {"wait_for_position": str(position)}):
            with pytest.raises(NotActiveError, match="node 'a' is") as raised:
                await b.run_query("bank", "count", params)
            assert (raised.value.what, raised.value.owner) == ("bank.local", "a")
            assert raised.value.code == "not_active"
        # The shared read model of the same plugin answers on both.
        for node in (a, b):
            assert (await read_balance(node, "acc-0", position))[0] == 200


async def test_concurrent_clients_read_their_writes_on_both_nodes_through_a_rebuild(
    tmp_path: Path, pg: PgTarget, nats: NatsTarget
) -> None:
    """Four clients, each with its own account, deposit on one node and read their
    balance back from the other (wait_for_position) while the active node rebuilds the
    read model: every read is exact, on the standby as on the active node."""
    async with AsyncExitStack() as stack:
        a = await stack.enter_async_context(
            open_node(node_config(tmp_path, "a", pg, nats), _bank(1))
        )
        await wait_state(a, RUNNER, "live")
        b = await stack.enter_async_context(
            open_node(node_config(tmp_path, "b", pg, nats), _bank(1))
        )
        reads = {"a": 0, "b": 0}

        async def client(index: int) -> None:
            account = f"client-{index}"
            total = 0
            for round_ in range(12):  # bounded
                writer, reader = ((a, b), (b, a))[(index + round_) % 2]
                amount = 1 + index + round_
                position = await deposit(writer, account, amount, open_=round_ == 0)
                total += amount
                status, body = await read_balance(reader, account, position)
                assert (status, body) == (200, {"account": account, "balance": total}), (
                    reader.config.engine.node_id
                )
                reads[reader.config.engine.node_id] += 1

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                for index in range(4):
                    nursery.start_soon(client, index)
                await trio.sleep(0.05)  # the clients are under way
                status, started = await http(
                    f"{a.http_urls[0]}/projections/{RUNNER}/rebuild", method="POST"
                )
                assert status == 202, started
        assert reads == {"a": 24, "b": 24}
        assert a.rebuilds[RUNNER].state == "done", a.rebuilds[RUNNER]
        assert a.runners_status()[RUNNER]["version"] == 2
        await b.follow_projection(RUNNER)
        assert b.runners_status()[RUNNER]["version"] == 2
