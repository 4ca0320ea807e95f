"""How the engine looks from outside, JSON-ready: the status page's document.

The JSON presentation of the engine's parts lives here, in the daemon, so that the
observability floor never imports the engine it observes.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any, Final

import attrs
import trio

from engine.events import utc_now
from engine.observability.logging import redact_text

if TYPE_CHECKING:
    from collections.abc import Mapping

    from engine.observability.instrumented import InstrumentedLocks
    from engine.observability.profiler import Profiler
    from engine.observability.status import EventModel, RecentErrors, RunnerHistory
    from engine.runners.runner import Runner
    from engine.stores.base import DeadLetterStore, EventStore

__all__ = ["StatusSources", "status_document"]

#: Parked events the status page lists (the latest).
_PARKED_SHOWN: Final = 50


def _iso(value: dt.datetime) -> str:
    return value.isoformat(timespec="seconds")


@attrs.frozen(kw_only=True)
class StatusSources:
    """What the status page is made of: the engine's parts it reads."""

    node_id: str
    backend: str
    started_at: float
    store: EventStore[Any]
    locks: InstrumentedLocks
    runners: Mapping[str, Runner[Any]]
    runner_kinds: Mapping[str, str]
    dead_letters: DeadLetterStore
    history: RunnerHistory
    model: EventModel
    errors: RecentErrors
    profiler: Profiler


async def status_document(engine: StatusSources) -> dict[str, Any]:
    """Everything the status page shows, JSON-ready (``GET /status.json``)."""
    from engine import __version__

    now = trio.current_time()
    head = await engine.store.head_position()
    held = {lease.key: lease for lease in engine.locks.held()}
    runners = []
    for name, runner in sorted(engine.runners.items()):
        stats = runner.statistics()
        lease = held.get(runner.lease_key)
        runners.append(
            {
                "name": name,
                "kind": engine.runner_kinds.get(name, "runner"),
                "state": stats.state.value,
                "checkpoint": stats.checkpoint,
                "head": stats.head,
                "lag": stats.lag,
                "rate": round(stats.rate, 3),
                "processed": stats.processed,
                "retries": stats.retries,
                "parked": stats.parked,
                "restarts": stats.restarts,
                "last_error": redact_text(stats.last_error or "") or None,
                "lease": None if lease is None else {"token": lease.token, "owner": lease.owner},
            }
        )
    letters = await engine.dead_letters.dead_letters()
    return {
        "node_id": engine.node_id,
        "version": __version__,
        "store": engine.backend,
        "time": _iso(utc_now()),
        "uptime_seconds": round(now - engine.started_at, 3),
        "head": head,
        "runners": runners,
        "history": engine.history.to_json(),
        "model": engine.model.to_json(),
        "errors": {
            "total": engine.errors.total,
            "recent": [
                {"at": _iso(e.at), "source": e.source, "kind": e.kind, "message": e.message}
                for e in engine.errors.entries()
            ],
        },
        "parked": {
            "total": len(letters),
            "recent": [
                {
                    "runner": letter.runner,
                    "position": letter.position,
                    "stream_id": letter.stream_id,
                    "type": letter.type,
                    "reason": redact_text(letter.reason),
                    "attempts": letter.attempts,
                    "parked_at": _iso(letter.parked_at),
                }
                for letter in letters[-_PARKED_SHOWN:]
            ],
        },
        "locks": [
            {
                "key": lease.key,
                "owner": lease.owner,
                "token": lease.token,
                "held_seconds": round(now - lease.since, 3),
            }
            for lease in engine.locks.held()
        ],
        "profiler": engine.profiler.to_json(),
    }
