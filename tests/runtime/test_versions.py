"""The durable record of each projection's live version, on every checkpoint store
(memory, SQLite, PostgreSQL, NATS KV): versions are never handed out twice, and a
switch is seen by every client of the store."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from engine.drivers.nats import open_nats
from engine.errors import CheckpointConflictError
from engine.runners.versions import ProjectionVersions
from engine.stores.nats import delete_nats_store
from engine.testing.contract import Backend
from tests.conftest import NatsTarget, PgTarget
from tests.contract.test_store_memory import memory_backend
from tests.contract.test_store_nats import nats_backend
from tests.contract.test_store_postgres import postgres_backend
from tests.contract.test_store_sqlite import sqlite_backend

NAME = "bank.balances"


@pytest.fixture(params=["memory", "sqlite", "postgres", "nats"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    """A checkpoint store backend whose every ``open_checkpoints`` is a new client."""
    if request.param == "memory":
        yield memory_backend()
    elif request.param == "sqlite":
        yield sqlite_backend(tmp_path / "versions.db")
    elif request.param == "postgres":
        pg: PgTarget = request.getfixturevalue("pg")
        yield postgres_backend(pg)
    else:
        nats: NatsTarget = request.getfixturevalue("nats")
        yield nats_backend(nats)
        with trio.move_on_after(30, shield=True):
            async with open_nats(nats.url) as connection:
                await delete_nats_store(connection, nats.namespace)


async def test_first_start_records_the_code_version_and_restarts_keep_it(
    backend: Backend,
) -> None:
    """The first start of code version 1 serves version 1; every later start (any
    client) finds that record instead of taking a new version."""
    async with backend.open_checkpoints() as store:
        assert await ProjectionVersions(store).resolve(NAME, 1) == 1
    async with backend.open_checkpoints() as store:
        versions = ProjectionVersions(store)
        assert await versions.resolve(NAME, 1) == 1
        assert await versions.live(NAME, 1) == 1


async def test_allocations_never_repeat_and_a_switch_is_durable(backend: Backend) -> None:
    """Each allocation is a version never handed out before, an abandoned one included
    (a rebuild that crashed), and a switch is what every later client resolves."""
    async with backend.open_checkpoints() as store:
        versions = ProjectionVersions(store)
        assert await versions.resolve(NAME, 1) == 1
        assert await versions.allocate(NAME, above=1) == 2  # then "crashed": never switched
        assert await versions.allocate(NAME, above=1) == 3
        await versions.switch(NAME, 1, old=1, new=3)
    async with backend.open_checkpoints() as store:
        versions = ProjectionVersions(store)
        assert await versions.resolve(NAME, 1) == 3
        assert await versions.allocate(NAME, above=3) == 4
        with pytest.raises(CheckpointConflictError):
            await versions.switch(NAME, 1, old=1, new=4)  # someone switched since
        assert await versions.live(NAME, 1) == 3


async def test_allocation_skips_versions_built_before_the_record(backend: Backend) -> None:
    """A version that has a checkpoint already (built before version records existed)
    is never handed out again."""
    async with backend.open_checkpoints() as store:
        await store.save_checkpoint(f"{NAME}@2", 7, expected=None)
        await store.save_checkpoint(f"{NAME}@3", 0, expected=None)
        versions = ProjectionVersions(store)
        assert await versions.resolve(NAME, 1) == 1
        assert await versions.allocate(NAME, above=1) == 4


async def test_new_code_never_inherits_a_rebuilt_version(backend: Backend) -> None:
    """Code version 2 after a rebuild of code version 1 took version 2 gets a fresh
    version; going back to code version 1 serves what version 1's code switched to."""
    async with backend.open_checkpoints() as store:
        versions = ProjectionVersions(store)
        assert await versions.resolve(NAME, 1) == 1
        rebuilt = await versions.allocate(NAME, above=1)
        await versions.switch(NAME, 1, old=1, new=rebuilt)
        assert await versions.resolve(NAME, 2) == 3
        assert await versions.resolve(NAME, 2) == 3
        assert await versions.resolve(NAME, 1) == 2
        assert await versions.resolve(NAME, 7) == 7  # a code version above all: itself


async def test_concurrent_allocations_get_distinct_versions(backend: Backend) -> None:
    """Eight clients taking versions at once each get a different one."""
    got: list[int] = []

    async def take() -> None:
        async with backend.open_checkpoints() as store:
            got.append(await ProjectionVersions(store).allocate(NAME, above=1))

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for _ in range(8):
                nursery.start_soon(take)
    assert sorted(got) == list(range(2, 10))
