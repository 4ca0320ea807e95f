"""A specification for SQL read models on a real database.

:class:`SqlProjectionSpec` runs a projection whose setup returns a
:class:`~engine.runners.base.TransactionalProjection` (a read model kept in the event
store's database, see ``docs/runtime.md``) against a real SQLite file or a real
PostgreSQL schema, exactly as the engine sets it up, and lets the test query it::

    spec = SqlProjectionSpec(setup=balances)
    async with spec.open_sqlite(tmp_path / "read-model.db") as model:
        await model.given(AccountOpened(100), MoneyDeposited(5), stream_id="acc-1")
        await model.then("balance", {"account": "acc-1", "balance": 105}, account="acc-1")
        assert await model.fetch("SELECT count(*) FROM bank_balances_v1") == [(1,)]

It sits beside the contract suites (it uses trio and the store adapters), so it is
imported from its module: ``from engine.testing.sql import SqlProjectionSpec``.
"""

from __future__ import annotations

import inspect
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs

from engine.codec import Codec, EventRegistry
from engine.events import Event
from engine.plugin import ProjectionContext, ProjectionSetup
from engine.runners.base import TransactionalProjection
from engine.stores.base import EventStore, SqlDatabase
from engine.testing.specs import SPEC_STREAM_ID, _mismatch, _Numbering

__all__ = ["SqlProjectionSpec", "SqlReadModel"]

#: ``setup(context)`` of a plugin's projection.
Setup = Callable[[ProjectionContext], ProjectionSetup | Awaitable[ProjectionSetup]]


@attrs.define(eq=False)
class SqlReadModel:
    """A read model set up on a real database by :class:`SqlProjectionSpec`.

    Attributes:
        database: The SQL database (the store's own, as in the engine).
        setup: What the projection's setup returned (handler and queries).
    """

    database: SqlDatabase
    setup: ProjectionSetup
    _projection: TransactionalProjection[Any, Any]
    _numbering: _Numbering = attrs.field(factory=_Numbering)

    async def given(self, *events: Any, stream_id: str = SPEC_STREAM_ID) -> list[Event[Any]]:
        """Feed ``events`` (data or :class:`~engine.events.Event`) as one batch, in one
        transaction, as the projection's runner does; commit it.

        Bare data is placed in ``stream_id``; positions go on from the previous call.

        Returns:
            The events as fed.
        """
        wrapped = self._numbering.wrap(events, stream_id)
        if wrapped:
            async with self._projection.store.transaction() as transaction:
                await self._projection.handle(wrapped, transaction)
        return wrapped

    async def query(self, name: str, /, **params: str) -> Any:
        """The answer of the projection's query ``name`` to ``params``."""
        queries = self.setup.queries
        if name not in queries:
            known = ", ".join(sorted(queries)) or "none"
            raise AssertionError(f"the projection has no query {name!r} (has: {known})")
        return await queries[name](params)

    async def then(self, name: str, expected: Any, /, **params: str) -> None:
        """Assert the answer of the query ``name`` to ``params``."""
        actual = await self.query(name, **params)
        if actual != expected:
            raise _mismatch(f"answers of {name!r}", expected, actual)

    async def fetch(
        self, query: str, params: Sequence[Any] | Mapping[str, Any] = ()
    ) -> list[tuple[Any, ...]]:
        """Rows of a SQL query over the committed read model."""
        return await self.database.fetch(query, params)  # type: ignore[arg-type]  # both backends take a mapping too


@attrs.frozen(kw_only=True)
class SqlProjectionSpec:
    """Runs a SQL read model's projection on a real database and lets the test query it.

    Args:
        setup: The projection's ``setup(context)``; it must return a
            :class:`~engine.runners.base.TransactionalProjection` handler on
            ``context.sql``.
        name: The projection's name in the context (``plugin.projection``).
        version: The projection's version in the context (read models name their
            tables after it).
        codec: The codec of the store that is opened (no events are stored in it).
    """

    setup: Setup
    name: str = "spec.projection"
    version: int = 1
    codec: Codec[Any] = attrs.field(factory=lambda: Codec(EventRegistry()))

    @asynccontextmanager
    async def open_sqlite(self, path: str | Path) -> AsyncIterator[SqlReadModel]:
        """Set the read model up in the SQLite file ``path`` (created if missing)."""
        from engine.stores.sqlite import open_sqlite_store

        async with open_sqlite_store(path, self.codec) as store:
            yield await self._set_up(store, store.transactional(), Path(path).parent)

    @asynccontextmanager
    async def open_postgres(
        self, dsn: str, *, schema: str = "eskit"
    ) -> AsyncIterator[SqlReadModel]:
        """Set the read model up in the PostgreSQL ``schema`` of the database at ``dsn``."""
        from engine.stores.postgres import open_postgres_store

        async with open_postgres_store(dsn, self.codec, schema=schema) as store:
            with tempfile.TemporaryDirectory(prefix="eskit-spec-") as data_dir:
                yield await self._set_up(store, store.transactional(), Path(data_dir))

    async def _set_up(
        self, store: EventStore[Any], database: SqlDatabase, data_dir: Path
    ) -> SqlReadModel:
        context = ProjectionContext(
            store=store,
            data_dir=data_dir,
            node_id="spec",
            sql=database,
            name=self.name,
            version=self.version,
        )
        setup = self.setup(context)
        if inspect.isawaitable(setup):
            setup = await setup
        if not isinstance(setup, ProjectionSetup):
            raise TypeError(f"the setup returned {type(setup).__qualname__}, not ProjectionSetup")
        if not isinstance(setup.handler, TransactionalProjection):
            raise TypeError(
                "SqlProjectionSpec runs a TransactionalProjection on context.sql; the setup "
                f"returned a {type(setup.handler).__qualname__} handler"
            )
        return SqlReadModel(database, setup, setup.handler)
