"""A concurrency oracle for DCB stores: random conditional appends, then a replay check.

Many workers (tasks on their own store clients, or separate processes) read a random
query, then append one to three events with random types and tags under
``AppendCondition(query, after)``, where ``after`` is the read's head or, now and then,
an older position. Each worker records every attempt: its event ids, its condition and
whether it was accepted (with the returned position) or rejected.

:func:`validate` then replays the final log against the records and reports every
violation of:

* positions strictly increase and event ids are unique;
* every event in the log belongs to an accepted append, whose events sit next to each
  other in the log, in order, the last at the position ``append`` returned;
* **the condition held**: no event matching an accepted append's query lies between its
  ``after`` and the append's first event;
* a rejected append wrote nothing, and an event matching its query does exist after its
  ``after`` (the rejection was not spurious).
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

import attrs
import trio

from engine.codec import Codec, EventRegistry
from engine.dcb.base import (
    AppendCondition,
    AppendConditionError,
    DcbEvent,
    DcbStore,
    Query,
    QueryItem,
    SequencedEvent,
)

__all__ = [
    "AppendRecord",
    "OracleReport",
    "OracleSettings",
    "oracle_codec",
    "oracle_worker",
    "read_log",
    "run_oracle_tasks",
    "validate",
]


@attrs.frozen
class OracleA:
    """An oracle event: which worker appended it, in which attempt, at which index."""

    worker: int
    attempt: int
    index: int


@attrs.frozen
class OracleB:
    """A second oracle event type."""

    worker: int
    attempt: int
    index: int


@attrs.frozen
class OracleC:
    """A third oracle event type."""

    worker: int
    attempt: int
    index: int


_CLASSES: dict[str, type] = {"oracle.A": OracleA, "oracle.B": OracleB, "oracle.C": OracleC}


def oracle_codec() -> Codec[Any]:
    """The codec oracle stores are opened with."""
    registry = EventRegistry()
    for name, cls in _CLASSES.items():
        registry.register(cls, name=name)
    return Codec(registry)


@attrs.frozen
class OracleSettings:
    """The size of an oracle run.

    Attributes:
        workers: Concurrent writers.
        appends_per_worker: Append attempts per writer.
        tags: The tag vocabulary (few tags make conflicts frequent).
        stale_after_rate: How often ``after`` is set below the read's head.
        seed: Seed of the workers' random choices (each worker adds its id).
    """

    workers: int = 4
    appends_per_worker: int = 50
    tags: tuple[str, ...] = ("t0", "t1", "t2", "t3")
    stale_after_rate: float = 0.2
    seed: int = 1


@attrs.frozen
class AppendRecord:
    """One append attempt as its worker saw it.

    Attributes:
        worker: The worker id.
        attempt: The attempt number within the worker.
        event_ids: The batch's event ids, in order.
        items: The condition's query items as ``(types, tags)`` pairs (empty: all).
        after: The condition's ``after``.
        position: The returned position when accepted, else ``None``.
    """

    worker: int
    attempt: int
    event_ids: tuple[str, ...]
    items: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...]
    after: int | None
    position: int | None

    @property
    def accepted(self) -> bool:
        """Whether the store accepted the append."""
        return self.position is not None

    def query(self) -> Query:
        """The condition's query."""
        return Query([QueryItem(types, tags) for types, tags in self.items])

    def to_json(self) -> dict[str, Any]:
        """Plain values, for workers in other processes."""
        return {
            "worker": self.worker,
            "attempt": self.attempt,
            "event_ids": list(self.event_ids),
            "items": [[list(types), list(tags)] for types, tags in self.items],
            "after": self.after,
            "position": self.position,
        }

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> AppendRecord:
        """Rebuild a record written by :meth:`to_json`."""
        return cls(
            worker=value["worker"],
            attempt=value["attempt"],
            event_ids=tuple(value["event_ids"]),
            items=tuple((tuple(types), tuple(tags)) for types, tags in value["items"]),
            after=value["after"],
            position=value["position"],
        )


@attrs.frozen
class OracleReport:
    """The outcome of :func:`validate`."""

    accepted: int
    rejected: int
    events: int
    violations: list[str]

    def summary(self) -> str:
        """A readable one-paragraph report (violations first, at most 20)."""
        head = (
            f"{self.accepted} accepted, {self.rejected} rejected appends, "
            f"{self.events} events, {len(self.violations)} violations"
        )
        return "\n".join([head, *self.violations[:20]])


def _random_query(rng: random.Random, tags: Sequence[str]) -> Query:
    if rng.random() < 0.05:
        return Query.all()
    items = []
    for _ in range(rng.randint(1, 2)):
        types = rng.sample(sorted(_CLASSES), rng.randint(0, 2))
        item_tags = rng.sample(list(tags), rng.randint(0 if types else 1, 2))
        items.append(QueryItem(types, item_tags))
    return Query(items)


async def oracle_worker(
    store: DcbStore[Any], worker: int, settings: OracleSettings
) -> list[AppendRecord]:
    """Run one worker's random conditional appends against ``store``.

    Returns:
        One record per attempt.
    """
    rng = random.Random(settings.seed * 1_000_003 + worker)
    records = []
    for attempt in range(settings.appends_per_worker):
        query = _random_query(rng, settings.tags)
        _, head = await store.read(query)
        after: int | None = head
        if rng.random() < settings.stale_after_rate:
            after = rng.choice([None, max(head - rng.randint(1, 5), 0)])
        batch = [
            DcbEvent(
                rng.choice(list(_CLASSES.values()))(worker, attempt, index),
                rng.sample(list(settings.tags), rng.randint(0, 3)),
            )
            for index in range(rng.randint(1, 3))
        ]
        # A short random pause widens the window between read and append, so that
        # other workers' appends land in it.
        if rng.random() < 0.5:
            await trio.sleep(rng.uniform(0, 0.002))
        position: int | None
        try:
            position = await store.append(batch, AppendCondition(query, after))
        except AppendConditionError:
            position = None
        records.append(
            AppendRecord(
                worker=worker,
                attempt=attempt,
                event_ids=tuple(str(event.event_id) for event in batch),
                items=tuple((item.types, item.tags) for item in query.items),
                after=after,
                position=position,
            )
        )
    return records


async def read_log(store: DcbStore[Any], *, page: int = 1000) -> list[SequencedEvent[Any]]:
    """The whole log, page by page."""
    events: list[SequencedEvent[Any]] = []
    after = 0
    while True:
        batch, head = await store.read(None, after=after, limit=page)
        events.extend(batch)
        if len(batch) < page:
            return events
        after = head


def validate(log: Sequence[SequencedEvent[Any]], records: Sequence[AppendRecord]) -> OracleReport:
    """Check the final log against every worker's records (see the module docstring)."""
    violations: list[str] = []
    index_of: dict[str, int] = {}
    for index, event in enumerate(log):
        if index and event.position <= log[index - 1].position:
            violations.append(
                f"position {event.position} follows {log[index - 1].position} in the log"
            )
        key = str(event.event_id)
        if key in index_of:
            violations.append(f"event id {key} is stored twice")
        index_of[key] = index
    positions = [event.position for event in log]
    owned: set[str] = set()
    accepted = rejected = 0
    for record in records:
        name = f"worker {record.worker} attempt {record.attempt}"
        query = record.query()
        after = record.after or 0
        if not record.accepted:
            rejected += 1
            stored = [key for key in record.event_ids if key in index_of]
            if stored:
                violations.append(f"{name}: rejected, but {len(stored)} of its events are stored")
            start = bisect.bisect_right(positions, after)
            if not any(query.matches(event.type, event.tags) for event in log[start:]):
                violations.append(f"{name}: rejected, but nothing matches its query after {after}")
            continue
        accepted += 1
        owned.update(record.event_ids)
        indexes = [index_of.get(key) for key in record.event_ids]
        if None in indexes:
            violations.append(f"{name}: accepted, but some of its events are missing")
            continue
        found = [index for index in indexes if index is not None]
        if found != list(range(found[0], found[0] + len(found))):
            violations.append(f"{name}: its events are not adjacent and in order: {found}")
        first, last = log[found[0]], log[found[-1]]
        if last.position != record.position:
            violations.append(
                f"{name}: append returned {record.position}, its last event is at {last.position}"
            )
        for event in log[bisect.bisect_right(positions, after) : found[0]]:
            if query.matches(event.type, event.tags):
                violations.append(
                    f"{name}: accepted at {first.position}, but event {event.position} "
                    f"({event.type} {list(event.tags)}) matched its condition after {after}"
                )
                break
    for key in index_of:
        if key not in owned:
            violations.append(
                f"event {key} at {log[index_of[key]].position} has no accepted append"
            )
    return OracleReport(accepted, rejected, len(log), violations)


async def run_oracle_tasks(
    open_store: Callable[..., AbstractAsyncContextManager[DcbStore[Any]]],
    settings: OracleSettings | None = None,
) -> OracleReport:
    """Run the oracle with one task (and one store client) per worker, then validate.

    Args:
        open_store: ``open_store(codec)`` opens a client on the backend's shared data.
        settings: The size of the run.
    """
    settings = settings or OracleSettings()
    results: list[AppendRecord] = []

    async def run(worker: int) -> None:
        async with open_store(oracle_codec()) as store:
            results.extend(await oracle_worker(store, worker, settings))

    async with trio.open_nursery() as nursery:
        for worker in range(settings.workers):
            nursery.start_soon(run, worker)
    async with open_store(oracle_codec()) as store:
        log = await read_log(store)
    return validate(log, results)
