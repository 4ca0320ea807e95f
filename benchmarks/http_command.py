"""``http.command``: the engine's HTTP door under a real load generator (wrk).

The daemon (``python -m engine run``, SQLite at its default durability, the bank plugin)
takes random ``Deposit`` commands over 1,000 accounts from ``wrk -t1 -c64`` (keep-alive),
beside, in the same run:

* the in-process ``command.concurrent`` on SQLite (the same engine without HTTP): the
  ``http.command`` row's floor;
* the peer: FastAPI + uvicorn + the eventsourcing library's bank on SQLite, same routes,
  bodies and load;
* ``http.noop``: eskit's HTTP server with an app that answers a fixed body, beside a bare
  Trio + httptools server doing the same (its floor).

After each engine run it checks that nothing acknowledged was lost: the deposits stored
(the log's head minus the 1,000 openings) are at least the 2xx answers wrk counted.

wrk comes from Debian; it is installed on first use when missing and we are root (as the
Makefile's ``browser`` target installs Chromium), else the case is skipped with a note.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs

from benchmarks.harness import Result

ACCOUNTS = 1000
CONNECTIONS = 64

_DEPOSITS = textwrap.dedent(
    """
    wrk.method = "POST"
    wrk.headers["Content-Type"] = "application/json"
    math.randomseed(12345)
    request = function()
      local account = math.random(0, LAST)
      local body = '{"stream_id":"acc-' .. account .. '","data":{"amount":1}}'
      return wrk.format(nil, "/commands/bank/Deposit", nil, body)
    end
    """
).replace("LAST", str(ACCOUNTS - 1))


@attrs.frozen
class Load:
    """What wrk measured."""

    rate: float
    requests: int
    failed: int
    p50_ms: float
    p99_ms: float

    @property
    def acknowledged(self) -> int:
        return self.requests - self.failed


def ensure_wrk() -> str | None:
    """The path of wrk, installing Debian's package first when missing and root."""
    found = shutil.which("wrk")
    if found or os.geteuid() != 0 or not shutil.which("apt-get"):
        return found
    print("   installing Debian's wrk for http.command", file=sys.stderr, flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, check=False)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "wrk"], env=env, capture_output=True, check=False
    )
    return shutil.which("wrk")


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _latency(output: str, percent: str) -> float:
    match = re.search(rf"^\s+{percent}%\s+([0-9.]+)(us|ms|s)\s*$", output, re.MULTILINE)
    if match is None:
        raise RuntimeError(f"no {percent}% latency in wrk's output:\n{output}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def run_wrk(wrk: str, url: str, seconds: float, script: Path | None) -> Load:
    """``wrk -t1 -c64 --latency`` against ``url`` for ``seconds``."""
    command = [wrk, "-t1", f"-c{CONNECTIONS}", f"-d{seconds:g}s", "--latency", "--timeout", "10s"]
    if script is not None:
        command += ["-s", str(script)]
    output = subprocess.run(
        [*command, url], capture_output=True, text=True, check=True, timeout=seconds + 60
    ).stdout
    requests = re.search(r"^\s+(\d+) requests in", output, re.MULTILINE)
    rate = re.search(r"^Requests/sec:\s+([0-9.]+)", output, re.MULTILINE)
    if requests is None or rate is None:
        raise RuntimeError(f"unexpected wrk output:\n{output}")
    failed = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return Load(
        rate=float(rate.group(1)),
        requests=int(requests.group(1)),
        failed=int(failed.group(1)) if failed else 0,
        p50_ms=_latency(output, "50"),
        p99_ms=_latency(output, "99"),
    )


@contextlib.contextmanager
def _process(
    command: list[str], log: Path, *, ready: str = "http", env: dict[str, str] | None = None
) -> Iterator[str]:
    """Start a server process writing to ``log`` (``env`` added to the environment);
    yield its URL (the first line of its output holding one) once a line holds
    ``ready``; stop it with SIGTERM."""
    with log.open("w") as out:
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )
    try:
        deadline = time.monotonic() + 60
        url = ""
        while time.monotonic() < deadline and process.poll() is None:
            text = log.read_text()
            found = re.search(r"https?://[0-9.]+:\d+", text)
            if found and ready in text[found.start() :]:
                url = found.group(0)
                break
            time.sleep(0.05)
        if not url:
            raise RuntimeError(f"{command} did not start:\n{log.read_text()}")
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _post(conn: http.client.HTTPConnection, path: str, body: dict[str, object]) -> int:
    conn.request("POST", path, json.dumps(body).encode(), {"Content-Type": "application/json"})
    response = conn.getresponse()
    response.read()
    return response.status


def _open_accounts(url: str) -> None:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    for index in range(ACCOUNTS):
        body = {"stream_id": f"acc-{index}", "data": {"initial_balance": 0}}
        status = _post(conn, "/commands/bank/OpenAccount", body)
        if status != 200:
            raise RuntimeError(f"opening acc-{index} answered {status}")
    conn.close()


def _head(url: str) -> int:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.request("GET", "/events?limit=1")
    head = int(json.loads(conn.getresponse().read())["head"])
    conn.close()
    return head


def engine_over_http(
    wrk: str, folder: Path, seconds: float, script: Path, store: dict[str, str]
) -> tuple[Load, int]:
    """The daemon (``[store]`` as given) under wrk; the load and the deposits stored."""
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "eskit.toml"
    config.write_text(
        f'[engine]\ndata_dir = "{folder / "data"}"\nnode_id = "bench"\n'
        '[http]\nport = 0\n[plugins]\nenabled = ["bank"]\n[store]\n'
        + "".join(f"{key} = {json.dumps(value)}\n" for key, value in store.items())
    )
    daemon = [sys.executable, "-m", "engine", "run", "-c", str(config)]
    with _process(daemon, folder / "daemon.log", ready="ready") as url:
        _open_accounts(url)
        head = _head(url)
        load = run_wrk(wrk, url, seconds, script)
        stored = _head(url) - head
    return load, stored


def peer_over_http(
    wrk: str, folder: Path, seconds: float, script: Path, env: dict[str, str]
) -> Load | None:
    """FastAPI + uvicorn + eventsourcing's bank (persistence from ``env``) under the same
    load."""
    try:
        import eventsourcing  # noqa: F401
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        print("   http.command: no peer (pip install fastapi uvicorn)", file=sys.stderr)
        return None
    folder.mkdir(parents=True, exist_ok=True)
    peer = [sys.executable, "-m", "benchmarks.http_servers", "peer"]
    with _process(peer, folder / "peer.log", env=env) as url:
        _open_accounts(url)
        return run_wrk(wrk, url, seconds, script)


def fixed_reply(wrk: str, folder: Path, kind: str, seconds: float) -> Load:
    """wrk GETs against one of the fixed-reply servers (``noop`` or ``bare``)."""
    command = [sys.executable, "-m", "benchmarks.http_servers", kind]
    with _process(command, folder / f"{kind}.log") as url:
        return run_wrk(wrk, url + "/", seconds, None)


def engine_in_process(folder: Path, seconds: float, store: dict[str, str]) -> float:
    """The same daemon (bank plugin, its runners, logging, ``[store]`` as given) without
    HTTP: 64 tasks calling ``Engine.send_command`` with random Deposits for ``seconds``;
    commands/s."""
    import trio

    from engine.daemon.config import parse_config
    from engine.observability.logging import configure_logging

    config = parse_config(
        {
            "engine": {"data_dir": str(folder / "data"), "node_id": "bench"},
            "http": {"enabled": False},
            "plugins": {"enabled": ["bank"]},
            "store": store,
        },
        environ={},
    )
    # Log as `eskit run` does (INFO, text, one line per command), to a file.
    root = logging.getLogger()
    level = root.level
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "engine.log").open("w") as log:
        handler = configure_logging(node_id="bench", stream=log)
        try:
            return float(trio.run(_send_deposits, config, seconds))
        finally:
            root.removeHandler(handler)
            root.setLevel(level)


async def _send_deposits(config: Any, seconds: float) -> float:
    import random

    import trio

    from engine.daemon.engine import open_engine

    done = 0
    async with open_engine(config) as engine:
        for index in range(ACCOUNTS):
            await engine.send_command(
                "bank",
                "OpenAccount",
                stream_id=f"acc-{index}",
                data={"initial_balance": 0},
                command_id=None,
            )

        async def client(seed: int) -> None:
            nonlocal done
            pick = random.Random(seed)
            while True:
                await engine.send_command(
                    "bank",
                    "Deposit",
                    stream_id=f"acc-{pick.randrange(ACCOUNTS)}",
                    data={"amount": 1},
                    command_id=None,
                )
                done += 1

        started = trio.current_time()
        with trio.move_on_after(seconds):
            async with trio.open_nursery() as nursery:
                for seed in range(CONNECTIONS):
                    nursery.start_soon(client, seed)
        return done / (trio.current_time() - started)


def ensure_script(folder: Path) -> Path:
    """The wrk script sending random Deposits."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "deposits.lua"
    script.write_text(_DEPOSITS)
    return script


def command_case(
    wrk: str,
    folder: Path,
    seconds: float,
    *,
    backend: str,
    store: dict[str, str],
    in_process: float,
    engine_rate: float,
    peer_env: dict[str, str],
) -> Result:
    """The ``http.command`` row of one backend."""
    script = ensure_script(folder)
    load, stored = engine_over_http(wrk, folder / "engine", seconds, script, store)
    lost = load.acknowledged - stored
    if lost > 0:
        print(f"   http.command: {lost} ACKNOWLEDGED DEPOSITS LOST", file=sys.stderr, flush=True)
    peer = peer_over_http(wrk, folder / "peer", seconds, script, peer_env)
    return Result(
        "http.command",
        backend,
        "commands",
        load.rate,
        floor=in_process,
        peer=peer.rate if peer else None,
        p50_ms=load.p50_ms,
        p99_ms=load.p99_ms,
        notes=(
            f"eskit run (bank plugin, {backend}) under wrk -t1 -c{CONNECTIONS}, random "
            f"Deposits over {ACCOUNTS} accounts; floor = in-process command.concurrent of "
            f"this run; peer = FastAPI + uvicorn + eventsourcing on {backend}"
            + (f" (p50 {peer.p50_ms:.2f} ms, p99 {peer.p99_ms:.2f} ms)" if peer else "")
            + "; the same daemon without HTTP (Engine.send_command, 64 tasks): "
            f"{engine_rate:,.0f}/s ({load.rate / engine_rate:.2f}x)"
            + f"; acknowledged {load.acknowledged}, stored {stored}"
            + (f", {load.failed} non-2xx" if load.failed else "")
            + (" (LOST)" if lost > 0 else ", none lost")
        ),
    )


def noop_case(wrk: str, folder: Path, seconds: float) -> Result:
    """The ``http.noop`` row: eskit's server with a fixed reply beside the bare server."""
    folder.mkdir(parents=True, exist_ok=True)
    noop = fixed_reply(wrk, folder, "noop", seconds)
    bare = fixed_reply(wrk, folder, "bare", seconds)
    return Result(
        "http.noop",
        "-",
        "requests",
        noop.rate,
        floor=bare.rate,
        p50_ms=noop.p50_ms,
        p99_ms=noop.p99_ms,
        notes="eskit's HTTP server with a fixed-reply app; floor = a bare trio.serve_tcp + "
        "httptools server writing the same reply",
    )
