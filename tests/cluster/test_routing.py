"""Command routing in-process: a hung owner gives ``unknown_outcome``; retries act once."""

from __future__ import annotations

from pathlib import Path

import orjson
import trio

from engine.cluster import CommandRequest, stream_lease_key
from engine.daemon.config import parse_config
from engine.daemon.engine import open_engine
from engine.drivers.nats import open_nats
from engine.locks.nats import open_nats_lock_registry
from tests.cluster.client import HttpConnection
from tests.conftest import NatsTarget


async def test_hung_owner_gives_unknown_outcome_and_the_retry_acts_once(
    tmp_path: Path, nats: NatsTarget
) -> None:
    """A command for a stream whose owner takes it but never answers returns 504
    ``unknown_outcome`` with the command id; once the owner's lease is gone the same id
    is handled here, and sending it again answers the original result as a duplicate."""
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
    async with (
        open_nats(nats.url) as connection,
        open_nats_lock_registry(connection, namespace=nats.namespace, owner_id="ghost") as ghost,
        open_engine(config) as engine,
    ):
        client = HttpConnection(engine.http_urls[0])
        opened = {"stream_id": "acc-1", "data": {"initial_balance": 5}, "command_id": "open-1"}
        status, body = await client.request("POST", "/commands/bank/OpenAccount", opened)
        assert status == 200, body
        # The stream is now owned by node-a; take a second stream for the ghost node,
        # which subscribes to its command subject and swallows every request.
        async with (
            connection.subscribe(f"{nats.namespace}.cmd.ghost") as swallowed,
            trio.open_nursery() as nursery,
        ):
            leased = trio.Event()

            async def hold() -> None:
                async with ghost.hold(stream_lease_key("acc-2")):
                    leased.set()
                    await release.wait()

            release = trio.Event()
            nursery.start_soon(hold)
            await leased.wait()
            second = {"stream_id": "acc-2", "data": {"initial_balance": 7}}
            status, body = await client.request("POST", "/commands/bank/OpenAccount", second)
            assert status == 504, body
            assert body["error"]["code"] == "unknown_outcome"
            command_id = body["error"]["command_id"]
            assert command_id
            assert (await swallowed.messages.receive()).reply
            release.set()

        retry = {**second, "command_id": command_id}
        status, first = await client.request("POST", "/commands/bank/OpenAccount", retry)
        assert status == 200, first
        assert first["duplicate"] is False
        status, again = await client.request("POST", "/commands/bank/OpenAccount", retry)
        assert status == 200, again
        assert again["duplicate"] is True
        assert again["events"] == first["events"]
        status, stream = await client.request("GET", "/streams/acc-2")
        assert [e["version"] for e in stream["events"]] == [1]
        status, routing = await client.request("GET", "/cluster")
        assert routing["unknown_outcomes"] == 1
        await client.aclose()


async def test_forwarded_errors_carry_codes_and_the_ingress_alone_picks_the_status(
    tmp_path: Path, nats: NatsTarget
) -> None:
    """A node answers a forwarded command's error with its codes and no HTTP status, and
    an owner's answer of codes alone becomes the status of the first code the ingress
    knows (a plugin's ``insufficient_funds`` is a 422 through ``domain_rejected``)."""
    config = parse_config(
        {
            "engine": {"node_id": "node-a", "data_dir": str(tmp_path / "a")},
            "store": {"backend": "sqlite", "namespace": nats.namespace},
            "nats": {"url": nats.url},
            "locks": {"backend": "nats", "ttl": 1.0},
            "cluster": {"forward_timeout": 5.0, "idle_release": 1.0},
            "http": {"port": 0},
            "plugins": {"enabled": ["bank"]},
        },
        environ={},
    )
    async with (
        open_nats(nats.url) as connection,
        open_nats_lock_registry(connection, namespace=nats.namespace, owner_id="ghost") as ghost,
        open_engine(config) as engine,
    ):
        # node-a serves a command forwarded to it: the account was never opened.
        request = CommandRequest(
            plugin="bank",
            command="Withdraw",
            stream_id="acc-9",
            data={"amount": 1},
            command_id=None,
        )
        with trio.fail_after(10):
            reply = await connection.request(f"{nats.namespace}.cmd.node-a", request.to_json())
        error = orjson.loads(reply.data)["error"]
        assert error == {
            "code": "account_not_found",
            "codes": ["account_not_found", "domain_rejected", "eskit_error"],
            "message": error["message"],
        }
        client = HttpConnection(engine.http_urls[0])
        async with (
            connection.subscribe(f"{nats.namespace}.cmd.ghost") as forwarded,
            trio.open_nursery() as nursery,
        ):
            await connection.flush()
            leased = trio.Event()
            release = trio.Event()

            async def hold() -> None:
                async with ghost.hold(stream_lease_key("acc-2")):
                    leased.set()
                    await release.wait()

            async def answer() -> None:
                msg = await forwarded.messages.receive()
                codes = ["insufficient_funds", "domain_rejected", "eskit_error"]
                body = {"error": {"code": codes[0], "codes": codes, "message": "only 3"}}
                await connection.send(msg.reply, orjson.dumps(body))

            nursery.start_soon(hold)
            await leased.wait()
            nursery.start_soon(answer)
            withdraw = {"stream_id": "acc-2", "data": {"amount": 5}}
            status, body = await client.request("POST", "/commands/bank/Withdraw", withdraw)
            release.set()
        assert (status, body["error"]["code"], body["error"]["message"]) == (
            422,
            "insufficient_funds",
            "only 3",
        )
        await client.aclose()
