"""Living under systemd (or any service manager that speaks its notify protocol), without
libsystemd: readiness, status, a watchdog, and log files reopened on SIGHUP.

The protocol (``sd_notify(3)``) is a datagram of ``KEY=VALUE`` lines sent to the
``AF_UNIX`` socket named by ``$NOTIFY_SOCKET`` (a path, or ``@name`` in the abstract
namespace). With ``Type=notify`` in the unit, ``systemctl start`` returns once the engine
sends ``READY=1``, which it does only when HTTP listens and every runner has caught up
with the log as it was at start. ``STATUS=`` lines say what it is doing
(``systemctl status`` shows them), ``STOPPING=1`` marks the start of shutdown, and with
``WatchdogSec=`` in the unit a Trio task sends ``WATCHDOG=1`` every half of
``$WATCHDOG_USEC`` for as long as the engine is healthy: its event loop runs and its HTTP
ingress answers ``GET /health/live``. A hung engine stops pinging and systemd restarts it.

Without ``$NOTIFY_SOCKET`` all of this is a no-op.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio

__all__ = [
    "Notifier",
    "http_alive",
    "notify_address",
    "notify_service",
    "reopen_log_files",
    "wait_caught_up",
    "watchdog_interval",
]

logger = logging.getLogger("eskit.systemd")

#: The longest a ``STOPPING=1`` may take to send on the way out, in seconds.
STOP_NOTICE_TIMEOUT = 1.0


def notify_address(environ: Mapping[str, str] | None = None) -> str | None:
    """The notify socket's address from ``$NOTIFY_SOCKET``, or ``None`` when unset.

    A leading ``@`` names a socket in the abstract namespace (its first byte becomes
    NUL); otherwise it must be an absolute path. Other forms (``vsock:``) are not
    supported: a warning is logged and notifications are off.
    """
    raw = (os.environ if environ is None else environ).get("NOTIFY_SOCKET", "")
    if not raw:
        return None
    if raw.startswith("@"):
        return "\0" + raw[1:]
    if raw.startswith("/"):
        return raw
    logger.warning("NOTIFY_SOCKET=%r is not a socket path or @name: notifications are off", raw)
    return None


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds between two ``WATCHDOG=1`` (half of ``$WATCHDOG_USEC``), or ``None`` when
    the watchdog is off or meant for another process (``$WATCHDOG_PID``)."""
    env = os.environ if environ is None else environ
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    pid = env.get("WATCHDOG_PID", "")
    if pid and pid != str(os.getpid()):
        return None
    return usec / 2 / 1_000_000


@attrs.define(eq=False)
class Notifier:
    """A datagram socket that sends notifications to the service manager.

    A notification that cannot be sent (the manager went away) is logged, never raised:
    the engine does not stop serving because its supervisor stopped listening.
    """

    address: str
    _socket: trio.socket.SocketType

    async def notify(self, **fields: str | int) -> bool:
        """Send ``KEY=VALUE`` lines (``await notifier.notify(READY=1, STATUS="...")``).

        Returns:
            Whether the datagram was sent.
        """
        lines = []
        for key, value in fields.items():
            text = str(value).replace("\n", " ")
            lines.append(f"{key}={text}\n")
        try:
            await self._socket.sendto("".join(lines).encode(), self.address)
        except OSError as error:
            logger.warning("could not notify the service manager: %s", error)
            return False
        return True


@asynccontextmanager
async def open_notifier(address: str) -> AsyncIterator[Notifier]:
    """A :class:`Notifier` for ``address`` for the duration of the block."""
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    with sock:
        yield Notifier(address, sock)


async def wait_caught_up(engine: Any, notifier: Notifier | None = None) -> int:
    """Wait until every runner of ``engine`` has handled the log up to its head as it is
    now; with a notifier, report the progress in ``STATUS=``. Returns that head."""
    head: int = await engine.store.head_position()
    runners = dict(engine.runners)
    done = 0

    async def one(runner: Any) -> None:
        nonlocal done
        await runner.wait_caught_up(head)
        done += 1
        if notifier is not None and done < len(runners):
            await notifier.notify(STATUS=f"catching up: {done}/{len(runners)} runners at {head}")

    if notifier is not None and runners:
        await notifier.notify(STATUS=f"catching up: 0/{len(runners)} runners at {head}")
    async with trio.open_nursery() as nursery:
        for runner in runners.values():
            nursery.start_soon(one, runner)
    return head


def _probe_address(url: str) -> tuple[str, int]:
    host, _, port = url.removeprefix("http://").rstrip("/").rpartition(":")
    host = host.strip("[]")
    # A wildcard bind is probed over loopback.
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    return host, int(port)


async def http_alive(url: str) -> bool:
    """Whether ``GET /health/live`` at ``url`` answers 200 (bound it with a cancel scope:
    an ingress that accepts and never answers makes this wait)."""
    host, port = _probe_address(url)
    try:
        stream = await trio.open_tcp_stream(host, port)
        async with stream:
            await stream.send_all(
                b"GET /health/live HTTP/1.1\r\nHost: watchdog\r\nConnection: close\r\n\r\n"
            )
            answer = b""
            while b"\r\n" not in answer and len(answer) < 1024:
                chunk = await stream.receive_some(1024)
                if not chunk:
                    break
                answer += chunk
    except (OSError, trio.BrokenResourceError):
        return False
    return answer.startswith((b"HTTP/1.1 200", b"HTTP/1.0 200"))


async def _watchdog(engine: Any, notifier: Notifier, interval: float) -> None:
    """Ping every ``interval`` seconds while the loop runs and HTTP answers."""
    while True:
        deadline = trio.current_time() + interval
        urls = list(engine.http_urls)
        healthy = not urls
        if urls:
            with trio.move_on_after(interval):
                healthy = await http_alive(urls[0])
        if healthy:
            await notifier.notify(WATCHDOG=1)
        else:
            logger.warning("watchdog: the HTTP ingress did not answer; not telling systemd")
        await trio.sleep_until(deadline)


async def _announce(engine: Any, notifier: Notifier) -> None:
    head = await wait_caught_up(engine, notifier)
    where = ", ".join(engine.http_urls) or "no HTTP"
    await notifier.notify(READY=1, STATUS=f"serving on {where}; runners caught up to {head}")
    logger.info("told the service manager: ready")


@asynccontextmanager
async def notify_service(
    engine: Any, *, environ: Mapping[str, str] | None = None
) -> AsyncIterator[None]:
    """Speak the notify protocol for a running engine while the block runs.

    Enter it once the engine serves (inside ``async with open_engine(...)``): it sends
    ``READY=1`` once every runner has caught up, runs the watchdog when the unit has one,
    and sends ``STOPPING=1`` when the block ends. A no-op without ``$NOTIFY_SOCKET``.

    Resource handling:
        The readiness and watchdog tasks run in a nursery owned by the block and are
        cancelled when it ends; ``STOPPING=1`` is sent shielded, within
        :data:`STOP_NOTICE_TIMEOUT`.
    """
    address = notify_address(environ)
    if address is None:
        yield
        return
    interval = watchdog_interval(environ)
    async with open_notifier(address) as notifier, trio.open_nursery() as nursery:
        nursery.start_soon(_announce, engine, notifier)
        if interval is not None:
            nursery.start_soon(_watchdog, engine, notifier, interval)
        try:
            yield
        finally:
            nursery.cancel_scope.cancel()
            with trio.move_on_after(STOP_NOTICE_TIMEOUT, shield=True):
                await notifier.notify(STOPPING=1, STATUS="stopping")


def reopen_log_files(target: logging.Logger | None = None) -> int:
    """Reopen the files of the file handlers of ``target`` (the root logger by default),
    as logrotate expects after it moved them (``SIGHUP``).

    Returns:
        How many files were reopened (0 when logging goes to a stream only: then SIGHUP
        changes nothing).
    """
    reopened = 0
    for handler in (target if target is not None else logging.getLogger()).handlers:
        if isinstance(handler, logging.FileHandler):
            handler.acquire()
            try:
                if handler.stream is not None:
                    handler.stream.close()
                handler.stream = handler._open()
            finally:
                handler.release()
            reopened += 1
    return reopened
