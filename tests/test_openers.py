"""Every public ``async with open_*()`` lets a lone error out as itself, never wrapped in
an exception group, so ``except SomeError`` around the block works (STYLE rule 27)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import pytest
import trio

from engine.bus.nats import open_nats_event_bus
from engine.cluster import open_cluster_router
from engine.daemon.engine import open_engine, open_nats_from_config
from engine.dcb.postgres import open_postgres_dcb_store
from engine.dcb.sqlite import open_sqlite_dcb_store
from engine.drivers.nats import open_nats
from engine.drivers.postgres import open_pg_pool, open_pg_session
from engine.drivers.sqlite import open_sqlite
from engine.errors import ConcurrencyError
from engine.events import NewEvent
from engine.groups import lone_error
from engine.locks.memory import MemoryLockRegistry
from engine.locks.nats import open_nats_lock_registry
from engine.locks.postgres import open_pg_lock_registry
from engine.stores.nats import open_nats_store
from engine.stores.postgres import open_postgres_store
from engine.stores.sqlite import open_sqlite_store
from engine.testing.contract import Note, contract_codec
from engine.testing.sql import SqlProjectionSpec
from tests.conftest import NatsTarget, PgTarget
from tests.test_engine_commands import config_for


class Boom(Exception):
    """A user's own error, raised inside the block."""


Opener = Callable[[], AbstractAsyncContextManager[Any]]


def _openers(tmp_path: Path, pg: PgTarget | None, nats: NatsTarget | None) -> dict[str, Opener]:
    codec = contract_codec()
    openers: dict[str, Opener] = {
        "open_sqlite": lambda: open_sqlite(tmp_path / "driver.db"),
        "open_sqlite_store": lambda: open_sqlite_store(tmp_path / "store.db", codec),
        "open_sqlite_dcb_store": lambda: open_sqlite_dcb_store(tmp_path / "dcb.db", codec),
        "open_engine": lambda: open_engine(config_for(tmp_path), plugins=[]),
        "open_nats_from_config": lambda: open_nats_from_config(config_for(tmp_path)),
        "SqlProjectionSpec.open_sqlite": lambda: SqlProjectionSpec(setup=_sql_setup).open_sqlite(
            tmp_path / "spec.db"
        ),
    }
    if pg is not None:
        dsn, schema = pg.dsn, pg.schema
        openers |= {
            "open_pg_pool": lambda: open_pg_pool(dsn),
            "open_pg_session": lambda: open_pg_session(dsn),
            "open_postgres_store": lambda: open_postgres_store(dsn, codec, schema=schema),
            "open_postgres_dcb_store": lambda: open_postgres_dcb_store(
                dsn, codec, schema=schema + "_dcb"
            ),
            "open_pg_lock_registry": lambda: open_pg_lock_registry(dsn, schema=schema + "_l"),
        }
    if nats is not None:
        url, namespace = nats.url, nats.namespace
        openers |= {
            "open_nats": lambda: open_nats(url),
            "open_nats_store": lambda: open_nats_store(url, codec, namespace=namespace),
            "open_nats_event_bus": lambda: open_nats_event_bus(url, namespace=namespace),
            "open_nats_lock_registry": lambda: open_nats_lock_registry(url, namespace=namespace),
        }
    return openers


async def _sql_setup(context: Any) -> Any:
    from engine.plugin import ProjectionSetup
    from engine.runners import TransactionalProjection

    async def handle(events: Any, transaction: Any) -> None: ...

    return ProjectionSetup(handler=TransactionalProjection(context.sql, handle))


LOCAL = [
    "open_sqlite",
    "open_sqlite_store",
    "open_sqlite_dcb_store",
    "open_engine",
    "open_nats_from_config",
    "SqlProjectionSpec.open_sqlite",
]
POSTGRES = [
    "open_pg_pool",
    "open_pg_session",
    "open_postgres_store",
    "open_postgres_dcb_store",
    "open_pg_lock_registry",
]
NATS = ["open_nats", "open_nats_store", "open_nats_event_bus", "open_nats_lock_registry"]


@pytest.fixture(params=LOCAL + POSTGRES + NATS)
def opener(request: pytest.FixtureRequest, tmp_path: Path) -> Opener:
    """One public opener on real resources (a file, the session's PostgreSQL or NATS)."""
    name: str = request.param
    pg = request.getfixturevalue("pg") if name in POSTGRES else None
    nats = request.getfixturevalue("nats") if name in NATS else None
    return _openers(tmp_path, pg, nats)[name]


async def test_a_users_error_in_the_block_comes_out_as_itself(opener: Opener) -> None:
    """``except Boom`` around ``async with open_x()`` catches the Boom raised in the block."""
    boom = Boom("mine")
    with pytest.raises(Boom) as info:
        async with opener():
            raise boom
    assert info.value is boom


async def test_a_concurrency_error_is_caught_around_the_store(pg: PgTarget, tmp_path: Path) -> None:
    """A real append conflict inside ``open_postgres_store`` and ``open_sqlite_store``
    reaches ``except ConcurrencyError`` around the block."""
    caught: list[ConcurrencyError] = []
    for open_store in (
        lambda: open_postgres_store(pg.dsn, contract_codec(), schema=pg.schema),
        lambda: open_sqlite_store(tmp_path / "conflict.db", contract_codec()),
    ):
        try:
            async with open_store() as store:
                await store.append("s", [NewEvent(Note("a"))])
                await store.append("s", [NewEvent(Note("b"))], expected_version=0)
        except ConcurrencyError as exc:
            caught.append(exc)
    assert [(e.expected, e.actual) for e in caught] == [(0, 1), (0, 1)]


async def test_an_error_of_the_cluster_router_block_comes_out_as_itself(
    nats: NatsTarget,
) -> None:
    """``open_cluster_router`` (a nursery serving forwarded commands) unwraps too."""

    async def handle_local(request: Any) -> dict[str, Any]:
        return {}

    async with open_nats(nats.url) as connection:
        with pytest.raises(Boom):
            async with open_cluster_router(
                connection,
                MemoryLockRegistry(),
                node_id="n1",
                namespace=nats.namespace,
                handle_local=handle_local,
                describe_error=str,
            ):
                raise Boom


def test_several_errors_stay_a_group_and_cancellations_beside_one_error_are_dropped() -> None:
    """Only a lone error is unwrapped: two real errors are both kept."""
    one, two = Boom("1"), Boom("2")
    nested = ExceptionGroup("outer", [ExceptionGroup("inner", [one])])
    assert lone_error(nested) is one
    assert lone_error(ExceptionGroup("two", [one, two])) is None
    cancelled = _a_cancelled()
    assert lone_error(BaseExceptionGroup("mixed", [cancelled, one])) is one
    assert lone_error(BaseExceptionGroup("only", [cancelled])) is cancelled


def _a_cancelled() -> trio.Cancelled:
    caught: list[trio.Cancelled] = []

    async def main() -> None:
        with trio.CancelScope() as scope:
            scope.cancel()
            try:
                await trio.lowlevel.checkpoint()
            except trio.Cancelled as exc:
                caught.append(exc)
                raise

    trio.run(main)
    return caught[0]
