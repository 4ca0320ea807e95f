"""Events of a type no loaded plugin knows: GET /events and eskit events show them as stored."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import attrs
import trio

from engine.codec import Codec, EventRegistry
from engine.daemon.engine import open_engine
from engine.events import NewEvent
from engine.stores.sqlite import open_sqlite_store
from tests.daemon.test_engine import config_for, http


@attrs.frozen
class Appeared:
    """An event of a plugin the engine does not load."""

    name: str
    count: int


async def write_foreign_events(data_dir: Path) -> None:
    """Put two ``ghost.Appeared`` events into the SQLite store of ``data_dir``."""
    registry = EventRegistry()
    registry.register(Appeared, name="ghost.Appeared")
    await trio.Path(data_dir).mkdir(parents=True, exist_ok=True)
    async with open_sqlite_store(data_dir / "events.db", Codec(registry)) as store:
        await store.append("ghost-1", [NewEvent(Appeared("boo", 1)), NewEvent(Appeared("b", 2))])


async def test_the_log_and_streams_serve_unknown_types_raw(tmp_path: Path) -> None:
    """GET /events and GET /streams answer 200 with the unknown events' payload as stored,
    marked ``unknown_type``, beside the known ones; the runners are not disturbed."""
    await write_foreign_events(tmp_path / "data")
    config = config_for(tmp_path, plugins={"enabled": ["bank"]})
    async with open_engine(config) as engine:
        url = engine.http_urls[0]
        status, _ = await http(
            f"{url}/commands/bank/OpenAccount",
            method="POST",
            body={"stream_id": "acc-1", "data": {"initial_balance": 5}},
        )
        assert status == 200
        status, log = await http(f"{url}/events")
        assert status == 200, log
        [first, second, opened] = log["events"]
        assert (first["type"], first["data"], first["unknown_type"]) == (
            "ghost.Appeared",
            {"name": "boo", "count": 1},
            True,
        )
        assert second["data"] == {"name": "b", "count": 2}
        assert (opened["type"], opened["data"]) == ("bank.AccountOpened", {"initial_balance": 5})
        assert "unknown_type" not in opened
        status, stream = await http(f"{url}/streams/ghost-1")
        assert status == 200, stream
        assert [e["version"] for e in stream["events"]] == [1, 2]


async def test_eskit_events_prints_unknown_types_raw(tmp_path: Path) -> None:
    """``eskit events`` prints an event of an unknown type with its stored payload."""
    await write_foreign_events(tmp_path / "data")
    config = tmp_path / "eskit.toml"
    config.write_text(f'[engine]\ndata_dir = "{tmp_path / "data"}"\n[plugins]\nenabled = []\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("ESKIT_")}
    with trio.fail_after(120):
        result = await trio.run_process(
            [sys.executable, "-m", "engine", "events", "-c", str(config)],
            capture_stdout=True,
            capture_stderr=True,
            env=env,
            check=False,
        )
    assert result.returncode == 0, result.stderr.decode()
    lines = [json.loads(line) for line in result.stdout.decode().splitlines()]
    assert [(line["type"], line["data"], line["unknown_type"]) for line in lines] == [
        ("ghost.Appeared", {"name": "boo", "count": 1}, True),
        ("ghost.Appeared", {"name": "b", "count": 2}, True),
    ]
