"""Real faults against the distributed lock registries: a holder process frozen with
SIGSTOP past its TTL, a PostgreSQL lock session terminated or cut off by a partition,
and the active one of two runner processes killed with SIGKILL."""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from engine import LockNotHeldError, NewEvent
from engine.bus.nats import open_nats_event_bus
from engine.drivers.nats import NatsConnection, open_nats
from engine.errors import BackendUnavailableError
from engine.locks.base import LockRegistry
from engine.locks.nats import delete_nats_lock_bucket, open_nats_lock_registry
from engine.locks.postgres import PgLockRegistry, open_pg_lock_registry
from engine.stores.nats import NatsStore, delete_nats_store, open_nats_store
from tests.conftest import NatsTarget, PgTarget
from tests.runtime.helpers import Noted, codec
from tests.runtime.netfaults import port_of, tcp_proxy
from tests.runtime.test_lock_contract import terminate_backend
from tests.servers import free_port

ROOT = Path(__file__).resolve().parents[2]
TTL = 1.0
PG_CHECK_INTERVAL = 0.5
PG_STATEMENT_TIMEOUT = 1.0
#: How long a child process may take to start (imports, connections) on a loaded machine.
START_GUARD = 30


@attrs.define(eq=False)
class Changes:
    """Wakes whoever waits for a condition on the children's output when a line arrives."""

    _event: trio.Event = attrs.field(factory=trio.Event)

    def note(self) -> None:
        self._event.set()
        self._event = trio.Event()

    async def wait_until(self, condition: Callable[[], bool]) -> None:
        while not condition():
            await self._event.wait()


@attrs.define(eq=False)
class Child:
    """A child process whose stdout lines are collected as they arrive."""

    process: trio.Process
    changes: Changes
    lines: list[str] = attrs.field(factory=list)

    async def collect(self) -> None:
        assert self.process.stdout is not None
        buffer = b""
        async for chunk in self.process.stdout:
            buffer += chunk
            *complete, buffer = buffer.split(b"\n")
            self.lines += [line.decode() for line in complete]
            self.changes.note()
        self.changes.note()

    def line(self, prefix: str) -> str | None:
        """The first line starting with ``prefix`` so far."""
        return next((line for line in self.lines if line.startswith(prefix)), None)

    async def wait_for(self, prefix: str) -> str:
        """The first line starting with ``prefix`` (waiting for it if need be)."""

        def arrived() -> bool:
            assert self.process.returncode is None or self.line(prefix), (
                f"the child exited without printing {prefix!r}: {self.lines}"
            )
            return self.line(prefix) is not None

        await self.changes.wait_until(arrived)
        line = self.line(prefix)
        assert line is not None
        return line

    def handled(self) -> list[int]:
        return [int(line.split()[1]) for line in self.lines if line.startswith("handled ")]

    def active(self) -> list[int]:
        return [int(line.split()[1]) for line in self.lines if line.startswith("active ")]

    async def send(self, line: str) -> None:
        assert self.process.stdin is not None
        await self.process.stdin.send_all(line.encode() + b"\n")


@asynccontextmanager
async def spawn(nursery: trio.Nursery, changes: Changes, *args: str) -> AsyncIterator[Child]:
    """Start ``python -m tests.runtime.lock_fault_child ARGS``; kill it at the end."""
    command = [sys.executable, "-m", "tests.runtime.lock_fault_child", *args]
    process: trio.Process = await nursery.start(
        functools.partial(
            trio.run_process,
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            check=False,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
    )
    child = Child(process, changes)
    nursery.start_soon(child.collect)
    try:
        yield child
    finally:
        if process.returncode is None:
            os.kill(process.pid, signal.SIGCONT)
            process.kill()


@asynccontextmanager
async def nats_world(nats: NatsTarget) -> AsyncIterator[tuple[NatsConnection, NatsStore[Any]]]:
    """A connection and the test namespace's store; both buckets deleted afterwards."""
    async with open_nats(nats.url) as connection:
        try:
            async with open_nats_store(connection, codec(), namespace=nats.namespace) as store:
                yield connection, store
        finally:
            with trio.move_on_after(30, shield=True):
                await delete_nats_store(connection, nats.namespace)
                await delete_nats_lock_bucket(connection, nats.namespace)


async def test_a_holder_paused_past_its_ttl_is_fenced(nats: NatsTarget) -> None:
    """A holder frozen with SIGSTOP loses its lease to another process (with a larger
    token); thawed, its append with the version it read is rejected by the store (the
    final fence) and it learns of the loss; the new holder keeps the lease."""
    with trio.fail_after(60):
        async with (
            nats_world(nats) as (connection, store),
            open_nats_lock_registry(
                connection, namespace=nats.namespace, owner_id="test", ttl=TTL
            ) as locks,
            trio.open_nursery() as nursery,
        ):
            await store.append("s", [NewEvent(Noted(0))])
            args = ("holder", nats.url, nats.namespace, str(TTL))
            async with spawn(nursery, Changes(), *args) as child:
                with trio.fail_after(START_GUARD):
                    _, token, version = (await child.wait_for("holding ")).split()
                assert int(version) == 1
                assert await locks.owner("writer") == "paused"
                child.process.send_signal(signal.SIGSTOP)
                async with locks.hold("writer") as lease:
                    assert lease.token > int(token)
                    await store.append("s", [NewEvent(Noted(1))], expected_version=1)
                    child.process.send_signal(signal.SIGCONT)
                    await child.send("go")
                    assert await child.wait_for("rejected ") == "rejected 2"
                    await child.wait_for("lost")
                    assert await locks.owner("writer") == "test"
                    assert [e.data.n for e in await store.load("s")] == [0, 1]
                assert await child.process.wait() == 0
            assert locks.statistics().lost == 0


@asynccontextmanager
async def pg_registry(dsn: str, schema: str, owner_id: str) -> AsyncIterator[PgLockRegistry]:
    async with open_pg_lock_registry(
        dsn,
        schema=schema,
        owner_id=owner_id,
        check_interval=PG_CHECK_INTERVAL,
        statement_timeout=PG_STATEMENT_TIMEOUT,
    ) as registry:
        yield registry


async def hold_until_lost(
    registry: LockRegistry, key: str, inside: trio.Event, stopped: Callable[[], object]
) -> None:
    """Hold ``key`` until the lease is lost; then call ``stopped()``."""
    with pytest.raises(LockNotHeldError):
        await _work_while_holding(registry, key, inside)
    stopped()


async def _work_while_holding(registry: LockRegistry, key: str, inside: trio.Event) -> None:
    async with registry.hold(key):
        inside.set()
        await trio.sleep_forever()


async def test_a_terminated_pg_session_stops_the_holder(pg: PgTarget) -> None:
    """``pg_terminate_backend`` on the registry's session is noticed within the check
    interval: the holder is stopped, another node gets the lock, and the registry
    reconnects and can take locks again."""
    inside = trio.Event()
    with trio.fail_after(60):
        async with (
            pg_registry(pg.dsn, pg.schema, "victim") as victim,
            pg_registry(pg.dsn, pg.schema, "other") as other,
            trio.open_nursery() as nursery,
        ):
            stopped = trio.Event()
            nursery.start_soon(hold_until_lost, victim, "k", inside, stopped.set)
            await inside.wait()
            pid = victim.statistics().backend_pid
            assert pid is not None
            await terminate_backend(pg.dsn, pid)
            # The watcher wakes at once (the server says goodbye on the socket); at the
            # latest, the next check finds the session dead.
            with trio.fail_after(PG_CHECK_INTERVAL + PG_STATEMENT_TIMEOUT):
                await stopped.wait()
            async with other.hold("k") as lease:
                assert await victim.owner("k") == "other"
            async with victim.hold("k") as again:
                assert again.token > lease.token
            statistics = victim.statistics()
            assert (statistics.lost, statistics.reconnects) == (1, 1)
            assert statistics.backend_pid != pid


async def test_a_partitioned_pg_session_stops_the_holder(pg: PgTarget) -> None:
    """When the network stops carrying the lock session's bytes (no error, no close),
    the liveness check times out and the holder is stopped."""
    inside = trio.Event()
    stopped = trio.Event()
    server = conninfo_to_dict(pg.dsn)
    with trio.fail_after(60):
        async with tcp_proxy(int(server.get("port") or 5432), str(server.get("host"))) as proxy:
            dsn = make_conninfo(pg.dsn, host="127.0.0.1", port=proxy.port)
            async with (
                pg_registry(dsn, pg.schema, "cut-off") as registry,
                trio.open_nursery() as nursery,
            ):
                nursery.start_soon(hold_until_lost, registry, "k", inside, stopped.set)
                await inside.wait()
                proxy.freeze()
                with trio.fail_after(PG_CHECK_INTERVAL + PG_STATEMENT_TIMEOUT + 5):
                    await stopped.wait()
                assert registry.statistics().lost == 1
                proxy.thaw()


async def test_one_active_runner_of_two_processes_and_takeover(nats: NatsTarget) -> None:
    """Two processes run the same projection runner: exactly one handles events; killed
    with SIGKILL, the other takes over from the checkpoint within the lease TTL and
    handles everything after it."""
    key = "runner/competed"
    with trio.fail_after(60):
        async with (
            nats_world(nats) as (connection, store),
            open_nats_lock_registry(connection, namespace=nats.namespace, ttl=TTL) as locks,
            open_nats_event_bus(connection, namespace=nats.namespace) as bus,
            trio.open_nursery() as nursery,
        ):

            async def append(first: int, count: int) -> None:
                for n in range(first, first + count):
                    await bus.publish(await store.append("s", [NewEvent(Noted(n))]))

            await append(0, 10)
            common = (nats.url, nats.namespace, str(TTL))
            changes = Changes()
            async with (
                spawn(nursery, changes, "runner", *common, "node-a") as a,
                spawn(nursery, changes, "runner", *common, "node-b") as b,
            ):
                with trio.fail_after(START_GUARD):
                    await a.wait_for("ready")
                    await b.wait_for("ready")
                    await changes.wait_until(lambda: 10 in a.handled() + b.handled())
                active, standby = (a, b) if 10 in a.handled() else (b, a)
                owner = "node-a" if active is a else "node-b"
                assert await locks.owner(key) == owner
                await append(10, 10)
                await changes.wait_until(lambda: 20 in active.handled())
                assert standby.handled() == []
                assert standby.active() == []

                active.process.kill()
                await active.process.wait()
                await append(20, 10)
                await changes.wait_until(lambda: 30 in standby.handled())
                assert await locks.owner(key) == ("node-b" if owner == "node-a" else "node-a")
                assert standby.active()[0] > active.active()[0]
                # At-least-once: the new runner starts after the last saved checkpoint.
                assert set(active.handled()) | set(standby.handled()) == set(range(1, 31))
                assert min(standby.handled()) > 10


async def test_a_nats_holder_cut_off_gives_up_before_anybody_else_gets_in(
    nats: NatsTarget,
) -> None:
    """A holder whose renewals stop reaching the server (a partition) counts its lease
    lost before the server's TTL lets a waiting node in: the two never overlap."""
    order: list[str] = []
    inside = trio.Event()
    ttl = 2.0

    async def wait_and_take(registry: LockRegistry) -> None:
        async with registry.hold("k") as lease:
            order.append("new holder in")
            tokens.append(lease.token)

    tokens: list[int] = []
    with trio.fail_after(60):
        async with (
            nats_world(nats) as (connection, _),
            tcp_proxy(port_of(nats.url)) as proxy,
            open_nats_lock_registry(
                f"nats://127.0.0.1:{proxy.port}", namespace=nats.namespace, ttl=ttl
            ) as cut_off,
            open_nats_lock_registry(connection, namespace=nats.namespace, ttl=ttl) as other,
        ):
            async with trio.open_nursery() as nursery:
                stopped = functools.partial(order.append, "old holder stopped")
                nursery.start_soon(hold_until_lost, cut_off, "k", inside, stopped)
                await inside.wait()
                nursery.start_soon(wait_and_take, other)
                proxy.freeze()
            proxy.thaw()
            assert order == ["old holder stopped", "new holder in"]
            assert cut_off.statistics().lost == 1


async def test_an_unreachable_pg_server_fails_the_registry_plainly() -> None:
    """Opening a PostgreSQL registry on a port nobody listens on raises a bare
    ``BackendUnavailableError`` (no exception group, no psycopg type)."""
    dsn = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
    with trio.fail_after(60), pytest.raises(BackendUnavailableError):
        async with open_pg_lock_registry(dsn, statement_timeout=2):
            pass
