"""Quick figures of the distributed runtime pieces (not a test).

Starts its own nats-server and PostgreSQL (as the test suite does) and prints:

* lock registries (memory, NATS KV, PostgreSQL advisory): uncontended hold+release
  cycles per second on one key, and handovers per second when two nodes alternate on
  one key (each waiter is woken by the release: a KV delete message, or ``NOTIFY``);
* loss detection: how long after ``pg_terminate_backend`` a PostgreSQL holder is
  stopped, and how long after its holder stops renewing a NATS lease is taken over
  (TTL 1 s);
* the NATS bus: publications per second (one awaited publish after another) and the
  notifications per second one subscriber on another connection receives.

Run: /tmp/venv/bin/python -m benchmarks.locks_bus_quick
"""

from __future__ import annotations

import contextlib
import secrets
import statistics
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import trio

from engine.bus.nats import open_nats_event_bus
from engine.events import Event
from engine.locks.base import LockRegistry
from engine.locks.memory import MemoryLockRegistry
from engine.locks.nats import open_nats_lock_registry
from engine.locks.postgres import open_pg_lock_registry

CYCLES = 500
HANDOVERS = 200
PUBLICATIONS = 5000
ROUNDS = 3

Opener = Callable[[str], AbstractAsyncContextManager[LockRegistry]]


async def _cycles(open_registry: Opener) -> float:
    async with open_registry("a") as registry:
        start = time.perf_counter()
        for _ in range(CYCLES):
            async with registry.hold("bench"):
                pass
        return CYCLES / (time.perf_counter() - start)


async def _handovers(open_registry: Opener) -> float:
    """Two nodes take turns: each waits for the other's release."""
    turn = [0]
    changed = trio.Condition()

    async def node(registry: LockRegistry, me: int) -> None:
        for _ in range(HANDOVERS // 2):
            async with changed:
                while turn[0] % 2 != me:
                    await changed.wait()
            async with registry.hold("bench"):
                async with changed:
                    turn[0] += 1
                    changed.notify_all()
                # Hold until the other node is waiting for the key (it asks the server).
                await trio.lowlevel.checkpoint()

    async with open_registry("a") as a, open_registry("b") as b:
        start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(node, a, 0)
            nursery.start_soon(node, b, 1)
        return HANDOVERS / (time.perf_counter() - start)


async def _pg_loss(dsn: str) -> float:
    import psycopg

    async with open_pg_lock_registry(dsn, schema="bench_loss", check_interval=1.0) as registry:
        inside, stopped = trio.Event(), trio.Event()

        async def hold() -> None:
            with contextlib.suppress(Exception):
                async with registry.hold("k"):
                    inside.set()
                    await trio.sleep_forever()
            stopped.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(hold)
            await inside.wait()
            pid = registry.statistics().backend_pid

            def terminate() -> None:
                with psycopg.connect(dsn, autocommit=True) as conn:
                    conn.execute("SELECT pg_terminate_backend(%s)", (pid,))

            await trio.to_thread.run_sync(terminate)
            start = time.perf_counter()
            await stopped.wait()
            return time.perf_counter() - start


async def _nats_takeover(url: str) -> float:
    """The holder's registry closes without releasing (as a killed process would,
    except that it stops renewing at once); time until the waiter gets in."""
    namespace = f"B{secrets.token_hex(4).upper()}"
    async with open_nats_lock_registry(url, namespace=namespace, ttl=1.0) as waiter:
        got = trio.Event()

        async def wait() -> None:
            async with waiter.hold("k"):
                got.set()

        async with trio.open_nursery() as nursery:
            with contextlib.suppress(Exception):
                async with open_nats_lock_registry(url, namespace=namespace, ttl=1.0) as dying:
                    entered = trio.Event()

                    async def hold() -> None:
                        with contextlib.suppress(Exception):
                            async with dying.hold("k"):
                                entered.set()
                                await trio.sleep_forever()

                    nursery.start_soon(hold)
                    await entered.wait()
                    nursery.start_soon(wait)
                    await trio.sleep(0.5)
                    # Cancel the holder's renewals without deleting the key.
                    dying._nursery.cancel_scope.cancel()
            start = time.perf_counter()
            await got.wait()
            return time.perf_counter() - start


async def _bus(url: str) -> tuple[float, float]:
    namespace = f"B{secrets.token_hex(4).upper()}"
    events = [Event("s", n, n, "bench", None) for n in range(1, PUBLICATIONS + 1)]
    async with (
        open_nats_event_bus(url, namespace=namespace) as publisher,
        open_nats_event_bus(url, namespace=namespace) as listener,
        listener.subscribe(buffer_size=PUBLICATIONS) as subscription,
    ):
        start = time.perf_counter()
        for event in events:
            await publisher.publish([event])
        published = PUBLICATIONS / (time.perf_counter() - start)
        head = 0
        while head < PUBLICATIONS:
            head = (await subscription.receive()).head
        received = PUBLICATIONS / (time.perf_counter() - start)
        return published, received


def _median(values: list[float]) -> float:
    return statistics.median(values)


def main() -> None:
    from tests.servers import run_nats, run_postgres

    with run_nats() as nats_server, run_postgres() as pg_server:
        url, dsn = nats_server.url, pg_server.dsn
        shared = MemoryLockRegistry()

        @asynccontextmanager
        async def memory(owner: str) -> AsyncIterator[LockRegistry]:
            yield shared

        def nats(namespace: str) -> Opener:
            return lambda owner: open_nats_lock_registry(
                url, namespace=namespace, owner_id=owner, ttl=10.0
            )

        def pg(schema: str) -> Opener:
            return lambda owner: open_pg_lock_registry(dsn, schema=schema, owner_id=owner)

        async def run() -> dict[str, Any]:
            figures: dict[str, Any] = {}
            for name, make in (
                ("memory", lambda n: memory),
                ("nats", lambda n: nats(f"B{n}")),
                ("postgres", lambda n: pg(f"bench_{n}")),
            ):
                cycles = [await _cycles(make(f"C{r}")) for r in range(ROUNDS)]
                handovers = [await _handovers(make(f"H{r}")) for r in range(ROUNDS)]
                figures[name] = (_median(cycles), _median(handovers))
            figures["pg_loss_ms"] = _median([await _pg_loss(dsn) * 1000 for _ in range(ROUNDS)])
            figures["nats_takeover_s"] = _median([await _nats_takeover(url) for _ in range(ROUNDS)])
            bus = [await _bus(url) for _ in range(ROUNDS)]
            figures["bus"] = (_median([b[0] for b in bus]), _median([b[1] for b in bus]))
            return figures

        figures = trio.run(run)
    print(f"{'registry':<10} {'hold+release/s':>15} {'handovers/s':>12}")
    for name in ("memory", "nats", "postgres"):
        cycles, handovers = figures[name]
        print(f"{name:<10} {cycles:>15,.0f} {handovers:>12,.0f}")
    print(f"PostgreSQL holder stopped after pg_terminate_backend: {figures['pg_loss_ms']:.1f} ms")
    print(
        f"NATS lease taken over after renewals stopped (TTL 1 s): {figures['nats_takeover_s']:.2f} s"
    )
    published, received = figures["bus"]
    print(f"NATS bus: {published:,.0f} publications/s sent, {received:,.0f}/s received")


if __name__ == "__main__":
    main()
