"""Quick throughput figures of the NATS JetStream store (not a test).

Starts its own nats-server (as the test suite does: file storage, ``sync_interval:
always``) and prints, for each workload, the store through the Trio driver beside raw
nats-py in plain asyncio (a child process, no trio-asyncio imported) and beside nats-py
driven from Trio through trio-asyncio, the alternative bridge.

Run: /tmp/venv/bin/python -m benchmarks.nats_store_quick [READ_EVENTS [ROUNDS]]
"""

from __future__ import annotations

import asyncio
import json
import statistics
import subprocess
import sys
import time
import uuid
from typing import Any

TEXT = "x" * 190  # about a 207-byte payload, as in DESIGN.md
SINGLE = 2000
TASKS, PER_TASK = 64, 50
BATCHES, BATCH = 200, 100
PAGE = 1000
#: The bridge alone: publish+ack to a memory stream (no fsync), one caller and 64.
MEMORY_STREAM = {"name": "MEM_BENCH", "subjects": ["mem.>"], "storage": "memory"}
BRIDGE_SINGLE, BRIDGE_PER_TASK = 3000, 100


def _rate(count: int, start: float) -> float:
    return count / (time.perf_counter() - start)


# -- raw nats-py in plain asyncio (the floor) ----------------------------------------


async def _raw_batch(nc: Any, subject: str, count: int) -> bytes:
    batch_id = uuid.uuid4().hex
    payload = TEXT.encode()
    for n in range(1, count):
        headers = {"Nats-Batch-Id": batch_id, "Nats-Batch-Sequence": str(n)}
        headers["Nats-Msg-Id"] = str(uuid.uuid4())
        await nc.publish(subject, payload, headers=headers)
    headers = {
        "Nats-Batch-Id": batch_id,
        "Nats-Batch-Sequence": str(count),
        "Nats-Batch-Commit": "1",
        "Nats-Msg-Id": str(uuid.uuid4()),
    }
    reply = await nc.request(subject, payload, timeout=10, headers=headers)
    return bytes(reply.data)


async def _raw_read(nc: Any, stream: str, subject: str) -> int:
    """Every message as bare payloads: batched direct gets on one long-lived inbox, as
    the driver does (bytes only, nothing decoded)."""
    import orjson

    inbox = nc.new_inbox()
    waiting: dict[str, tuple[asyncio.Future[Any], list[bytes]]] = {}

    async def on_message(msg: Any) -> None:
        end, got = waiting[msg.subject[len(inbox) + 1 :]]
        if not msg.data and msg.headers and "Status" in msg.headers:
            end.set_result(msg)
        else:
            got.append(msg.data)

    sub = await nc.subscribe(
        f"{inbox}.*", cb=on_message, pending_msgs_limit=0, pending_bytes_limit=0
    )
    seq, read, token = 1, 0, 0
    while True:
        token += 1
        end: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        got: list[bytes] = []
        waiting[str(token)] = (end, got)
        body = {"seq": seq, "batch": PAGE, "next_by_subj": subject, "no_hdr": True}
        await nc.publish(
            f"$JS.API.DIRECT.GET.{stream}", orjson.dumps(body), reply=f"{inbox}.{token}"
        )
        last = await end
        if not got:
            break
        read += len(got)
        seq = int(last.headers["Nats-Last-Sequence"]) + 1
    await sub.unsubscribe()
    return read


async def _raw(url: str, read_events: int) -> dict[str, float]:
    import nats
    import orjson

    nc = await nats.connect(url)
    stream = "RAW_BENCH"
    config = {
        "name": stream,
        "subjects": ["raw.>"],
        "storage": "file",
        "allow_atomic": True,
        "allow_direct": True,
    }
    await nc.request(f"$JS.API.STREAM.CREATE.{stream}", orjson.dumps(config))
    payload = TEXT.encode()
    out: dict[str, float] = {}

    start = time.perf_counter()
    for i in range(SINGLE):
        headers = {"Nats-Msg-Id": str(uuid.uuid4())}
        await nc.request(f"raw.s{i % 100}", payload, timeout=10, headers=headers)
    out["single"] = _rate(SINGLE, start)

    async def appender(t: int) -> None:
        for _ in range(PER_TASK):
            headers = {"Nats-Msg-Id": str(uuid.uuid4())}
            await nc.request(f"raw.c{t}", payload, timeout=10, headers=headers)

    start = time.perf_counter()
    await asyncio.gather(*(appender(t) for t in range(TASKS)))
    out["concurrent"] = _rate(TASKS * PER_TASK, start)

    start = time.perf_counter()
    for b in range(BATCHES):
        await _raw_batch(nc, f"raw.b{b}", BATCH)
    out["batch"] = _rate(BATCHES * BATCH, start)

    count = 0
    while count < read_events:
        await _raw_batch(nc, f"raw.f{count}", 500)
        count += 500

    start = time.perf_counter()
    read = await _raw_read(nc, stream, "raw.>")
    out["read_direct"] = _rate(read, start)

    from nats.js.api import DeliverPolicy

    total = read
    done = asyncio.get_running_loop().create_future()
    seen = 0

    async def on_ordered(msg: Any) -> None:
        nonlocal seen
        seen += 1
        if seen >= total and not done.done():
            done.set_result(None)

    start = time.perf_counter()
    js = nc.jetstream()
    sub = await js.subscribe(
        "raw.>", cb=on_ordered, ordered_consumer=True, deliver_policy=DeliverPolicy.ALL
    )
    await done
    out["read_ordered"] = _rate(seen, start)
    await sub.unsubscribe()
    await nc.request(f"$JS.API.STREAM.DELETE.{stream}", b"")

    await nc.request("$JS.API.STREAM.CREATE.MEM_BENCH", orjson.dumps(MEMORY_STREAM))
    start = time.perf_counter()
    for _ in range(BRIDGE_SINGLE):
        await nc.request("mem.a", payload, timeout=10)
    out["bridge_single"] = _rate(BRIDGE_SINGLE, start)

    async def memory_appender(t: int) -> None:
        for _ in range(BRIDGE_PER_TASK):
            await nc.request(f"mem.{t}", payload, timeout=10)

    start = time.perf_counter()
    await asyncio.gather(*(memory_appender(t) for t in range(TASKS)))
    out["bridge_concurrent"] = _rate(TASKS * BRIDGE_PER_TASK, start)
    await nc.request("$JS.API.STREAM.DELETE.MEM_BENCH", b"")
    await nc.close()
    return out


# -- the store through the Trio driver ---------------------------------------------------


async def _store(url: str, read_events: int) -> dict[str, float]:
    import trio

    from engine.drivers.nats import OutMsg, open_nats
    from engine.events import NewEvent
    from engine.stores.nats import delete_nats_store, open_nats_store
    from engine.testing.contract import Note, contract_codec

    def new(count: int) -> list[NewEvent[Any]]:
        return [NewEvent(Note(TEXT)) for _ in range(count)]

    out: dict[str, float] = {}
    async with (
        open_nats(url) as connection,
        open_nats_store(connection, contract_codec(), namespace="bench") as store,
    ):
        versions = [0] * 100
        start = time.perf_counter()
        for i in range(SINGLE):
            await store.append(f"seq-{i % 100}", new(1), expected_version=versions[i % 100])
            versions[i % 100] += 1
        out["single"] = _rate(SINGLE, start)

        async def appender(t: int) -> None:
            for n in range(PER_TASK):
                await store.append(f"con-{t}", new(1), expected_version=n)

        start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for t in range(TASKS):
                nursery.start_soon(appender, t)
        out["concurrent"] = _rate(TASKS * PER_TASK, start)

        start = time.perf_counter()
        for b in range(BATCHES):
            await store.append(f"batch-{b}", new(BATCH), expected_version=0)
        out["batch"] = _rate(BATCHES * BATCH, start)

        count = await store.head_position()
        while count < read_events:
            await store.append(f"fill-{count % 7}", new(500))
            count += 500

        # The driver alone: the same pages, bare payloads, nothing decoded.
        start, sequence, read = time.perf_counter(), 1, 0
        while True:
            batch = await connection.direct_get_batch(
                "bench_events", start=sequence, batch=PAGE, subject="bench.>", headers=False
            )
            if not batch.data:
                break
            read += len(batch.data)
            sequence = batch.last_sequence + 1
        out["read_direct"] = _rate(read, start)

        start, position, read = time.perf_counter(), 0, 0
        while page := await store.read_all(after_position=position, limit=PAGE):
            read += len(page)
            position = page[-1].position
        out["read_all"] = _rate(read, start)
        out["read_all_events"] = read

        start = time.perf_counter()
        loaded = await store.load("fill-0")
        out["load"] = _rate(len(loaded), start)
        out["load_events"] = len(loaded)
        await delete_nats_store(connection, "bench")

        await connection.api("$JS.API.STREAM.CREATE.MEM_BENCH", MEMORY_STREAM)
        payload = TEXT.encode()
        start = time.perf_counter()
        for _ in range(BRIDGE_SINGLE):
            await connection.publish(OutMsg("mem.a", payload))
        out["bridge_single"] = _rate(BRIDGE_SINGLE, start)

        async def memory_appender(t: int) -> None:
            for _ in range(BRIDGE_PER_TASK):
                await connection.publish(OutMsg(f"mem.{t}", payload))

        start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for t in range(TASKS):
                nursery.start_soon(memory_appender, t)
        out["bridge_concurrent"] = _rate(TASKS * BRIDGE_PER_TASK, start)
        await connection.api("$JS.API.STREAM.DELETE.MEM_BENCH")
    return out


async def _trio_asyncio(url: str, read_events: int) -> dict[str, float]:
    """nats-py on trio-asyncio's loop: one bridge crossing per call, as DESIGN measured."""
    import nats
    import orjson
    import trio
    import trio_asyncio

    out: dict[str, float] = {}
    async with trio_asyncio.open_loop():
        nc = await trio_asyncio.aio_as_trio(nats.connect)(url)
        stream = "TA_BENCH"
        config = {
            "name": stream,
            "subjects": ["ta.>"],
            "storage": "file",
            "allow_atomic": True,
            "allow_direct": True,
        }
        await trio_asyncio.aio_as_trio(nc.request)(
            f"$JS.API.STREAM.CREATE.{stream}", orjson.dumps(config)
        )
        request = trio_asyncio.aio_as_trio(nc.request)
        payload = TEXT.encode()
        start = time.perf_counter()
        for i in range(SINGLE):
            await request(f"ta.s{i % 100}", payload, timeout=10, headers={"Nats-Msg-Id": str(i)})
        out["single"] = _rate(SINGLE, start)

        async def appender(t: int) -> None:
            for n in range(PER_TASK):
                await request(f"ta.c{t}", payload, timeout=10, headers={"Nats-Msg-Id": f"{t}-{n}"})

        start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for t in range(TASKS):
                nursery.start_soon(appender, t)
        out["concurrent"] = _rate(TASKS * PER_TASK, start)
        batch = trio_asyncio.aio_as_trio(_raw_batch)
        start = time.perf_counter()
        for b in range(BATCHES):
            await batch(nc, f"ta.b{b}", BATCH)
        out["batch"] = _rate(BATCHES * BATCH, start)
        count = BATCHES * BATCH + SINGLE
        while count < read_events:
            await batch(nc, f"ta.f{count}", 500)
            count += 500
        # One bridge crossing per page, as the store does through its driver.
        read_page = trio_asyncio.aio_as_trio(_raw_read)
        start = time.perf_counter()
        read = await read_page(nc, stream, "ta.>")
        out["read_direct"] = _rate(read, start)
        await request(f"$JS.API.STREAM.DELETE.{stream}", b"")

        await request("$JS.API.STREAM.CREATE.MEM_BENCH", orjson.dumps(MEMORY_STREAM))
        start = time.perf_counter()
        for _ in range(BRIDGE_SINGLE):
            await request("mem.a", payload, timeout=10)
        out["bridge_single"] = _rate(BRIDGE_SINGLE, start)

        async def memory_appender(t: int) -> None:
            for _ in range(BRIDGE_PER_TASK):
                await request(f"mem.{t}", payload, timeout=10)

        start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for t in range(TASKS):
                nursery.start_soon(memory_appender, t)
        out["bridge_concurrent"] = _rate(TASKS * BRIDGE_PER_TASK, start)
        await request("$JS.API.STREAM.DELETE.MEM_BENCH", b"")
        await trio_asyncio.aio_as_trio(nc.close)()
    return out


def _variant(name: str, url: str, read_events: int) -> dict[str, float]:
    """One variant in a fresh process, so that no run inherits another's asyncio state."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.nats_store_quick",
            "--variant",
            name,
            url,
            str(read_events),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _median(runs: list[dict[str, float]], key: str) -> float:
    return statistics.median(run[key] for run in runs)


def main() -> None:
    if len(sys.argv) > 4 and sys.argv[1] == "--variant":
        name, url, read_events = sys.argv[2], sys.argv[3], int(sys.argv[4])
        if name == "raw":
            result = asyncio.run(_raw(url, read_events))
        else:
            import trio

            runner = _store if name == "store" else _trio_asyncio
            result = trio.run(runner, url, read_events)
        print(json.dumps(result))
        return
    read_events = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3

    from tests.servers import run_nats

    runs: dict[str, list[dict[str, float]]] = {"raw": [], "store": [], "trio-asyncio": []}
    with run_nats() as server:
        # Interleaved rounds, medians reported: fsync-bound figures swing with whatever
        # else uses the disk, and each variant should see the same weather.
        for _ in range(rounds):
            for name, results in runs.items():
                results.append(_variant(name, server.url, read_events))

    raw, store, bridged = runs["raw"], runs["store"], runs["trio-asyncio"]
    rows = [
        ("single-event appends, sequential", "single", "single", "single"),
        (f"single-event appends, {TASKS} concurrent", "concurrent", "concurrent", "concurrent"),
        (f"{BATCH}-event atomic batch (events/s)", "batch", "batch", "batch"),
        (
            f"read_all, {_median(store, 'read_all_events'):.0f} events (events/s)",
            "read_all",
            "read_direct",
            None,
        ),
        ("  bare payloads via direct get (events/s)", "read_direct", "read_direct", "read_direct"),
        (
            "bridge only: publish+ack, memory stream, 1 caller",
            "bridge_single",
            "bridge_single",
            "bridge_single",
        ),
        (
            f"bridge only: publish+ack, memory stream, {TASKS} callers",
            "bridge_concurrent",
            "bridge_concurrent",
            "bridge_concurrent",
        ),
    ]
    print(f"medians of {rounds} interleaved rounds")
    print(f"{'workload':52} {'store':>9} {'raw asyncio':>12} {'ratio':>6} {'trio-asyncio':>13}")
    for label, mine, floor, other in rows:
        ours, theirs = _median(store, mine), _median(raw, floor)
        bridged_text = f"{_median(bridged, other):13.0f}" if other else f"{'':13}"
        print(f"{label:52} {ours:9.0f} {theirs:12.0f} {ours / theirs:6.2f} {bridged_text}")
    label = f"load one stream of {_median(store, 'load_events'):.0f} events (events/s)"
    print(f"{label:52} {_median(store, 'load'):9.0f}")
    print("(bridge rows: the 'store' column is the driver alone, NatsConnection.publish)")
    label = "raw ordered consumer replay (events/s)"
    print(f"{label:52} {'':9} {_median(raw, 'read_ordered'):12.0f}")


if __name__ == "__main__":
    main()
