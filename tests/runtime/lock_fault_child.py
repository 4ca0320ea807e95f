"""Lock holders in their own processes, for the fault tests (test_lock_faults.py).

``python -m tests.runtime.lock_fault_child holder URL NAMESPACE TTL``
    Holds the NATS lease ``writer``, reads the version of stream ``s`` and prints
    ``holding <token> <version>``. On a line ``go`` from stdin it appends to ``s`` with
    that version as the expected version, shielded from the registry's cancellation,
    as a write already under way when the loss is noticed would be, and prints
    ``appended`` or ``rejected <actual version>``. It prints ``lost`` once ``hold``
    raises :class:`LockNotHeldError`, then exits.

``python -m tests.runtime.lock_fault_child runner URL NAMESPACE TTL OWNER``
    Runs the projection runner ``competed`` with the NATS lock registry (owner
    ``OWNER``), the NATS store's checkpoints and the NATS bus. Prints ``ready`` once
    started, ``active <token>`` when it takes the lease and ``handled <position>`` for
    each event; runs until killed.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import trio

from engine import ConcurrencyError, Event, LockNotHeldError, NewEvent
from engine.bus.nats import open_nats_event_bus
from engine.drivers.nats import open_nats
from engine.locks.nats import open_nats_lock_registry
from engine.runners import ProjectionRunner
from engine.stores.nats import open_nats_store
from tests.runtime.helpers import Noted, codec


def say(line: str) -> None:
    print(line, flush=True)


async def read_line(stream: trio.abc.ReceiveStream) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = await stream.receive_some(1)
        if not chunk:
            break
        data += chunk
    return data.strip()


async def holder(url: str, namespace: str, ttl: float) -> None:
    stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
    async with (
        open_nats(url) as connection,
        open_nats_store(connection, codec(), namespace=namespace) as store,
        open_nats_lock_registry(
            connection, namespace=namespace, owner_id="paused", ttl=ttl
        ) as locks,
    ):
        try:
            async with locks.hold("writer") as lease:
                version = await store.stream_version("s")
                say(f"holding {lease.token} {version}")
                with trio.CancelScope(shield=True):
                    assert await read_line(stdin) == b"go"
                    try:
                        await store.append("s", [NewEvent(Noted(-1))], expected_version=version)
                    except ConcurrencyError as exc:
                        say(f"rejected {exc.actual}")
                    else:
                        say("appended")
                await trio.sleep_forever()
        except LockNotHeldError:
            say("lost")


class _Announce(logging.Handler):
    """Turns the runner's "is active" log record into an ``active <token>`` line."""

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg == "runner %r is active (lease token %d)":
            say(f"active {record.args[1]}")  # type: ignore[index]


async def runner(url: str, namespace: str, ttl: float, owner: str) -> None:
    logging.getLogger("eskit.runners").addHandler(_Announce())
    logging.getLogger("eskit.runners").setLevel(logging.INFO)

    async def handle(event: Event[Any]) -> None:
        await trio.lowlevel.checkpoint()
        say(f"handled {event.position}")

    async with (
        open_nats(url) as connection,
        open_nats_store(connection, codec(), namespace=namespace) as store,
        open_nats_lock_registry(connection, namespace=namespace, owner_id=owner, ttl=ttl) as locks,
        open_nats_event_bus(connection, namespace=namespace) as bus,
    ):
        projection = ProjectionRunner(
            name="competed",
            handler=handle,
            store=store,
            checkpoints=store,
            bus=bus,
            locks=locks,
            batch_size=5,
            poll_interval=0.5,
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(projection.run)
            say("ready")


if __name__ == "__main__":
    mode, url, namespace, ttl = sys.argv[1:5]
    if mode == "holder":
        trio.run(holder, url, namespace, float(ttl))
    else:
        trio.run(runner, url, namespace, float(ttl), sys.argv[5])
