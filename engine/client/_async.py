"""The async client: for asyncio (FastAPI, aiohttp, Django async views) and Trio alike."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from types import TracebackType
from typing import Any

import anyio
import httpx

import engine.client._base as _base
from engine.client._base import (
    DEFAULT_TIMEOUT,
    DEFAULT_URL,
    Call,
    ClientError,
    CommandResult,
    EventPage,
    RetryPolicy,
    StoredEvent,
)


class AsyncClient:
    """An async client of a running engine (``eskit run``), for asyncio and Trio alike
    (httpx picks the running event loop; waits between retries use anyio).

    Use it as an async context manager (or await :meth:`aclose`); one client may be
    shared by the tasks of one event loop and keeps its connections alive::

        async with AsyncClient("http://127.0.0.1:8080") as client:
            result = await client.send(
                "bank", "OpenAccount", {"initial_balance": 100}, stream_id="acc-1"
            )
            await client.query("bank", "balance", {"account": "acc-1"}, wait_for_position=result)

    Args:
        url: The engine's base URL.
        token: The bearer token, when the engine has one configured.
        timeout: Seconds each step of a request (connect, send, read) may take.
        retry: When and how often calls are tried again (see :class:`RetryPolicy`).
        http: An ``httpx.AsyncClient`` to send with instead of the client's own (its base URL,
            headers and timeout are left as they are); the caller closes it.

    Error handling:
        An error answer raises the :class:`ClientError` subclass of its code, which is
        also the engine's own error class (``DomainError``, ``ConcurrencyError``,
        ``NotCaughtUpError``...). Lost connections and 504 ``unknown_outcome`` are retried
        with the same command id; when every attempt fails a command raises
        :class:`OutcomeUnknownError` (retry later with its ``command_id``) and anything
        that never reached the engine raises :class:`EngineUnreachableError`.
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        token: str = "",
        timeout: float = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.retry = retry if retry is not None else RetryPolicy()
        self._owned = http is None
        self._http = http or httpx.AsyncClient(
            base_url=self.url, headers=_base.headers(token), timeout=_base.timeout(timeout)
        )
        self._last_position = 0

    @classmethod
    def from_env(cls, **options: Any) -> AsyncClient:
        """A client for ``$ESKIT_URL`` (default ``http://127.0.0.1:8080``) with the token
        ``$ESKIT_TOKEN``, as the ``eskit`` CLI does."""
        options.setdefault("token", os.environ.get("ESKIT_TOKEN", ""))
        return cls(os.environ.get("ESKIT_URL", DEFAULT_URL), **options)

    @property
    def last_position(self) -> int:
        """The highest position of any event a command of this client stored (0 before
        the first): pass it as ``wait_for_position`` to read everything it wrote."""
        return self._last_position

    # -- commands and queries -------------------------------------------------------

    async def send(
        self,
        plugin: str,
        command: str,
        data: Mapping[str, Any] | None = None,
        *,
        stream_id: str | None = None,
        command_id: str | None = None,
    ) -> CommandResult:
        """Send a command; it acts at most once, however often it is retried.

        Args:
            plugin: The plugin's name.
            command: The command's class name.
            data: The command's fields.
            stream_id: The stream (optional when the plugin derives it from the data).
            command_id: The idempotency key; a fresh UUID when omitted. Give your own to
                make retries across processes (a job queue, a crash) safe too.

        Returns:
            The result; ``result.position`` is what to read your write at.

        Raises:
            DomainError: The decider rejected it (``error.error_code`` is the domain's code).
            OutcomeUnknownError: No attempt got an answer: it may or may not have acted.
        """
        call = _base.command_call(plugin, command, data, stream_id=stream_id, command_id=command_id)
        result = CommandResult.from_json(call.command_id or "", await self._call(call))
        if result.position is not None:
            self._last_position = max(self._last_position, result.position)
        return result

    async def query(
        self,
        plugin: str,
        query: str,
        params: Mapping[str, Any] | None = None,
        *,
        wait_for_position: int | CommandResult | None = None,
    ) -> Any:
        """Run a plugin query, after its read model has handled ``wait_for_position``
        (a position, or a command's result: read your own writes).

        Raises:
            NotCaughtUpError: The read model did not get there on any attempt.
            NotFoundError: The query (or what it looked for) does not exist.
        """
        return await self._call(_base.query_call(plugin, query, params, wait_for_position))

    # -- the log --------------------------------------------------------------------

    async def stream(
        self, stream_id: str, *, after: int = 0, limit: int = 100
    ) -> list[StoredEvent]:
        """Up to ``limit`` events of a stream after version ``after``.

        Raises:
            UnknownStreamError: The stream has no events.
        """
        value = await self._call(
            Call(
                method="GET",
                path=f"/streams/{_base.segment(stream_id)}",
                params=_base.page_params(after, limit),
            )
        )
        return [StoredEvent.from_json(e) for e in value["events"]]

    async def events(self, *, after: int = 0, limit: int = 100) -> EventPage:
        """Up to ``limit`` events of the global log after position ``after``."""
        value = await self._call(
            Call(method="GET", path="/events", params=_base.page_params(after, limit))
        )
        return EventPage(
            events=tuple(StoredEvent.from_json(e) for e in value["events"]), head=int(value["head"])
        )

    @contextlib.asynccontextmanager
    async def follow(
        self, *, after: int = 0, limit: int = 100, poll_interval: float = 1.0
    ) -> AsyncIterator[AsyncIterator[StoredEvent]]:
        """Every event of the global log after ``after``, in order, then each new one as it
        is stored: an endless async iterator, closed when the block ends::

            async with client.follow(after=checkpoint) as events:
                async for event in events:
                    ...

        It reads pages of ``limit`` and, once at the head, asks again every
        ``poll_interval`` seconds. Resume after a restart from the last event's
        ``position``.
        """
        events = self._follow(after, limit, poll_interval)
        try:
            yield events
        finally:
            await events.aclose()

    async def _follow(
        self, after: int, limit: int, poll_interval: float
    ) -> AsyncGenerator[StoredEvent, None]:
        cursor = after
        while True:
            page = await self.events(after=cursor, limit=limit)
            for event in page.events:
                yield event
            if page.events:
                cursor = page.events[-1].position
            if len(page.events) < limit:
                await anyio.sleep(poll_interval)

    # -- operations -----------------------------------------------------------------

    async def ready(self) -> bool:
        """Whether the engine is ready (every runner within its lag bound)."""
        call = Call(method="GET", path="/health/ready")
        try:
            return (await self._request(call)).status_code == 200
        except httpx.TransportError as error:
            raise _base.lost(call, error, self.url, 1, False) from error

    async def runners(self) -> dict[str, Any]:
        """Every runner's statistics (``GET /runners``)."""
        value: dict[str, Any] = await self._call(Call(method="GET", path="/runners"))
        return value

    async def openapi(self) -> dict[str, Any]:
        """The engine's OpenAPI document (``GET /openapi.json``)."""
        value: dict[str, Any] = await self._call(Call(method="GET", path="/openapi.json"))
        return value

    # -- plumbing -------------------------------------------------------------------

    async def _call(self, call: Call) -> Any:
        attempt, ambiguous = 1, False
        while True:
            try:
                return _base.read(call, await self._request(call))
            except httpx.TransportError as error:
                ambiguous = ambiguous or _base.ambiguous(error)
                if attempt >= self.retry.attempts or not _base.transport_retryable(call, error):
                    raise _base.lost(call, error, self.url, attempt, ambiguous) from error
            except ClientError as error:
                if attempt >= self.retry.attempts or not _base.answer_retryable(call, error):
                    raise
                ambiguous = True
            await anyio.sleep(self.retry.delay(attempt))
            attempt += 1

    async def _request(self, call: Call) -> httpx.Response:
        return await self._http.request(
            call.method, call.path, params=call.params or None, json=call.body
        )

    async def aclose(self) -> None:
        """Close the client's connections (not those of an ``http`` client passed in)."""
        if self._owned:
            await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
