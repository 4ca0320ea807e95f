"""A live engine (``eskit run`` in a subprocess) and a reply-cutting proxy in a thread,
shared by the client tests of the sync, asyncio and Trio flavours."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from tests.faults.proxy import CutProxy, cut_proxy
from tests.servers import free_port

START_TIMEOUT = 60.0


@attrs.frozen
class LiveEngine:
    """An ``eskit run`` process: its URL and port, and where its output goes."""

    url: str
    port: int
    output: Path


def write_config(path: Path, data_dir: Path, port: int, **http: Any) -> Path:
    """An engine config on SQLite in ``data_dir``, HTTP on ``port``."""
    extra = "".join(f'{key} = "{value}"\n' for key, value in http.items())
    path.write_text(
        f"""
[engine]
node_id = "client-test"
data_dir = "{data_dir}"
grace_period = 5

[http]
port = {port}
{extra}
[runners]
poll_interval = 0.2
"""
    )
    return path


@contextmanager
def run_engine(config: Path, output: Path, *, env: dict[str, str] | None = None) -> Iterator[int]:
    """Run ``eskit run -c config`` until the block ends (SIGTERM, then a bounded wait).

    Its output goes to a file, read back until the "ready" line: a pipe nobody reads
    after start-up would fill and block the engine. Yields the pid.
    """
    with output.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "engine", "run", "-c", str(config)],
            stdout=sink,
            stderr=subprocess.STDOUT,
            env={**os.environ, "ESKIT_LOG_LEVEL": "WARNING", **(env or {})},
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while b"ready (stop" not in output.read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the engine did not start:\n{output.read_text()}")
            time.sleep(0.05)
        yield proc.pid
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def live_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveEngine]:
    """One engine process for the client tests (each test uses its own streams)."""
    root = tmp_path_factory.mktemp("client-engine")
    port = free_port()
    config = write_config(root / "eskit.toml", root / "data", port)
    output = root / "engine.log"
    with run_engine(config, output):
        yield LiveEngine(f"http://127.0.0.1:{port}", port, output)


@attrs.define
class ThreadProxy:
    """A :class:`CutProxy` running on its own Trio loop in a thread, for sync and asyncio
    tests: ``arm()`` cuts the reply of the next request."""

    proxy: CutProxy
    token: trio.lowlevel.TrioToken

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.proxy.port}"

    @property
    def cuts(self) -> int:
        return trio.from_thread.run_sync(lambda: self.proxy.cuts, trio_token=self.token)

    def arm(self) -> None:
        trio.from_thread.run_sync(self.proxy.arm, trio_token=self.token)


@contextmanager
def proxy_in_thread(target_port: int) -> Iterator[ThreadProxy]:
    """Run :func:`cut_proxy` to ``target_port`` in a thread for the block."""
    started = threading.Event()
    handle: dict[str, Any] = {}

    async def serve() -> None:
        async with cut_proxy(target_port) as proxy:
            handle["proxy"] = ThreadProxy(proxy, trio.lowlevel.current_trio_token())
            handle["stop"] = stop = trio.Event()
            started.set()
            await stop.wait()

    def main() -> None:
        try:
            trio.run(serve)
        except BaseException as error:  # handed to the test's thread below
            handle["error"] = error
            started.set()

    thread = threading.Thread(target=main, name="cut-proxy")
    thread.start()
    try:
        assert started.wait(30), "the proxy did not start"
        if "error" in handle:
            raise handle["error"]
        running: ThreadProxy = handle["proxy"]
        yield running
    finally:
        if "stop" in handle:
            trio.from_thread.run_sync(handle["stop"].set, trio_token=handle["proxy"].token)
        thread.join(30)
    if "error" in handle:
        raise handle["error"]


@pytest.fixture
def proxy(live_engine: LiveEngine) -> Iterator[ThreadProxy]:
    """A reply-cutting proxy in front of the live engine."""
    with proxy_in_thread(live_engine.port) as running:
        yield running
