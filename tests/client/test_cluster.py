"""The client against a cluster: 504 ``unknown_outcome`` answers (a stream owner that
hangs) are retried with the same command id and the command acts once; a read model kept
on another node is ``not_active``."""

from __future__ import annotations

import json
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
import trio

from engine.client import AsyncClient, ClientError, CommandResult, RetryPolicy
from engine.cluster import stream_lease_key
from engine.daemon.config import parse_config
from engine.daemon.engine import open_engine
from engine.drivers.nats import open_nats
from engine.errors import NotActiveError
from engine.locks.nats import open_nats_lock_registry
from tests.cluster.test_read_models_on_every_node import (
    counting_plugin,
    node_config,
    open_node,
    wait_state,
)
from tests.conftest import NatsTarget, PgTarget


async def test_unknown_outcome_answers_are_retried_with_the_same_id(
    tmp_path: Path, nats: NatsTarget
) -> None:
    """While the stream's owner swallows commands the client gets 504s and resends the same
    command id; once the owner is gone the command is handled, once."""
    config = parse_config(
        {
            "engine": {"node_id": "node-a", "data_dir": str(tmp_path / "a")},
            "store": {"backend": "sqlite", "namespace": nats.namespace},
            "nats": {"url": nats.url},
            "locks": {"backend": "nats", "ttl": 1.0},
            "cluster": {"forward_timeout": 0.5, "idle_release": 1.0},
            "http": {"port": 0},
            "plugins": {"enabled": ["bank"]},
        },
        environ={},
    )
    policy = RetryPolicy(attempts=20, initial_backoff=0.05, max_backoff=0.2)
    with trio.fail_after(60):
        async with (
            open_nats(nats.url) as connection,
            open_nats_lock_registry(
                connection, namespace=nats.namespace, owner_id="ghost"
            ) as ghost,
            open_engine(config) as engine,
            AsyncClient(engine.http_urls[0], retry=policy) as client,
        ):
            results: list[CommandResult] = []
            # A "ghost" node owns acc-2 and swallows every command forwarded to it.
            async with (
                connection.subscribe(f"{nats.namespace}.cmd.ghost") as swallowed,
                trio.open_nursery() as nursery,
            ):
                release, leased = trio.Event(), trio.Event()

                async def hold() -> None:
                    async with ghost.hold(stream_lease_key("acc-2")):
                        leased.set()
                        await release.wait()

                async def send() -> None:
                    results.append(
                        await client.send(
                            "bank", "OpenAccount", {"initial_balance": 7}, stream_id="acc-2"
                        )
                    )

                nursery.start_soon(hold)
                await leased.wait()
                nursery.start_soon(send)
                ids = []
                for _ in range(2):  # the first attempt and at least one retry
                    request = json.loads((await swallowed.messages.receive()).data)
                    ids.append(request["command_id"])
                release.set()
            assert ids[0] == ids[1]
            (result,) = results
            assert result.command_id == ids[0]
            assert result.duplicate is False  # the ghost never acted: this node did, once
            assert [e.version for e in await client.stream("acc-2")] == [1]
            assert engine.cluster_status()["unknown_outcomes"] >= 2


async def test_a_read_model_kept_on_another_node_is_not_active(
    tmp_path: Path, pg: PgTarget, nats: NatsTarget
) -> None:
    """A query for a read model only the active node keeps answers 409 not_active elsewhere,
    raised as the engine's NotActiveError (it was a 500 internal_error)."""
    with trio.fail_after(60):
        async with AsyncExitStack() as stack:
            a = await stack.enter_async_context(
                open_node(node_config(tmp_path, "a", pg, nats), counting_plugin())
            )
            await wait_state(a, "bank.local", "live")
            b = await stack.enter_async_context(
                open_node(node_config(tmp_path, "b", pg, nats), counting_plugin())
            )
            client = await stack.enter_async_context(AsyncClient(b.http_urls[0]))
            opened = await client.send(
                "bank", "OpenAccount", {"initial_balance": 1}, stream_id="acc-0"
            )
            with pytest.raises(NotActiveError) as refused:
                await client.query("bank", "count", wait_for_position=opened)
            assert isinstance(refused.value, ClientError)
            assert (refused.value.status, refused.value.error_code) == (409, "not_active")
            assert "node 'a' is" in refused.value.message
            async with AsyncClient(a.http_urls[0]) as on_a:
                answer = await on_a.query("bank", "count", wait_for_position=opened)
            assert answer == {"node": "a", "count": 1}
