"""The embedded nats-server: started, health-checked and restarted; clients reconnect."""

from __future__ import annotations

import functools
import os
import signal
from pathlib import Path

import trio

from engine.drivers.nats import open_nats
from engine.drivers.nats_server import EmbeddedNats
from engine.runners.supervisor import RestartPolicy, run_supervised

QUICK = RestartPolicy(max_restarts=3, window=60, backoff_initial=0.1)


async def echo(connection: object, subject: str, *, task_status: trio.TaskStatus[None]) -> None:
    """Answer every request on ``subject`` with its payload."""
    from engine.drivers.nats import NatsConnection

    assert isinstance(connection, NatsConnection)
    async with connection.subscribe(subject) as sub:
        task_status.started()
        async for msg in sub.messages:
            await connection.send(msg.reply, msg.data)


async def test_killed_server_is_restarted_and_clients_carry_on(tmp_path: Path) -> None:
    """SIGKILL the server: the supervisor starts it again on the same port, the client
    reconnects, its subscription is renewed and JetStream still has the stored data."""
    server = EmbeddedNats.create(tmp_path / "nats")
    async with trio.open_nursery() as nursery:
        with trio.fail_after(60):
            await nursery.start(
                functools.partial(run_supervised, name="nats-server", policy=QUICK), server.run
            )
        assert server.starts == 1
        async with open_nats(server.url) as connection:
            await nursery.start(echo, connection, "svc.echo")
            await connection.api("$JS.API.STREAM.CREATE.S1", {"name": "S1", "subjects": ["s1.>"]})
            await connection.request("s1.a", b"kept")
            assert (await connection.request("svc.echo", b"one")).data == b"one"

            first_pid = server.pid
            assert first_pid is not None
            os.kill(first_pid, signal.SIGKILL)
            with trio.fail_after(60):
                await connection.wait_statistics(lambda s: s.reconnects >= 1 and s.connected)
            assert server.starts == 2
            assert server.pid != first_pid
            # nats-py renews its subscriptions before it reports the reconnect.
            with trio.fail_after(10):
                reply = await connection.request("svc.echo", b"two")
            assert reply.data == b"two"
            info = await connection.api("$JS.API.STREAM.INFO.S1")
            assert info["state"]["messages"] == 1
        nursery.cancel_scope.cancel()
    assert server.pid is None
