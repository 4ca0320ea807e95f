"""Engine processes for the cluster tests: configs, start, SIGKILL, SIGTERM, HTTP helpers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import trio

from tests.cluster.client import HttpConnection, NodeDown

#: Seconds an engine process may take to answer its liveness check after it started.
START_TIMEOUT = 60.0
REPO = Path(__file__).resolve().parents[2]


def toml_value(value: Any) -> str:
    """``value`` as a TOML value (strings, numbers, booleans and lists of strings)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_config(path: Path, sections: Mapping[str, Mapping[str, Any]]) -> Path:
    """Write a TOML config file with ``sections``; return its path."""
    lines = []
    for name, values in sections.items():
        lines.append(f"[{name}]")
        lines.extend(f"{key} = {toml_value(value)}" for key, value in values.items())
        lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


@attrs.define(eq=False)
class Node:
    """One ``eskit run`` process with its config, its log file and its HTTP port."""

    name: str
    config: Path
    port: int
    log: Path
    env: Mapping[str, str]
    process: trio.Process | None = None

    @property
    def url(self) -> str:
        """The node's HTTP base URL."""
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, size: int = 4000) -> str:
        """The end of the node's output."""
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return text[-size:]

    async def start(self) -> None:
        """Start the process and wait until its HTTP ingress answers."""
        with self.log.open("ab") as log:
            self.process = await trio.lowlevel.open_process(
                [sys.executable, "-m", "engine", "run", "-c", str(self.config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                env={**_inherited_env(), **self.env},
            )
        probe = HttpConnection(self.url)
        try:
            with trio.fail_after(START_TIMEOUT):
                while True:
                    if self.process.returncode is not None:
                        raise AssertionError(f"{self.name} exited:\n{self.log_tail()}")
                    try:
                        status, _ = await probe.request("GET", "/health/live")
                        if status == 200:
                            return
                    except NodeDown:
                        pass
                    # The process announces nothing we can wait on: look again soon.
                    with trio.move_on_after(0.1):
                        await self.process.wait()
        finally:
            await probe.aclose()

    def kill(self) -> None:
        """SIGKILL: the node vanishes without releasing anything."""
        assert self.process is not None
        self.process.kill()

    async def stop(self) -> int:
        """SIGTERM and wait (bounded); SIGKILL if it does not exit. Returns the exit code."""
        process = self.process
        if process is None:
            return 0
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            with trio.move_on_after(30):
                await process.wait()
            if process.returncode is None:
                process.kill()
        return await process.wait()

    async def get(self, path: str) -> Any:
        """GET ``path`` on this node and return the JSON body (asserting 200)."""
        connection = HttpConnection(self.url)
        try:
            status, body = await connection.request("GET", path)
        finally:
            await connection.aclose()
        assert status == 200, (path, status, body)
        return body


def _inherited_env() -> dict[str, str]:
    """This process's environment without config overrides (``ESKIT_<SECTION>__<KEY>``)."""
    return {
        key: value
        for key, value in os.environ.items()
        if not (key.startswith("ESKIT_") and "__" in key)
    }
