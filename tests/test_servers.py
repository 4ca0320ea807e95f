"""The test suite's real servers start and answer."""

from __future__ import annotations

import psycopg
import trio

from tests.conftest import NatsTarget, PgTarget


def test_postgres_answers(pg: PgTarget) -> None:
    """The session's PostgreSQL accepts connections and the test's schema exists."""
    with psycopg.connect(pg.dsn) as conn:
        row = conn.execute(
            "SELECT count(*) FROM information_schema.schemata WHERE schema_name = %s", [pg.schema]
        ).fetchone()
    assert row == (1,)


async def test_nats_answers(nats: NatsTarget) -> None:
    """The session's nats-server speaks the NATS protocol on its client port."""
    host, port = nats.url.removeprefix("nats://").rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    async with stream:
        greeting = await stream.receive_some(4096)
    assert greeting.startswith(b"INFO ")
    assert b'"jetstream":true' in greeting
