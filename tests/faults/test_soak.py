"""A bounded soak: mixed commands against a running ``eskit run`` process, with faults
(hostile bodies, retried command ids, requests abandoned mid-flight), while the engine's
RSS and open file descriptors are sampled from /proc.

Growth must stay bounded once warmed up, and every accepted deposit is stored exactly once.
"""

from __future__ import annotations

import json
import os
import random
import signal
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.daemon.test_daemon_process import start_daemon
from tests.daemon.test_engine import http
from tests.faults.ledger import RESULTS_ENV
from tests.servers import free_port

CLIENTS = 4
PAGE = 1000
ACCOUNTS = 8
WARMUP = 0.25  # share of the run before the baseline sample
RSS_SLACK = 48 * 1024 * 1024
FD_SLACK = 16
ABANDON = 0.15


def _sample(pid: int) -> tuple[int, int]:
    """(RSS in bytes, open file descriptors) of a process, from /proc."""
    status = Path(f"/proc/{pid}/status").read_text()
    rss = next(
        int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmRSS:")
    )
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


@pytest.mark.parametrize(
    "seconds",
    # The slow tier runs past pytest's default timeout (300 s) on purpose.
    [60, pytest.param(600, marks=[pytest.mark.slow, pytest.mark.timeout(900)])],
)
async def test_soak(tmp_path: Path, seconds: int) -> None:
    """RSS and fds stay flat under mixed load with faults; accepted deposits appear once."""
    port = free_port()
    config = tmp_path / "eskit.toml"
    config.write_text(
        f'[engine]\nnode_id = "soak"\ndata_dir = "{tmp_path / "data"}"\ngrace_period = 5\n\n'
        f"[http]\nport = {port}\nmax_body_bytes = 65536\n"
    )
    proc, url = await start_daemon(config)
    output = bytearray()

    async def drain() -> None:
        # The engine logs every request: an unread pipe would fill and stall it.
        assert proc.stdout is not None
        while chunk := await proc.stdout.receive_some(65536):
            output.extend(chunk)
            del output[:-8192]

    accepted: dict[str, set[str]] = {f"soak-{n}": set() for n in range(ACCOUNTS)}
    samples: list[tuple[float, int, int]] = []
    counts = {"ok": 0, "rejected": 0, "abandoned": 0, "duplicate": 0}
    async with trio.open_nursery() as outer:
        outer.start_soon(drain)
        try:
            await _load(url, accepted, samples, counts, proc.pid, seconds)
        finally:
            proc.send_signal(signal.SIGTERM)
            with trio.fail_after(20):
                code = await proc.wait()
    assert code == 0, output.decode(errors="replace")
    stored = sum(len(commands) for commands in accepted.values())
    baseline = next(s for s in samples if s[0] >= seconds * WARMUP)
    peak_rss = max(s[1] for s in samples if s[0] >= baseline[0])
    peak_fds = max(s[2] for s in samples if s[0] >= baseline[0])
    target = os.environ.get(RESULTS_ENV)
    if target:
        with Path(target).open("a") as file:  # noqa: ASYNC230 (a few bytes, once)
            row = {
                "test": "soak",
                "backend": "sqlite",
                "runs": 1,
                "seconds": seconds,
                "stored": stored,
                "baseline_rss": baseline[1],
                "peak_rss": peak_rss,
                "baseline_fds": baseline[2],
                "peak_fds": peak_fds,
                **counts,
            }
            file.write(json.dumps(row) + "\n")
    assert peak_rss <= baseline[1] + RSS_SLACK, samples
    assert peak_fds <= baseline[2] + FD_SLACK, samples


async def _load(
    url: str,
    accepted: dict[str, set[str]],
    samples: list[tuple[float, int, int]],
    counts: dict[str, int],
    pid: int,
    seconds: int,
) -> None:
    """Open the accounts, run the clients and the sampler, then check every stream."""
    for account in accepted:
        status, body = await http(
            f"{url}/commands/bank/OpenAccount",
            method="POST",
            body={"stream_id": account, "data": {"initial_balance": 1000}},
        )
        assert status == 200, body
    start = trio.current_time()
    deadline = start + seconds

    async def client(n: int) -> None:
        rng = random.Random(n)
        sent = 0
        while trio.current_time() < deadline:
            sent += 1
            account = f"soak-{rng.randrange(ACCOUNTS)}"
            command_id = f"c{n}-{sent}"
            choice = rng.random()
            if choice < 0.1:
                status, _ = await http(
                    f"{url}/commands/bank/Deposit", method="POST", raw=rng.randbytes(200)
                )
                assert 400 <= status < 500
                counts["rejected"] += 1
                continue
            if choice < ABANDON:
                # Abandon a request after sending it: the engine must not leak the socket.
                with trio.move_on_after(0.001):
                    await http(f"{url}/streams/{account}?limit=1000")
                counts["abandoned"] += 1
                continue
            body = {
                "stream_id": account,
                "data": {"amount": 100 + sent},
                "command_id": command_id,
            }
            for _attempt in range(2 if choice < 0.3 else 1):
                status, reply = await http(f"{url}/commands/bank/Deposit", method="POST", body=body)
                assert status == 200, reply
                counts["duplicate" if reply.get("duplicate") else "ok"] += 1
            accepted[account].add(command_id)

    async def sampler() -> None:
        while trio.current_time() < deadline:
            rss, fds = await trio.to_thread.run_sync(_sample, pid)
            samples.append((trio.current_time() - start, rss, fds))
            await trio.sleep(1)

    with trio.fail_after(seconds + 120):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sampler)
            for n in range(CLIENTS):
                nursery.start_soon(client, n)
    for account, commands in accepted.items():
        events: list[dict[str, Any]] = []
        while True:
            status, page = await http(f"{url}/streams/{account}?after={len(events)}&limit={PAGE}")
            assert status == 200
            events += page["events"]
            if len(page["events"]) < PAGE:
                break
        stream = {"events": events}
        deposits = [
            e
            for e in stream["events"]
            if e["type"] == "bank.MoneyDeposited" and e["data"]["amount"] >= 100
        ]
        assert len(deposits) == len(commands), account
        assert [e["version"] for e in stream["events"]] == list(range(1, len(stream["events"]) + 1))
