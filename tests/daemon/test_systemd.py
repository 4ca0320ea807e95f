"""The engine under a service manager: the notify protocol spoken to a socket the test
owns (as systemd would), the watchdog, SIGHUP, and log files reopened after rotation."""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio

from engine import NewEvent
from engine.codec import Codec
from engine.daemon.config import load_config
from engine.daemon.engine import merged_registry, open_engine, open_store_from_config
from engine.daemon.plugins import load_plugins
from engine.daemon.systemd import (
    http_alive,
    notify_address,
    notify_service,
    reopen_log_files,
    watchdog_interval,
)
from tests.daemon.systemd_gate import GATE_ENV
from tests.daemon.test_engine import config_for, http
from tests.servers import free_port

ROOT = Path(__file__).resolve().parents[2]


@asynccontextmanager
async def notify_socket(address: str) -> AsyncIterator[trio.socket.SocketType]:
    """A datagram socket bound at ``address``, as the service manager holds one."""
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    with sock:
        await sock.bind(address)
        yield sock


async def receive(sock: trio.socket.SocketType) -> dict[str, str]:
    """The next notification, as its ``KEY=VALUE`` fields."""
    data = await sock.recv(4096)
    return dict(line.split("=", 1) for line in data.decode().splitlines() if line)


async def until(
    sock: trio.socket.SocketType, key: str, seen: list[dict[str, str]]
) -> dict[str, str]:
    """Receive notifications (recording them in ``seen``) until one carries ``key``."""
    while True:
        message = await receive(sock)
        seen.append(message)
        if key in message:
            return message


def write_config(tmp_path: Path, port: int, *, gate: bool = False) -> Path:
    """A SQLite engine config in ``tmp_path``; with ``gate``, the gate plugin is loaded too."""
    config = tmp_path / "eskit.toml"
    plugins = (
        '\n[plugins]\nenabled = ["bank", "gate"]\nmodules = ["tests.daemon.systemd_gate:plugin"]\n'
        if gate
        else ""
    )
    config.write_text(
        f'[engine]\nnode_id = "unit"\ndata_dir = "{tmp_path / "data"}"\ngrace_period = 5\n'
        f"[http]\nport = {port}\n[runners]\npoll_interval = 0.2\n{plugins}"
    )
    return config


async def start(config: Path, tmp_path: Path, **env: str) -> trio.Process:
    """``eskit run -c config`` with ``env`` added, its output in ``tmp_path/engine.log``."""
    environ = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
    with (tmp_path / "engine.log").open("wb") as output:
        return await trio.lowlevel.open_process(
            [sys.executable, "-m", "engine", "run", "-c", str(config)],
            stdout=output,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env={**environ, "ESKIT_LOG_LEVEL": "WARNING", **env},
        )


async def stop(proc: trio.Process) -> int:
    """SIGTERM and wait for the exit code (shielded, so a test that timed out still reaps
    its engine; SIGKILL after 20 s)."""
    proc.send_signal(signal.SIGTERM)
    with trio.move_on_after(20, shield=True):
        return await proc.wait()
    proc.kill()
    with trio.CancelScope(shield=True):
        await proc.wait()
    return -signal.SIGKILL


async def test_ready_only_once_http_answers_and_runners_caught_up(tmp_path: Path) -> None:
    """READY=1 comes after HTTP answers and only once a held-back runner has caught up."""
    config_path = write_config(tmp_path, free_port(), gate=True)
    config = load_config(str(config_path))
    # History for the runners to catch up with: the gate's runner stops at its first event.
    codec: Codec[object] = Codec(merged_registry(load_plugins(["bank"])))
    from eskit_bank.domain import AccountOpened

    async with open_store_from_config(config, codec) as store:
        for n in range(50):
            await store.append(f"acc-{n}", [NewEvent(AccountOpened(initial_balance=5))])
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    url = f"http://127.0.0.1:{config.http.port}"
    address = str(tmp_path / "notify.sock")
    seen: list[dict[str, str]] = []
    with trio.fail_after(60):
        async with notify_socket(address) as sock:
            proc = await start(
                config_path, tmp_path, NOTIFY_SOCKET=address, **{GATE_ENV: str(gate)}
            )
            try:
                # Serving, but the gate's runner is held at position 1: no READY yet.
                message = await until(sock, "STATUS", seen)
                assert message["STATUS"].startswith("catching up: ")
                status, _ = await http(f"{url}/health/live")
                assert status == 200
                status, runners = await http(f"{url}/runners")
                assert runners["gate.gate"]["checkpoint"] in (None, 0)
                with trio.move_on_after(1):
                    await until(sock, "READY", seen)
                assert not any("READY" in m for m in seen)
                await trio.to_thread.run_sync(gate.write_bytes, b"go")
                ready = await until(sock, "READY", seen)
                assert ready["READY"] == "1"
                assert "serving on" in ready["STATUS"]
                status, runners = await http(f"{url}/runners")
                assert status == 200
                assert {name: r["checkpoint"] for name, r in runners.items()} == {
                    name: 50 for name in runners
                }
            finally:
                code = await stop(proc)
            assert code == 0, (tmp_path / "engine.log").read_text()
            stopping = await until(sock, "STOPPING", seen)
            assert stopping["STOPPING"] == "1"


async def test_abstract_socket_watchdog_and_stopping(tmp_path: Path) -> None:
    """On an abstract ``@name`` socket: READY=1, then WATCHDOG=1 pings, and STOPPING=1 on SIGTERM."""
    port = free_port()
    config_path = write_config(tmp_path, port)
    name = f"eskit-test-{secrets.token_hex(6)}"
    seen: list[dict[str, str]] = []
    with trio.fail_after(60):
        async with notify_socket("\0" + name) as sock:
            proc = await start(
                config_path, tmp_path, NOTIFY_SOCKET=f"@{name}", WATCHDOG_USEC="400000"
            )
            try:
                await until(sock, "READY", seen)
                status, _ = await http(f"http://127.0.0.1:{port}/health/ready")
                assert status == 200
                await until(sock, "WATCHDOG", seen)
                pings = 0
                while pings < 3:
                    pings += "WATCHDOG" in await until(sock, "WATCHDOG", seen)
            finally:
                code = await stop(proc)
            assert code == 0, (tmp_path / "engine.log").read_text()
            await until(sock, "STOPPING", seen)
    assert all(m.get("WATCHDOG", "1") == "1" for m in seen)


async def test_sighup_keeps_the_engine_running(tmp_path: Path) -> None:
    """SIGHUP (logrotate's signal) reopens log files and leaves the engine serving."""
    port = free_port()
    proc = await start(write_config(tmp_path, port), tmp_path)
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "engine.log"
    with trio.fail_after(60):
        try:
            while b"ready (stop" not in log.read_bytes():
                assert proc.poll() is None, log.read_text()
                await trio.sleep(0.05)
            proc.send_signal(signal.SIGHUP)
            while b"received SIGHUP" not in log.read_bytes():
                assert proc.poll() is None, log.read_text()
                await trio.sleep(0.05)
            status, _ = await http(f"{url}/health/live")
            assert status == 200
        finally:
            code = await stop(proc)
    assert code == 0, log.read_text()
    assert "received SIGHUP, reopened 0 log files" in log.read_text()


async def test_watchdog_stays_silent_while_http_does_not_answer(tmp_path: Path) -> None:
    """While the ingress accepts but never answers no WATCHDOG=1 goes out; once it answers, pings resume."""
    address = str(tmp_path / "notify.sock")
    silent = trio.socket.socket()
    await silent.bind(("127.0.0.1", 0))
    silent.listen(16)  # accepts (in the kernel) and never answers: a hung ingress
    silent_url = f"http://127.0.0.1:{silent.getsockname()[1]}"
    environ = {"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "200000"}
    seen: list[dict[str, str]] = []
    with silent, trio.fail_after(60):
        async with notify_socket(address) as sock, open_engine(config_for(tmp_path)) as engine:
            live_urls = list(engine.http_urls)
            engine.http_urls = [silent_url]
            async with notify_service(engine, environ=environ):
                await until(sock, "READY", seen)
                with trio.move_on_after(1):  # five watchdog intervals
                    await until(sock, "WATCHDOG", seen)
                assert not any("WATCHDOG" in m for m in seen)
                engine.http_urls = live_urls
                await until(sock, "WATCHDOG", seen)
            await until(sock, "STOPPING", seen)


async def test_http_alive_probe(tmp_path: Path) -> None:
    """The probe is true for a live engine and false for a port nobody listens on."""
    async with open_engine(config_for(tmp_path)) as engine:
        assert await http_alive(engine.http_urls[0]) is True
    assert await http_alive(f"http://127.0.0.1:{free_port()}") is False


def test_environment_parsing() -> None:
    """NOTIFY_SOCKET paths and @names, and WATCHDOG_USEC/WATCHDOG_PID, are read as systemd means them."""
    assert notify_address({}) is None
    assert notify_address({"NOTIFY_SOCKET": "/run/systemd/notify"}) == "/run/systemd/notify"
    assert notify_address({"NOTIFY_SOCKET": "@abstract"}) == "\0abstract"
    assert notify_address({"NOTIFY_SOCKET": "vsock:2:1234"}) is None
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "soon"}) is None
    mine = {"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}
    assert watchdog_interval(mine) == 1.0
    assert watchdog_interval({**mine, "WATCHDOG_PID": str(os.getpid() + 1)}) is None


def test_reopen_log_files_after_rotation(tmp_path: Path) -> None:
    """After logrotate moves the file, reopening sends new lines to a new file at the old path."""
    path = tmp_path / "eskit.log"
    target = logging.getLogger(f"eskit.test.rotation.{secrets.token_hex(4)}")
    target.propagate = False
    handler = logging.FileHandler(path)
    target.addHandler(handler)
    try:
        target.warning("before")
        path.rename(tmp_path / "eskit.log.1")
        target.warning("moved")  # still goes to the moved file, as with any open file
        assert reopen_log_files(target) == 1
        target.warning("after")
    finally:
        target.removeHandler(handler)
        handler.close()
    assert (tmp_path / "eskit.log.1").read_text() == "before\nmoved\n"
    assert path.read_text() == "after\n"
    assert reopen_log_files(logging.getLogger(f"eskit.test.none.{secrets.token_hex(4)}")) == 0


def unit_settings(text: str) -> dict[str, list[str]]:
    """Every ``Key=value`` of a unit file (keys may repeat), comments left out."""
    settings: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


def test_the_unit_file_is_valid_and_says_what_the_docs_say(tmp_path: Path) -> None:
    """``packaging/eskit.service`` passes ``systemd-analyze verify`` and is a hardened notify unit."""
    text = (ROOT / "packaging" / "eskit.service").read_text()
    settings = unit_settings(text)
    assert settings["Type"] == ["notify"]
    assert settings["ExecStart"] == ["/usr/local/bin/eskit run -c /etc/eskit/eskit.toml"]
    assert settings["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert settings["User"] == ["eskit"]
    assert settings["StateDirectory"] == ["eskit"]
    assert "ESKIT_ENGINE__DATA_DIR=/var/lib/eskit" in settings["Environment"]
    for hardening in ("NoNewPrivileges", "ProtectHome", "PrivateTmp", "RestrictSUIDSGID"):
        assert settings[hardening] == ["yes"], hardening
    assert settings["ProtectSystem"] == ["strict"]
    assert int(settings["WatchdogSec"][0]) > 0
    assert int(settings["TimeoutStopSec"][0]) > 10  # above the default grace period
    analyze = shutil.which("systemd-analyze")
    assert analyze is not None, "systemd-analyze is part of Debian's systemd package"
    # verify checks that ExecStart exists: point it at this checkout's eskit.
    eskit = Path(sys.executable).parent / "eskit"
    unit = tmp_path / "eskit.service"
    unit.write_text(text.replace("/usr/local/bin/eskit", str(eskit)))
    verified = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert verified.returncode == 0, verified.stderr
    assert verified.stderr.strip() == ""
