"""Session-wide real servers and per-test isolation.

PostgreSQL and nats-server start once per session in sync fixtures (pytest-trio's async
fixtures are per-test); each test gets its own PostgreSQL schema and its own NATS
namespace, so tests never see each other's data. Set ``ESKIT_TEST_PG_DSN`` /
``ESKIT_TEST_NATS_URL`` to use servers you run yourself.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator

import attrs
import pytest
import trio_asyncio

from tests.servers import NatsServer, PostgresServer, run_nats, run_postgres


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A real PostgreSQL for the whole session."""
    with run_postgres() as server:
        yield server


@pytest.fixture(scope="session")
def nats_server() -> Iterator[NatsServer]:
    """A real nats-server with JetStream for the whole session."""
    with run_nats() as server:
        yield server


@attrs.frozen
class PgTarget:
    """Where one test's PostgreSQL tables go: a fresh schema in the session's server."""

    dsn: str
    schema: str


@pytest.fixture
def pg(postgres_server: PostgresServer) -> Iterator[PgTarget]:
    """A fresh, empty schema for this test (dropped afterwards)."""
    import psycopg

    schema = f"t_{secrets.token_hex(6)}"
    with psycopg.connect(postgres_server.dsn, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    yield PgTarget(postgres_server.dsn, schema)
    with psycopg.connect(postgres_server.dsn, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


@attrs.frozen
class NatsTarget:
    """One test's NATS namespace: a unique prefix for stream, bucket and subject names."""

    url: str
    namespace: str


@pytest.fixture
def nats(nats_server: NatsServer) -> NatsTarget:
    """A unique namespace for this test's JetStream streams and KV buckets."""
    return NatsTarget(nats_server.url, f"T{secrets.token_hex(6).upper()}")


@pytest.fixture
async def asyncio_loop() -> AsyncIterator[trio_asyncio.TrioEventLoop]:
    """The one trio-asyncio loop of a test; every asyncio-bridged fixture depends on it."""
    async with trio_asyncio.open_loop() as loop:
        yield loop


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Leave the ``slow`` tier out unless it is asked for (``pytest -m slow``).

    The slow tier (long soaks, larger oracles, many fault repetitions) runs on demand;
    CI and ``make test`` run the bounded tier.
    """
    markexpr = str(config.getoption("markexpr", "") or "")
    if "slow" in markexpr:
        return
    slow = [item for item in items if item.get_closest_marker("slow")]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if not item.get_closest_marker("slow")]
