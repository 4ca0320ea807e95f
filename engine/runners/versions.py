"""Which version of each projection is live: a durable record beside the checkpoints.

A rebuild builds a projection again as a new version (its own checkpoint
``<name>@<version>``, its own SQL tables) and switches to it. For that switch to outlive
the process, and to reach every node of a cluster, it is recorded in the checkpoint store
(the same table or KV bucket as the runners' checkpoints), under two reserved names:

* ``<name>#latest``: the highest version ever handed out for the projection. A rebuild
  takes the next one with a compare-and-set, *before* it sets anything up, so no version
  is ever built twice: a rebuild after a restart, or after a crash in the middle of a
  rebuild, gets a version no table and no checkpoint has seen (an abandoned version's
  tables stay behind, unused).
* ``<name>#live@<code>``: the live version for the code version ``code`` (the
  ``version`` the plugin's definition declares). Nodes running the same code follow
  the same record; a node running other code (a rolling upgrade that changes the read
  model) has a record of its own, so it never feeds the other code's tables.

The values are versions stored as checkpoint positions, so every
:class:`~engine.stores.base.CheckpointStore` (memory, SQLite, PostgreSQL, NATS KV)
keeps them with the compare-and-set its contract suite checks.
"""

from __future__ import annotations

import attrs

from engine.errors import CheckpointConflictError
from engine.stores.base import CheckpointStore

__all__ = ["ProjectionVersions"]

#: Compare-and-set attempts before a version record update gives up (each conflict
#: means another node changed the record meanwhile: rare, and the next read sees it).
_ATTEMPTS = 8


@attrs.frozen
class ProjectionVersions:
    """The durable version records of projections, in ``checkpoints``.

    Args:
        checkpoints: Where the runners' checkpoints live (shared by every node).
    """

    checkpoints: CheckpointStore

    @staticmethod
    def checkpoint_name(name: str, version: int) -> str:
        """The checkpoint name of version ``version`` of projection ``name``."""
        return f"{name}@{version}"

    async def live(self, name: str, code: int) -> int | None:
        """The recorded live version of ``name`` for code version ``code``, if any."""
        return await self.checkpoints.load_checkpoint(f"{name}#live@{code}")

    async def resolve(self, name: str, code: int) -> int:
        """The version a node running code version ``code`` serves and feeds.

        The recorded live version when there is one. Otherwise (the first start of this
        code version) ``code`` itself, unless a rebuild already used that number: then a
        new version is taken and recorded as live, so new code never inherits tables
        built by other code.

        Raises:
            CheckpointConflictError: Other nodes kept changing the record.
        """
        for _ in range(_ATTEMPTS):
            live = await self.live(name, code)
            if live is not None:
                return live
            latest = await self._latest(name)
            if latest is None or code > latest:
                version = code
                try:
                    await self.checkpoints.save_checkpoint(f"{name}#latest", code, expected=latest)
                except CheckpointConflictError:
                    continue
            else:
                version = await self.allocate(name, above=code)
            try:
                await self.checkpoints.save_checkpoint(
                    f"{name}#live@{code}", version, expected=None
                )
            except CheckpointConflictError:
                continue  # another node recorded one first: serve that one
            return version
        raise CheckpointConflictError(f"{name}#live@{code}", None, None)

    async def allocate(self, name: str, *, above: int) -> int:
        """Take a version of ``name`` never used before (and greater than ``above``).

        Skips any version that has a checkpoint already (built before these records
        existed). The version is recorded as taken before this returns, so a crash
        after it only leaves an unused number behind.

        Raises:
            CheckpointConflictError: Other nodes kept taking versions.
        """
        for _ in range(_ATTEMPTS):
            latest = await self._latest(name)
            version = max(latest or 0, above) + 1
            while (
                await self.checkpoints.load_checkpoint(self.checkpoint_name(name, version))
                is not None
            ):
                version += 1
            try:
                await self.checkpoints.save_checkpoint(f"{name}#latest", version, expected=latest)
            except CheckpointConflictError:
                continue
            return version
        raise CheckpointConflictError(f"{name}#latest", None, None)

    async def switch(self, name: str, code: int, *, old: int, new: int) -> None:
        """Record ``new`` as the live version for code version ``code`` (was ``old``).

        Raises:
            CheckpointConflictError: The live version is no longer ``old`` (another
                node switched meanwhile).
        """
        recorded = await self.live(name, code)
        if recorded is None and old == code:
            expected = None
        elif recorded == old:
            expected = old
        else:
            raise CheckpointConflictError(f"{name}#live@{code}", old, recorded)
        await self.checkpoints.save_checkpoint(f"{name}#live@{code}", new, expected=expected)

    async def _latest(self, name: str) -> int | None:
        return await self.checkpoints.load_checkpoint(f"{name}#latest")
