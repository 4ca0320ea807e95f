"""Dead letters through the engine: parked beside the events, kept across restarts, listed
and discarded over HTTP and with ``eskit dead-letters``."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from engine import (
    CommandBinding,
    Event,
    EventRegistry,
    Plugin,
    ProjectionContext,
    ProjectionDefinition,
    ProjectionSetup,
)
from engine.__main__ import main
from engine.daemon.engine import Engine, open_engine
from engine.drivers.nats import open_nats
from engine.runners.memory import MemoryDeadLetterStore
from engine.stores.nats import delete_nats_store
from engine.stores.nats_dead_letters import NatsDeadLetterStore, delete_nats_dead_letters
from engine.stores.postgres_dead_letters import PostgresDeadLetterStore
from engine.stores.sqlite_dead_letters import SqliteDeadLetterStore
from engine.testing.dead_letter_contract import letter
from tests.conftest import NatsTarget, PgTarget
from tests.daemon.test_engine import config_for, http, wait_for
from tests.observability.probe import Pinged, Poisoned, probe_decider

RUNNER = "probe.pings"
CHECKPOINT = "probe.pings@1"


def _pings(context: ProjectionContext) -> ProjectionSetup:
    async def handle(event: Event[Any]) -> None:
        if isinstance(event.data, Poisoned):
            raise ValueError("cannot digest a poisoned event (password=hunter2)")

    # Durable: the checkpoint is kept in the store, so a restarted engine goes on after
    # the poisoned event instead of parking it again.
    return ProjectionSetup(handler=handle, durable=True)


def probe_plugin() -> Plugin:
    """The probe's commands with a durable projection that cannot digest ``Poisoned``."""
    registry = EventRegistry()
    registry.register(Pinged, name="probe.Pinged")
    registry.register(Poisoned, name="probe.Poisoned")
    return Plugin(
        name="probe",
        description="pings, and a poison its projection parks",
        events=registry,
        commands=[CommandBinding(decider=probe_decider)],
        projections=[ProjectionDefinition(name="pings", setup=_pings)],
    )


STORES: dict[str, type] = {
    "memory": MemoryDeadLetterStore,
    "sqlite": SqliteDeadLetterStore,
    "postgres": PostgresDeadLetterStore,
    "nats": NatsDeadLetterStore,
}


def store_section(backend: str, pg: PgTarget, nats: NatsTarget) -> dict[str, dict[str, Any]]:
    """The config sections of an engine on ``backend``."""
    if backend == "postgres":
        return {"store": {"backend": "postgres", "dsn": pg.dsn, "schema": pg.schema}}
    if backend == "nats":
        return {
            "store": {"backend": "nats", "namespace": nats.namespace},
            "nats": {"url": nats.url},
        }
    return {"store": {"backend": backend}}


@asynccontextmanager
async def running(tmp_path: Path, sections: dict[str, dict[str, Any]]) -> AsyncIterator[Engine]:
    """An engine with the probe plugin that parks at the first failure."""
    config = config_for(tmp_path, runners={"max_retries": 0}, **sections)
    async with open_engine(config, plugins=[probe_plugin()]) as engine:
        yield engine


async def send(engine: Engine, command: str) -> dict[str, Any]:
    """POST a probe command to the ``p-1`` stream; returns the result."""
    status, body = await http(
        f"{engine.http_urls[0]}/commands/probe/{command}",
        method="POST",
        body={"stream_id": "p-1", "data": {}},
    )
    assert status == 200, body
    return dict(body)


async def listed(engine: Engine, query: str = "") -> dict[str, Any]:
    """``GET /dead-letters`` (asserting 200)."""
    status, body = await http(f"{engine.http_urls[0]}/dead-letters{query}")
    assert status == 200, body
    return dict(body)


@pytest.fixture
async def cleanup_nats(nats: NatsTarget) -> AsyncIterator[None]:
    """Deletes the test namespace's NATS store and dead-letter bucket afterwards."""
    yield
    with trio.move_on_after(30, shield=True):
        async with open_nats(nats.url) as connection:
            await delete_nats_store(connection, nats.namespace)
            await delete_nats_dead_letters(connection, nats.namespace)


@pytest.mark.parametrize("backend", ["sqlite", "postgres", "nats", "memory"])
async def test_parked_events_are_kept_beside_the_events(
    tmp_path: Path, pg: PgTarget, nats: NatsTarget, cleanup_nats: None, backend: str
) -> None:
    """The engine parks into its store's backend; on a durable one the dead letter is
    still listed after a restart (not parked again), then a DELETE discards it for good."""
    sections = store_section(backend, pg, nats)
    async with running(tmp_path, sections) as engine:
        assert type(engine.dead_letters) is STORES[backend]
        await send(engine, "Ping")
        poisoned = (await send(engine, "Poison"))["events"][0]
        await send(engine, "Ping")
        await wait_for(engine, RUNNER)
        before = await listed(engine)
        assert engine.runners[RUNNER].statistics().parked == 1
    assert before["total"] == 1
    assert before["runners"] == {CHECKPOINT: 1}
    [parked] = before["dead_letters"]
    assert parked["runner"] == CHECKPOINT
    assert parked["position"] == poisoned["position"]
    assert parked["event_id"] == poisoned["event_id"]
    assert (parked["stream_id"], parked["version"]) == ("p-1", 2)
    assert parked["type"] == "probe.Poisoned"
    assert parked["attempts"] == 1
    assert parked["reason"].startswith("ValueError: cannot digest a poisoned event")
    assert "hunter2" not in parked["reason"]
    if backend == "memory":
        return

    async with running(tmp_path, sections) as engine:
        await wait_for(engine, RUNNER)
        assert await listed(engine) == before
        assert engine.runners[RUNNER].statistics().parked == 0
        base = engine.http_urls[0]
        position = parked["position"]
        assert await http(f"{base}/dead-letters/{CHECKPOINT}/{position}", method="DELETE") == (
            204,
            "",
        )
        status, body = await http(f"{base}/dead-letters/{CHECKPOINT}/{position}", method="DELETE")
        assert (status, body["error"]["code"]) == (404, "unknown_dead_letter")
        assert await listed(engine) == {"total": 0, "runners": {}, "dead_letters": []}
    async with running(tmp_path, sections) as engine:
        assert (await listed(engine))["total"] == 0


async def test_listing_filters_and_bad_requests(tmp_path: Path) -> None:
    """``?runner=`` takes a checkpoint name or a runner's name; runner names travel
    percent-encoded (``/`` too); a bad position is 400 and a wrong method 405."""
    async with running(tmp_path, {"store": {"backend": "sqlite"}}) as engine:
        base = engine.http_urls[0]
        await engine.dead_letters.park(letter(CHECKPOINT, 3))
        await engine.dead_letters.park(letter("a/b c@1", 5, reason="two\nlines"))
        assert (await listed(engine))["runners"] == {"a/b c@1": 1, CHECKPOINT: 1}
        for query in (f"?runner={CHECKPOINT}", f"?runner={RUNNER}"):
            assert [x["position"] for x in (await listed(engine, query))["dead_letters"]] == [3]
        [other] = (await listed(engine, "?runner=a%2Fb%20c%401"))["dead_letters"]
        assert (other["runner"], other["reason"]) == ("a/b c@1", "two\nlines")
        assert (await listed(engine, "?runner=nobody"))["total"] == 0
        for path, method, status, code in [
            (f"/dead-letters/{CHECKPOINT}/x", "DELETE", 400, "bad_parameter"),
            (f"/dead-letters/{CHECKPOINT}/%EF%BC%93", "DELETE", 400, "bad_parameter"),
            (f"/dead-letters/{CHECKPOINT}/3", "GET", 405, "method_not_allowed"),
            ("/dead-letters", "DELETE", 405, "method_not_allowed"),
            ("/dead-letters?runner=nul%00", "GET", 400, "bad_parameter"),
        ]:
            answer, body = await http(base + path, method=method)
            assert (answer, body["error"]["code"]) == (status, code), path
        answer, _ = await http(f"{base}/dead-letters/a%2Fb%20c%401/5", method="DELETE")
        assert answer == 204
        assert [x["runner"] for x in (await listed(engine))["dead_letters"]] == [CHECKPOINT]


async def test_cli_lists_and_discards(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``eskit dead-letters`` lists a running engine's dead letters (``--runner`` too) and
    ``--discard RUNNER POSITION`` forgets one; an unknown one exits with the 404."""
    async with running(tmp_path, {"store": {"backend": "sqlite"}}) as engine:
        url = engine.http_urls[0]
        await send(engine, "Poison")
        await wait_for(engine, RUNNER)

        def cli(*args: str) -> int:
            return main(["dead-letters", "--url", url, *args])

        assert await trio.to_thread.run_sync(cli) == 0
        printed = json.loads(capsys.readouterr().out)
        assert [(x["runner"], x["position"]) for x in printed["dead_letters"]] == [(CHECKPOINT, 1)]
        assert await trio.to_thread.run_sync(cli, "--runner", "nobody") == 0
        assert json.loads(capsys.readouterr().out)["total"] == 0
        assert await trio.to_thread.run_sync(cli, "--discard", CHECKPOINT, "1") == 0
        assert "discarded" in capsys.readouterr().out
        with pytest.raises(SystemExit, match="404 unknown_dead_letter"):
            await trio.to_thread.run_sync(cli, "--discard", CHECKPOINT, "1")
        assert await engine.dead_letters.dead_letters() == []
