"""Open a store from a one-string target, the same way in a test and in a child process.

Targets: ``sqlite <path>``, ``postgres <dsn> <schema>``, ``nats <url> <namespace>``.
Each backend's module is imported only when used, so a writer process starts fast.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from engine.stores.base import EventStore
from tests.faults.ledger import fault_codec


@asynccontextmanager
async def open_target(target: list[str], **options: Any) -> AsyncIterator[EventStore[Any]]:
    """Open the event store named by ``target`` with the fault tests' codec."""
    kind, *where = target
    if kind == "sqlite":
        from engine.stores.sqlite import open_sqlite_store

        async with open_sqlite_store(where[0], fault_codec(), **options) as sqlite:
            yield sqlite
    elif kind == "postgres":
        from engine.stores.postgres import open_postgres_store

        options.setdefault("max_pool_size", 2)
        options.setdefault("min_pool_size", 1)
        async with open_postgres_store(
            where[0], fault_codec(), schema=where[1], **options
        ) as postgres:
            yield postgres
    elif kind == "nats":
        from engine.stores.nats import open_nats_store

        async with open_nats_store(where[0], fault_codec(), namespace=where[1], **options) as nats:
            yield nats
    else:
        raise ValueError(f"unknown backend {kind!r}")
