"""Shutdown in order: the ingress stops first, then the runners, then the backends."""

from __future__ import annotations

import json
from pathlib import Path

import trio
import trio.testing

from engine.codec import Codec, EventRegistry
from engine.daemon.engine import open_engine
from engine.stores.sqlite import open_sqlite_store
from tests.daemon.rawhttp import Connection, get, post
from tests.daemon.test_engine import config_for


async def test_a_request_in_flight_is_answered_and_the_runners_save_their_checkpoint(
    tmp_path: Path,
) -> None:
    """Leaving open_engine with a query in flight: the query, waiting on its read model
    for a command written during the shutdown, is answered within the grace period
    (the runners still run while the ingress drains), and once closed every runner's
    checkpoint kept in the store stands at the head of the log."""
    config = config_for(tmp_path, engine={"grace_period": 5.0})
    replies: list[int] = []
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery, open_engine(config) as engine:
            # An in-memory read model keeps its checkpoint in memory (it starts afresh).
            checkpoints = [
                runner.checkpoint_name
                for name, runner in engine.runners.items()
                if name not in engine.projections or engine.projections[name].leased
            ]
            conn = await Connection.open(engine.http_urls[0])
            body = {"stream_id": "shut-1", "data": {"initial_balance": 5}}
            await conn.send(post("/commands/bank/OpenAccount", json.dumps(body).encode()))
            position = json.loads((await conn.reply()).body)["events"][0]["position"]
            await conn.send(
                get(f"/queries/bank/balance?account=shut-1&wait_for_position={position + 1}")
            )

            async def answer() -> None:
                replies.append((await conn.reply()).status)

            async def deposit() -> None:
                await trio.testing.wait_all_tasks_blocked()
                await engine.send_command(
                    "bank", "Deposit", stream_id="shut-1", data={"amount": 1}, command_id=None
                )

            nursery.start_soon(answer)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(deposit)
        await conn.aclose()
    assert replies == [200]
    assert checkpoints
    async with open_sqlite_store(
        config.data_path(config.store.path), Codec(EventRegistry())
    ) as store:
        head = await store.head_position()
        assert head == position + 1
        assert [await store.load_checkpoint(name) for name in checkpoints] == [head] * len(
            checkpoints
        )
