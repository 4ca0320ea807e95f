"""The async client on asyncio (against an engine process) and on Trio (against an engine
in the same Trio loop), with real connections and a proxy that cuts replies."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from engine import EventRegistry, Plugin
from engine.client import AsyncClient, CommandResult, StoredEvent, UnauthorizedError
from engine.daemon.engine import open_engine
from engine.errors import DomainError
from tests.client.conftest import LiveEngine, ThreadProxy
from tests.daemon.test_engine import config_for
from tests.faults.proxy import cut_proxy


def account() -> str:
    """A stream id no other test uses."""
    return f"acc-{uuid.uuid4().hex[:12]}"


# -- scenarios, run by both event loops --------------------------------------------------


async def read_your_writes(url: str) -> None:
    """Open, deposit, read the balance at the deposit's position; a rejection is typed."""
    stream = account()
    async with AsyncClient(url) as client:
        await client.send("bank", "OpenAccount", {"initial_balance": 100}, stream_id=stream)
        deposited = await client.send("bank", "Deposit", {"amount": 5}, stream_id=stream)
        balance = await client.query(
            "bank", "balance", {"account": stream}, wait_for_position=deposited
        )
        assert balance == {"account": stream, "balance": 105}
        with pytest.raises(DomainError) as rejected:
            await client.send("bank", "Withdraw", {"amount": 500}, stream_id=stream)
        assert rejected.value.error_code == "insufficient_funds"  # type: ignore[attr-defined]


async def retry_after_cut(url: str, arm: Callable[[], Any], cuts: Callable[[], int]) -> None:
    """A command whose reply is cut is retried with its id and acts once."""
    stream = account()
    async with AsyncClient(url) as client:
        await client.send("bank", "OpenAccount", {"initial_balance": 100}, stream_id=stream)
        await arm()
        result = await client.send("bank", "Withdraw", {"amount": 30}, stream_id=stream)
        assert await cuts() == 1
        assert result.duplicate is True
        assert result.state == {"exists": True, "balance": 70}
        events = await client.stream(stream)
        assert [e.type for e in events] == ["bank.AccountOpened", "bank.MoneyWithdrawn"]


async def copies_act_once(
    url: str, gather: Callable[[list[Awaitable[Any]]], Awaitable[Any]]
) -> None:
    """Ten clients sending one command id at once store its event once."""
    stream = account()
    command_id = str(uuid.uuid4())
    async with AsyncClient(url) as opener:
        await opener.send("bank", "OpenAccount", {"initial_balance": 100}, stream_id=stream)
    results: list[CommandResult] = []

    async def one() -> None:
        async with AsyncClient(url) as client:
            results.append(
                await client.send(
                    "bank", "Deposit", {"amount": 1}, stream_id=stream, command_id=command_id
                )
            )

    await gather([one() for _ in range(10)])
    assert len(results) == 10
    assert {(r.version, r.command_id) for r in results} == {(2, command_id)}
    assert sum(not r.duplicate for r in results) == 1
    async with AsyncClient(url) as client:
        assert [e.version for e in await client.stream(stream)] == [1, 2]


async def follow_the_log(url: str) -> None:
    """Following the log yields each event after a position in order, new ones too."""
    stream = account()
    async with AsyncClient(url) as client:
        first = await client.send("bank", "OpenAccount", {"initial_balance": 5}, stream_id=stream)
        seen: list[StoredEvent] = []
        last: CommandResult | None = None
        start = first.events[0].position - 1
        async with client.follow(after=start, limit=2, poll_interval=0.05) as events:
            async for event in events:
                seen.append(event)
                if last is None:
                    last = await client.send("bank", "Deposit", {"amount": 2}, stream_id=stream)
                elif event.position == last.position:
                    break
        assert last is not None
        positions = [e.position for e in seen]
        assert positions == list(range(first.events[0].position, last.events[0].position + 1))
        assert [e.version for e in seen if e.stream_id == stream] == [1, 2]


# -- asyncio: the engine runs as a process ------------------------------------------------


async def _asyncio_gather(calls: list[Awaitable[Any]]) -> None:
    await asyncio.gather(*calls)


def test_asyncio_read_your_writes(live_engine: LiveEngine) -> None:
    """Under asyncio: commands, read-your-writes queries and typed rejections."""
    asyncio.run(read_your_writes(live_engine.url))


def test_asyncio_retry_across_a_cut_connection(live_engine: LiveEngine, proxy: ThreadProxy) -> None:
    """Under asyncio: a reply cut by the proxy is retried with the same id and acts once."""

    async def arm() -> None:
        await asyncio.to_thread(proxy.arm)

    async def cuts() -> int:
        return await asyncio.to_thread(lambda: proxy.cuts)

    asyncio.run(retry_after_cut(proxy.url, arm, cuts))


def test_asyncio_concurrent_copies_act_once(live_engine: LiveEngine) -> None:
    """Under asyncio: ten concurrent clients sending one command id store it once."""
    asyncio.run(copies_act_once(live_engine.url, _asyncio_gather))


def test_asyncio_follow(live_engine: LiveEngine) -> None:
    """Under asyncio: following the log."""
    asyncio.run(follow_the_log(live_engine.url))


# -- Trio: the engine runs in the same loop -----------------------------------------------


async def _trio_gather(calls: list[Awaitable[Any]]) -> None:
    async with trio.open_nursery() as nursery:
        for call in calls:
            nursery.start_soon(lambda c=call: c)


@pytest.fixture
async def trio_engine_url(tmp_path: Path) -> Any:
    async with open_engine(config_for(tmp_path)) as engine:
        yield engine.http_urls[0]


async def test_trio_read_your_writes(trio_engine_url: str) -> None:
    """Under Trio: commands, read-your-writes queries and typed rejections."""
    with trio.fail_after(60):
        await read_your_writes(trio_engine_url)


async def test_trio_retry_across_a_cut_connection(trio_engine_url: str) -> None:
    """Under Trio: a reply cut by the proxy is retried with the same id and acts once."""
    port = int(trio_engine_url.rsplit(":", 1)[1])
    with trio.fail_after(60):
        async with cut_proxy(port) as proxy:

            async def arm() -> None:
                proxy.arm()

            async def cuts() -> int:
                return proxy.cuts

            await retry_after_cut(f"http://127.0.0.1:{proxy.port}", arm, cuts)


async def test_trio_concurrent_copies_act_once(trio_engine_url: str) -> None:
    """Under Trio: ten concurrent clients sending one command id store it once."""
    with trio.fail_after(60):
        await copies_act_once(trio_engine_url, _trio_gather)


async def test_trio_follow(trio_engine_url: str) -> None:
    """Under Trio: following the log."""
    with trio.fail_after(60):
        await follow_the_log(trio_engine_url)


async def test_trio_token(tmp_path: Path) -> None:
    """Without the engine's bearer token the client gets UnauthorizedError; with it, answers."""
    config = config_for(tmp_path, http={"token": "s3cret"})
    with trio.fail_after(60):
        async with open_engine(config) as engine:
            url = engine.http_urls[0]
            async with AsyncClient(url) as anonymous:
                with pytest.raises(PermissionError) as refused:
                    await anonymous.send(
                        "bank", "OpenAccount", {"initial_balance": 1}, stream_id="a"
                    )
                assert isinstance(refused.value, UnauthorizedError)
                assert refused.value.status == 401
            async with AsyncClient(url, token="s3cret") as client:
                result = await client.send(
                    "bank", "OpenAccount", {"initial_balance": 1}, stream_id="a"
                )
                assert result.version == 1
                assert await client.ready() is True


async def test_trio_a_query_answering_null(tmp_path: Path) -> None:
    """A plugin query whose answer is JSON ``null`` returns ``None``, not a "not JSON" error."""

    async def nothing(params: Any) -> None:
        return None

    quiet = Plugin(name="quiet", events=EventRegistry(), queries={"nothing": nothing})
    with trio.fail_after(60):
        async with (
            open_engine(config_for(tmp_path), plugins=[quiet]) as engine,
            AsyncClient(engine.http_urls[0]) as client,
        ):
            assert await client.query("quiet", "nothing") is None
