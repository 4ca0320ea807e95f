"""The daemon as a user runs it: a subprocess with a config file, HTTP, SIGTERM, restart."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest
import trio

from tests.daemon.test_engine import http
from tests.servers import PostgresServer, free_port


async def start_daemon(
    config: Path, *, env: Mapping[str, str] | None = None
) -> tuple[trio.Process, str]:
    """Start ``eskit run`` and wait for its "ready" line; return the process and base URL.

    The daemon logs warnings only (unless ``env`` says otherwise): nobody reads its pipe
    after the "ready" line, and a log line per request would fill the pipe and block the
    engine under load.
    """
    proc, url, _ = await start_daemon_with_output(config, env=env)
    return proc, url


async def start_daemon_with_output(
    config: Path, *, env: Mapping[str, str] | None = None
) -> tuple[trio.Process, str, str]:
    """:func:`start_daemon`, also returning what the daemon printed up to "ready"."""
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-m", "engine", "run", "-c", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "ESKIT_LOG_LEVEL": "WARNING"} if env is None else dict(env),
    )
    assert proc.stdout is not None
    output = b""
    with trio.fail_after(60):
        while b"ready (stop" not in output:
            chunk = await proc.stdout.receive_some(4096)
            if not chunk:
                raise AssertionError(f"daemon exited early:\n{output.decode()}")
            output += chunk
    url = next(
        line.split("http:", 1)[1].strip()
        for line in output.decode().splitlines()
        if line.strip().startswith("http:")
    )
    return proc, url, output.decode()


async def stop_daemon(proc: trio.Process) -> tuple[int, str]:
    """SIGTERM, then wait for the exit (bounded) and return its code and remaining output."""
    proc.send_signal(signal.SIGTERM)
    assert proc.stdout is not None
    output = b""
    with trio.fail_after(20):
        while chunk := await proc.stdout.receive_some(4096):
            output += chunk
        code = await proc.wait()
    return code, output.decode()


async def test_run_send_stop_restart(tmp_path: Path) -> None:
    """Commands over HTTP reach the projection; SIGTERM exits 0; a restart finds the state."""
    port = free_port()
    config = tmp_path / "eskit.toml"
    config.write_text(
        f"""
[engine]
node_id = "proc-test"
data_dir = "{tmp_path / "data"}"
grace_period = 5

[http]
port = {port}
"""
    )
    proc, url = await start_daemon(config)
    position = 0
    try:
        for command, data in [
            ("OpenAccount", {"initial_balance": 100}),
            ("Deposit", {"amount": 50}),
            ("Withdraw", {"amount": 30}),
        ]:
            status, body = await http(
                f"{url}/commands/bank/{command}",
                method="POST",
                body={"stream_id": "acc-7", "data": data},
            )
            assert status == 200, body
            position = body["events"][-1]["position"]
        status, body = await http(
            f"{url}/queries/bank/balance?account=acc-7&wait_for_position={position}"
        )
        assert (status, body) == (200, {"account": "acc-7", "balance": 120})
    finally:
        code, output = await stop_daemon(proc)
    assert code == 0, output
    assert "received SIGTERM" in output
    assert "stopped" in output

    proc, url = await start_daemon(config)
    try:
        status, body = await http(
            f"{url}/queries/bank/balance?account=acc-7&wait_for_position={position}"
        )
        assert body == {"account": "acc-7", "balance": 120}
        status, stream = await http(f"{url}/streams/acc-7")
        assert [e["version"] for e in stream["events"]] == [1, 2, 3]
    finally:
        code, output = await stop_daemon(proc)
    assert code == 0, output


def test_malformed_config_exits_with_one_line(tmp_path: Path) -> None:
    """A bad config exits non-zero with one line that names the key."""
    config = tmp_path / "bad.toml"
    config.write_text("[http]\nport = 'eighty'\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ESKIT_")}
    for command in ("run", "check-config"):
        result = subprocess.run(
            [sys.executable, "-m", "engine", command, "-c", str(config)],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
        assert result.returncode == 2
        assert result.stdout == ""
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1
        assert "http.port" in lines[0]


def test_cli_version_and_plugins() -> None:
    """``eskit --version`` and ``eskit plugins`` work."""
    version = subprocess.run(
        [sys.executable, "-m", "engine", "--version"], capture_output=True, text=True, check=True
    )
    assert version.stdout.startswith("eskit ")
    plugins = subprocess.run(
        [sys.executable, "-m", "engine", "plugins"],
        capture_output=True,
        text=True,
        check=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("ESKIT_")},
    )
    assert "bank" in plugins.stdout
    assert "OpenAccount" in plugins.stdout


async def test_a_megabyte_stream_id_does_not_freeze_the_daemon(tmp_path: Path) -> None:
    """While a command with a 1 MB stream id is refused and logged at INFO, ``/health/live``
    keeps answering, and the log line shows the id cut with a marker."""
    port = free_port()
    config = tmp_path / "eskit.toml"
    config.write_text(
        f'[engine]\ndata_dir = "{tmp_path / "data"}"\n\n[http]\nport = {port}\n'
        f"max_body_bytes = {2 * 1024 * 1024}\n"
    )
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-m", "engine", "run", "-c", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={
            **os.environ,
            "ESKIT_LOG_LEVEL": "INFO",
            "ESKIT_LOG_FORMAT": "text",
            "ESKIT_LOG_ACCESS": "on",
        },
    )
    assert proc.stdout is not None
    stdout = proc.stdout
    output = bytearray()
    ready, answered = trio.Event(), trio.Event()
    statuses: list[int] = []

    async def drain() -> None:
        while chunk := await stdout.receive_some(65536):
            output.extend(chunk)
            if b"ready (stop" in output:
                ready.set()

    async def send_huge(url: str) -> None:
        status, _ = await http(
            f"{url}/commands/bank/Deposit",
            method="POST",
            body={"stream_id": "a" * 1_000_000, "data": {"amount": 5}},
        )
        statuses.append(status)
        answered.set()

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(drain)
            with trio.fail_after(60):
                await ready.wait()
            url = f"http://127.0.0.1:{port}"
            with trio.fail_after(60):
                nursery.start_soon(send_huge, url)
                # Each probe waits at most 10 s (the client's timeout): a frozen loop fails it.
                while not answered.is_set():
                    assert (await http(f"{url}/health/live"))[0] == 200
                assert (await http(f"{url}/health/live"))[0] == 200
            proc.send_signal(signal.SIGTERM)
            with trio.fail_after(20):
                assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
    assert 400 <= statuses[0] < 500
    text = output.decode()
    [logged] = [line for line in text.splitlines() if "Deposit on 'aaa" in line]
    assert logged.count("a" * 300) == 1
    assert "more chars]" in logged
    assert max(len(line) for line in text.splitlines()) < 5000


def run_failing(config: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """``eskit run`` with ``config``, expected to fail at start-up (bounded)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ESKIT_")}
    return subprocess.run(
        [sys.executable, "-m", "engine", "run", "-c", str(config), *extra],
        capture_output=True,
        text=True,
        timeout=120,
        env={**env, "ESKIT_LOG_LEVEL": "WARNING"},
        check=False,
    )


def assert_one_line(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    """The run failed with exit code 1 or 2 and one ``eskit:`` line naming the problem."""
    assert result.returncode in (1, 2), result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    [line] = [text for text in result.stderr.splitlines() if text.startswith("eskit:")]
    for fragment in fragments:
        assert fragment in line, line


def test_port_in_use_is_one_line(tmp_path: Path) -> None:
    """A port another process listens on: one line naming the address, no traceback."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = tmp_path / "eskit.toml"
        config.write_text(f'[engine]\ndata_dir = "{tmp_path / "data"}"\n[http]\nport = {port}\n')
        result = run_failing(config)
    assert_one_line(result, f"cannot listen on 127.0.0.1:{port}", "in use")
    assert result.returncode == 1


@pytest.mark.parametrize("under", ["file", "file/sub"])
def test_data_dir_that_is_a_file_is_one_line(tmp_path: Path, under: str) -> None:
    """A data_dir that is a file (or under one) exits 2 with one line naming engine.data_dir."""
    (tmp_path / "file").write_text("not a folder")
    config = tmp_path / "eskit.toml"
    config.write_text(f'[engine]\ndata_dir = "{tmp_path / under}"\n[http]\nport = 0\n')
    result = run_failing(config)
    assert_one_line(result, "engine.data_dir", "a file is in the way")
    assert result.returncode == 2


def test_corrupt_events_db_is_one_line(tmp_path: Path) -> None:
    """An events.db of random bytes: one line naming the file and what is wrong with it, from
    ``eskit run`` and from ``eskit events``."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "events.db").write_bytes(random.Random(7).randbytes(64 * 1024))
    config = tmp_path / "eskit.toml"
    config.write_text(f'[engine]\ndata_dir = "{data}"\n[http]\nport = 0\n')
    result = run_failing(config)
    assert_one_line(result, str(data / "events.db"), "not a database")
    assert result.returncode == 1
    debug = run_failing(config, "--debug")
    assert "Traceback" in debug.stderr
    assert debug.stderr.strip().splitlines()[-1].startswith("eskit: cannot open the SQLite")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ESKIT_")}
    events = subprocess.run(
        [sys.executable, "-m", "engine", "events", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert_one_line(events, str(data / "events.db"), "not a database")


def test_unreachable_postgres_is_one_line(tmp_path: Path) -> None:
    """A PostgreSQL nobody listens for (a closed port): one line, the password not shown."""
    config = tmp_path / "eskit.toml"
    config.write_text(
        f'[engine]\ndata_dir = "{tmp_path / "data"}"\n[http]\nport = 0\n'
        f'[store]\nbackend = "postgres"\n'
        f'dsn = "postgresql://app:hunter2@127.0.0.1:{free_port()}/app?connect_timeout=5"\n'
    )
    result = run_failing(config)
    assert_one_line(result, "cannot connect to the PostgreSQL store", "refused")
    assert "hunter2" not in result.stderr + result.stdout


def test_refused_postgres_login_is_one_line(
    tmp_path: Path, postgres_server: PostgresServer
) -> None:
    """A real PostgreSQL that refuses the login (no such role): one line with the server's reason."""
    config = tmp_path / "eskit.toml"
    config.write_text(
        f'[engine]\ndata_dir = "{tmp_path / "data"}"\n[http]\nport = 0\n'
        f'[store]\nbackend = "postgres"\n'
        f'dsn = "postgresql://no_such_role:hunter2@127.0.0.1:{postgres_server.port}/postgres"\n'
    )
    result = run_failing(config)
    assert_one_line(result, "cannot connect to the PostgreSQL store", "no_such_role")
    assert "hunter2" not in result.stderr + result.stdout


def read_one_line_and_close(config: Path) -> tuple[bytes, str, int]:
    """Run ``eskit events``, read its first line and close the pipe as ``head -1`` does;
    return that line, what it wrote to stderr, and its exit code."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ESKIT_")}
    with subprocess.Popen(
        [sys.executable, "-m", "engine", "events", "-c", str(config), "--limit", "5000"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    ) as proc:
        assert proc.stdout is not None
        assert proc.stderr is not None
        first = proc.stdout.readline()
        proc.stdout.close()
        code = proc.wait(timeout=60)
        return first, proc.stderr.read().decode(), code


async def test_a_closed_pipe_ends_output_quietly(tmp_path: Path) -> None:
    """``eskit events | head -1``: when the reader goes, eskit stops without a traceback
    and exits 141 (128 + SIGPIPE), as Unix tools do."""
    from eskit_bank.domain import AccountOpened, bank_registry

    from engine.codec import Codec
    from engine.events import NewEvent
    from engine.stores.sqlite import open_sqlite_store

    data = tmp_path / "data"
    data.mkdir()
    async with open_sqlite_store(data / "events.db", Codec(bank_registry())) as store:
        for batch in range(10):  # about 1 MB of JSON lines: far more than a pipe holds
            await store.append(f"acc-{batch}", [NewEvent(AccountOpened(100))] * 500)
    config = tmp_path / "eskit.toml"
    config.write_text(f'[engine]\ndata_dir = "{data}"\n[plugins]\nenabled = ["bank"]\n')
    with trio.fail_after(60):
        first, errors, code = await trio.to_thread.run_sync(read_one_line_and_close, config)
    assert b'"bank.AccountOpened"' in first
    assert errors == ""
    assert code == 141


async def test_logging_section_and_its_environment_overrides(tmp_path: Path) -> None:
    """``[logging]`` sets the format and the access log; ESKIT_LOG_* override it; by default
    a command leaves no line (the access log is off)."""
    port = free_port()
    config = tmp_path / "eskit.toml"
    base = f'[engine]\ndata_dir = "{tmp_path / "data"}"\n[http]\nport = {port}\n'
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ESKIT_")}

    async def run_one(text: str, **env: str) -> str:
        config.write_text(base + text)
        proc, url, started = await start_daemon_with_output(config, env={**clean, **env})
        try:
            status, _ = await http(
                f"{url}/commands/bank/OpenAccount",
                method="POST",
                body={"stream_id": f"acc-{len(text)}-{len(env)}", "data": {"initial_balance": 1}},
            )
            assert status == 200
        finally:
            code, output = await stop_daemon(proc)
        assert code == 0, output
        return started + output

    output = await run_one('[logging]\nformat = "json"\naccess_log = true\n')
    [line] = [json.loads(text) for text in output.splitlines() if '"eskit.commands"' in text]
    assert (line["command_type"], line["outcome"]) == ("OpenAccount", "handled")
    output = await run_one(
        '[logging]\nformat = "json"\naccess_log = true\n',
        ESKIT_LOG_ACCESS="off",
        ESKIT_LOG_FORMAT="text",
    )
    assert "eskit.commands" not in output
    assert " INFO    " in output  # text lines, at the default level
    output = await run_one("")
    assert "eskit.commands" not in output
    assert "eskit.engine: config:" in output
