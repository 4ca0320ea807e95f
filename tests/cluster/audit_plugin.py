"""A test plugin with a durable projection: every event recorded in a PostgreSQL table.

The table ``audit`` (in the schema named by ``CLUSTER_AUDIT_SCHEMA`` of the database
``CLUSTER_AUDIT_DSN``) gets one row per event, keyed by stream and version, with the node
that recorded it and how often it was delivered. It lets the cluster tests check that a
durable runner that moves between nodes loses no event (at-least-once: a batch
redelivered after a crash only bumps ``deliveries``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import psycopg
import trio

from engine import EventRegistry, Plugin, ProjectionContext, ProjectionDefinition, ProjectionSetup
from engine.events import Event
from engine.runners.base import BatchProjection

DSN_VARIABLE = "CLUSTER_AUDIT_DSN"
SCHEMA_VARIABLE = "CLUSTER_AUDIT_SCHEMA"


def audit(context: ProjectionContext) -> ProjectionSetup:
    """Record each event's stream, version and position, and the node that saw it."""
    dsn = os.environ[DSN_VARIABLE]
    schema = os.environ[SCHEMA_VARIABLE]
    table = f'"{schema}".audit'
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {table} (stream_id text, version int, position bigint,"
            " node text, deliveries int NOT NULL DEFAULT 1, PRIMARY KEY (stream_id, version))"
        )
    limiter = trio.CapacityLimiter(1)

    def write(rows: list[tuple[str, int, int, str]]) -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.cursor().executemany(
                f"INSERT INTO {table} (stream_id, version, position, node) VALUES (%s, %s, %s, %s)"
                " ON CONFLICT (stream_id, version) DO UPDATE SET deliveries ="
                f" {table}.deliveries + 1",
                rows,
            )

    async def handle(events: Sequence[Event[Any]]) -> None:
        rows = [(e.stream_id, e.version, e.position, context.node_id) for e in events]
        await trio.to_thread.run_sync(write, rows, limiter=limiter)

    return ProjectionSetup(handler=BatchProjection(handle), durable=True)


plugin = Plugin(
    name="audit",
    description="Test plugin: every event recorded in a PostgreSQL table (durable).",
    events=EventRegistry(),
    projections=[ProjectionDefinition(name="audit", setup=audit)],
)
