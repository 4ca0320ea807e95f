"""A headless Chromium driven over the DevTools protocol: just enough to test a page.

``async with open_chromium(tmp_path) as browser:`` starts Debian's ``chromium`` with a
fresh profile and ``--remote-debugging-port=0``, reads the DevTools websocket URL it
prints, and connects with a small websocket client (wsproto over a Trio TCP stream).
``await browser.open_page(url)`` gives a :class:`Page` that can evaluate JavaScript,
wait for a condition in the page (a ``MutationObserver``, no polling from Python) and
take a screenshot. JavaScript exceptions and console errors of the page are collected
in :attr:`Page.errors`.
"""

from __future__ import annotations

import base64
import itertools
import json
import re
import shutil
import subprocess
import urllib.parse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    Ping,
    RejectConnection,
    Request,
    TextMessage,
)

#: The flags every run uses (the brief for this machine: no sandbox as root, no GPU,
#: no network chatter of its own).
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
)
_LISTENING = re.compile(rb"DevTools listening on (ws://\S+)")


class BrowserError(Exception):
    """The browser answered a DevTools call with an error, or went away."""


def chromium_path() -> str:
    """The Chromium executable (Debian's ``chromium``; ``.ci/run`` installs it)."""
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    raise BrowserError("chromium is not installed (apt-get install chromium)")


@attrs.define(eq=False)
class _WebSocket:
    stream: trio.SocketStream
    connection: WSConnection

    async def send_text(self, text: str) -> None:
        await self.stream.send_all(self.connection.send(TextMessage(data=text)))

    async def messages(self) -> AsyncIterator[str]:
        parts: list[str] = []
        while True:
            data = await self.stream.receive_some(1 << 16)
            if not data:
                return
            self.connection.receive_data(data)
            for event in self.connection.events():
                if isinstance(event, TextMessage):
                    parts.append(event.data)
                    if event.message_finished:
                        yield "".join(parts)
                        parts.clear()
                elif isinstance(event, Ping):
                    await self.stream.send_all(self.connection.send(event.response()))
                elif isinstance(event, CloseConnection):
                    return


async def _connect(url: str) -> _WebSocket:
    parsed = urllib.parse.urlsplit(url)
    assert parsed.hostname is not None
    assert parsed.port is not None
    stream = await trio.open_tcp_stream(parsed.hostname, parsed.port)
    connection = WSConnection(ConnectionType.CLIENT)
    host = f"{parsed.hostname}:{parsed.port}"
    await stream.send_all(connection.send(Request(host=host, target=parsed.path or "/")))
    while True:
        data = await stream.receive_some(1 << 16)
        if not data:
            raise BrowserError("the browser closed the websocket during the handshake")
        connection.receive_data(data)
        for event in connection.events():
            if isinstance(event, AcceptConnection):
                return _WebSocket(stream, connection)
            if isinstance(event, RejectConnection):
                raise BrowserError(f"websocket refused: HTTP {event.status_code}")


@attrs.define(eq=False)
class Browser:
    """A connection to the browser's DevTools endpoint."""

    socket: _WebSocket
    _ids: itertools.count[int] = attrs.field(factory=lambda: itertools.count(1))
    _waiting: dict[int, trio.MemorySendChannel[dict[str, Any]]] = attrs.field(factory=dict)
    _pages: dict[str, Page] = attrs.field(factory=dict)

    async def call(
        self, method: str, params: dict[str, Any] | None = None, *, session: str | None = None
    ) -> dict[str, Any]:
        """Send one DevTools command and wait for its result."""
        number = next(self._ids)
        message: dict[str, Any] = {"id": number, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        send, receive = trio.open_memory_channel[dict[str, Any]](1)
        self._waiting[number] = send
        try:
            await self.socket.send_text(json.dumps(message))
            reply = await receive.receive()
        finally:
            self._waiting.pop(number, None)
        if "error" in reply:
            raise BrowserError(f"{method}: {reply['error']}")
        result: dict[str, Any] = reply.get("result", {})
        return result

    async def read_replies(self) -> None:
        """Route replies to their callers and page events to their pages (a task)."""
        async for text in self.socket.messages():
            message = json.loads(text)
            if "id" in message:
                waiter = self._waiting.get(message["id"])
                if waiter is not None:
                    waiter.send_nowait(message)
            else:
                page = self._pages.get(message.get("sessionId", ""))
                if page is not None:
                    page.on_event(message["method"], message.get("params", {}))
        for waiter in self._waiting.values():
            waiter.send_nowait({"error": "the browser closed the connection"})

    async def open_page(self, url: str, *, width: int = 1280, height: int = 900) -> Page:
        """A new tab showing ``url`` (returns once its load event fired)."""
        target = await self.call("Target.createTarget", {"url": "about:blank"})
        attached = await self.call(
            "Target.attachToTarget", {"targetId": target["targetId"], "flatten": True}
        )
        page = Page(self, attached["sessionId"])
        self._pages[page.session] = page
        await page.call("Runtime.enable")
        await page.call("Page.enable")
        await page.call(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
        )
        await page.navigate(url)
        return page


@attrs.define(eq=False)
class Page:
    """One tab."""

    browser: Browser
    session: str
    errors: list[str] = attrs.field(factory=list)
    _loaded: trio.Event = attrs.field(factory=trio.Event)

    async def call(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """A DevTools command for this tab."""
        return await self.browser.call(method, params, session=self.session)

    def on_event(self, method: str, params: dict[str, Any]) -> None:
        """Collect page errors; note the load event."""
        if method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            text = details.get("exception", {}).get("description") or details.get("text", "")
            self.errors.append(f"{text} (line {details.get('lineNumber')})")
        elif method == "Runtime.consoleAPICalled" and params.get("type") == "error":
            self.errors.append(" ".join(str(a.get("value", "")) for a in params.get("args", [])))
        elif method == "Page.loadEventFired":
            self._loaded.set()

    async def navigate(self, url: str) -> None:
        """Go to ``url`` and wait for the load event."""
        self._loaded = trio.Event()
        result = await self.call("Page.navigate", {"url": url})
        if result.get("errorText"):
            raise BrowserError(f"cannot load {url}: {result['errorText']}")
        await self._loaded.wait()

    async def evaluate(self, expression: str) -> Any:
        """The JSON value of a JavaScript expression (promises are awaited)."""
        result = await self.call(
            "Runtime.evaluate",
            {"expression": expression, "awaitPromise": True, "returnByValue": True},
        )
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise BrowserError(
                details.get("exception", {}).get("description") or details.get("text", "")
            )
        return result["result"].get("value")

    async def wait_for(self, predicate: str) -> Any:
        """Wait until the JavaScript expression ``predicate`` is truthy in the page.

        The page re-evaluates it on every DOM change (a ``MutationObserver``); bound the
        wait with ``trio.fail_after``. Returns the truthy value.
        """
        script = (
            "new Promise(resolve => {"
            f"  const test = () => {{ try {{ return ({predicate}); }} catch (e) {{ return null; }} }};"
            "  const first = test(); if (first) { resolve(first); return; }"
            "  const observer = new MutationObserver(() => {"
            "    const value = test(); if (value) { observer.disconnect(); resolve(value); } });"
            "  observer.observe(document, {subtree: true, childList: true, attributes: true,"
            "                              characterData: true});"
            "})"
        )
        return await self.evaluate(script)

    async def screenshot(self, path: Path) -> Path:
        """Save the whole page (not only the viewport) as a PNG at ``path``."""
        metrics = await self.call("Page.getLayoutMetrics")
        size = metrics.get("cssContentSize") or metrics["contentSize"]
        result = await self.call(
            "Page.captureScreenshot",
            {
                "format": "png",
                "captureBeyondViewport": True,
                "clip": {
                    "x": 0,
                    "y": 0,
                    "width": size["width"],
                    "height": size["height"],
                    "scale": 1,
                },
            },
        )
        await trio.Path(path).write_bytes(base64.b64decode(result["data"]))
        return path


async def _drain(stream: trio.abc.ReceiveStream) -> None:
    while await stream.receive_some(1 << 16):
        pass


@asynccontextmanager
async def open_chromium(profile: Path) -> AsyncIterator[Browser]:
    """Run a headless Chromium with a fresh profile in ``profile`` for the block.

    Resource handling:
        The browser process is started here and killed (then reaped, bounded) on the
        way out; its standard error is read to the end by a task of this block.
    """
    await trio.Path(profile).mkdir(parents=True, exist_ok=True)
    command = [chromium_path(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"]
    process = await trio.lowlevel.open_process(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        assert process.stderr is not None
        seen = b""
        with trio.fail_after(30):
            while (found := _LISTENING.search(seen)) is None:
                chunk = await process.stderr.receive_some(1 << 16)
                if not chunk:
                    raise BrowserError(f"chromium exited before listening: {seen[-2000:]!r}")
                seen += chunk
        socket = await _connect(found.group(1).decode())
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_drain, process.stderr)
            browser = Browser(socket)
            nursery.start_soon(browser.read_replies)
            try:
                yield browser
            finally:
                nursery.cancel_scope.cancel()
                with trio.move_on_after(5, shield=True):
                    await socket.stream.aclose()
    finally:
        process.kill()
        with trio.move_on_after(10, shield=True):
            await process.wait()
