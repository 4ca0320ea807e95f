"""Every store backend hands the engine one typed bundle of what it provides."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from engine.daemon.backends import Storage, open_nats_from_config, open_storage
from engine.events import NewEvent
from engine.stores.base import Snapshot
from engine.testing.contract import Counted, Note, contract_codec
from tests.conftest import NatsTarget, PgTarget
from tests.daemon.test_engine import config_for

#: The optional parts each backend provides (events and dead letters: every one).
PROVIDES = {
    "memory": set(),
    "sqlite": {"checkpoints", "snapshots", "sql", "reader"},
    "postgres": {"checkpoints", "snapshots", "sql", "reader"},
    "nats": {"checkpoints", "snapshots", "reader"},
}


@pytest.fixture(params=sorted(PROVIDES))
def sections(request: pytest.FixtureRequest) -> dict[str, dict[str, Any]]:
    """The config sections that select one backend (a real server for PostgreSQL, NATS)."""
    if request.param == "postgres":
        pg: PgTarget = request.getfixturevalue("pg")
        return {"store": {"backend": "postgres", "dsn": pg.dsn, "schema": pg.schema}}
    if request.param == "nats":
        nats: NatsTarget = request.getfixturevalue("nats")
        return {
            "store": {"backend": "nats", "namespace": nats.namespace},
            "nats": {"url": nats.url},
        }
    return {"store": {"backend": request.param}}


def _provided(storage: Storage) -> set[str]:
    optional = {
        "checkpoints": storage.checkpoints,
        "snapshots": storage.snapshots,
        "sql": storage.sql,
    }
    provided = {name for name, part in optional.items() if part is not None}
    return provided | ({"reader"} if storage.reader is not storage.events else set())


async def test_each_backend_bundle_is_complete_and_each_part_works(
    tmp_path: Path, sections: dict[str, dict[str, Any]]
) -> None:
    """A backend's bundle holds every part that backend provides (no part is found by
    probing the store), and each part works on the opened store."""
    config = config_for(tmp_path, **sections)
    with trio.fail_after(30):
        async with (
            open_nats_from_config(config) as nats,
            open_storage(config, contract_codec(), nats=nats) as storage,
        ):
            assert _provided(storage) == PROVIDES[config.store.backend]
            stored = await storage.events.append("s-1", [NewEvent(Note("a"))])
            assert [e.data for e in await storage.reader.load("s-1")] == [Note("a")]
            assert await storage.dead_letters.dead_letters() == []
            if storage.checkpoints is not None:
                await storage.checkpoints.save_checkpoint("r", stored[0].position, expected=None)
                assert await storage.checkpoints.load_checkpoint("r") == stored[0].position
            if storage.snapshots is not None:
                snapshots = storage.snapshots(Counted)
                await snapshots.save_snapshot(Snapshot("s-1", 1, Counted(1, 2)))
                loaded = await snapshots.load_snapshot("s-1")
                assert loaded is not None
                assert loaded.state == Counted(1, 2)
