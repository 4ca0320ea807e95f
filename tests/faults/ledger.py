"""Bookkeeping shared by the fault tests: what each operation returned, and the audit.

Every fault test writes batches whose content is a pure function of (stream, batch
index), records each append as ok, failed or unknown, resolves unknowns by retrying with
the same idempotency key and event ids, and ends with a full ``read_all``. The audit then
counts acknowledged-but-lost, failed-but-present, duplicated and out-of-order events, and
partial batches.
"""

from __future__ import annotations

import itertools
import json
import os
import uuid
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import attrs

from engine.codec import Codec, EventRegistry
from engine.events import Event, NewEvent
from engine.stores.base import EventStore

#: Where the figures of every run are appended (one JSON object a line) for docs/reliability.md.
RESULTS_ENV = "ESKIT_FAULT_RESULTS"

_IDS = uuid.UUID("6f0b3c1e-9a55-4f5e-8d0e-2b7f1c9d4a10")


@attrs.frozen
class Entry:
    """One event of a fault-test batch: which batch, and its index in the batch."""

    batch: int
    index: int


def fault_codec() -> Codec[Any]:
    """The codec of the fault tests' stores (kept apart from the contract, whose module
    imports pytest: a writer process must start fast)."""
    registry = EventRegistry()
    registry.register(Entry, name="faults.Entry")
    return Codec(registry)


def batch_size(batch: int) -> int:
    """How many events batch ``batch`` holds (1 to 8, mostly several)."""
    return 1 + (batch * 7919) % 8


def batch_key(stream_id: str, batch: int) -> str:
    """The idempotency key of one batch."""
    return f"{stream_id}#{batch}"


def batch_events(stream_id: str, batch: int) -> list[NewEvent[Entry]]:
    """The events of one batch, with event ids derived from (stream, batch, index)."""
    return [
        NewEvent(
            Entry(batch, index),
            {"batch": str(batch)},
            uuid.uuid5(_IDS, f"{stream_id}/{batch}/{index}"),
        )
        for index in range(batch_size(batch))
    ]


@attrs.define
class Ledger:
    """What each append returned, per stream and batch."""

    ok: dict[tuple[str, int], int] = attrs.field(factory=dict)
    failed: set[tuple[str, int]] = attrs.field(factory=set)
    unknown: dict[tuple[str, int], int] = attrs.field(factory=dict)
    operations: int = 0
    unknown_seen: int = 0
    unknown_resolved: int = 0

    def record_ok(self, stream_id: str, batch: int, first_position: int = 0) -> None:
        """An append returned: its events must be there."""
        self.operations += 1
        self.unknown_resolved += self.unknown.pop((stream_id, batch), 0)
        self.failed.discard((stream_id, batch))
        self.ok[(stream_id, batch)] = first_position

    def record_failed(self, stream_id: str, batch: int) -> None:
        """An append raised an error that says nothing was written."""
        self.operations += 1
        self.failed.add((stream_id, batch))

    def record_unknown(self, stream_id: str, batch: int) -> None:
        """An append whose outcome is unknown (connection lost, process killed)."""
        self.operations += 1
        self.unknown_seen += 1
        key = (stream_id, batch)
        self.unknown[key] = self.unknown.get(key, 0) + 1


@attrs.frozen
class Audit:
    """The counts after a full read; every field but ``events`` must be 0."""

    events: int
    lost: int
    failed_present: int
    duplicated: int
    out_of_order: int
    partial_batches: int
    unresolved: int

    def assert_clean(self) -> None:
        """Fail with every count when any invariant is broken."""
        bad = attrs.asdict(self)
        del bad["events"]
        assert not any(bad.values()), f"invariants broken: {attrs.asdict(self)}"


async def read_everything(store: EventStore[Any], *, page: int = 1000) -> list[Event[Any]]:
    """Every event of the store, through ``read_all`` pages."""
    events: list[Event[Any]] = []
    while batch := await store.read_all(
        after_position=events[-1].position if events else 0, limit=page
    ):
        events += batch
    return events


def audit(ledger: Ledger, events: Iterable[Event[Any]]) -> Audit:
    """Compare the full read with what the appends returned.

    Streams outside the ledger are ignored. Within a stream, batches must appear whole,
    each in its own contiguous run of versions, in batch order (a stream's batches are
    written one after the other), with positions increasing.
    """
    streams = {stream for stream, _ in (*ledger.ok, *ledger.failed, *ledger.unknown)}
    mine = [event for event in events if event.stream_id in streams]
    ids = Counter(event.event_id for event in mine)
    duplicated = sum(count - 1 for count in ids.values())
    out_of_order = sum(1 for a, b in itertools.pairwise(mine) if b.position <= a.position)
    present: dict[tuple[str, int], list[Event[Any]]] = {}
    by_stream: dict[str, list[Event[Any]]] = {}
    for event in mine:
        present.setdefault((event.stream_id, int(event.data.batch)), []).append(event)
        by_stream.setdefault(event.stream_id, []).append(event)
    for stream_events in by_stream.values():
        versions = [event.version for event in stream_events]
        out_of_order += sum(1 for a, b in itertools.pairwise(versions) if b != a + 1)
        order = [(int(e.data.batch), int(e.data.index)) for e in stream_events]
        out_of_order += sum(1 for a, b in itertools.pairwise(order) if b <= a)
    partial = 0
    for (stream, batch), found in present.items():
        expected = {e.event_id for e in batch_events(stream, batch)}
        if {e.event_id for e in found} != expected:
            partial += 1
    lost = 0
    for stream, batch in ledger.ok:
        found_ids = {e.event_id for e in present.get((stream, batch), [])}
        lost += sum(1 for e in batch_events(stream, batch) if e.event_id not in found_ids)
    failed_present = sum(len(present.get(key, [])) for key in ledger.failed if key not in ledger.ok)
    return Audit(
        events=len(mine),
        lost=lost,
        failed_present=failed_present,
        duplicated=duplicated,
        out_of_order=out_of_order,
        partial_batches=partial,
        unresolved=len(ledger.unknown),
    )


def report(test: str, backend: str, runs: int, ledger: Ledger, result: Audit, **extra: Any) -> None:
    """Append one row of figures to ``$ESKIT_FAULT_RESULTS`` (when set) for the docs table."""
    target = os.environ.get(RESULTS_ENV)
    if not target:
        return
    row = {
        "test": test,
        "backend": backend,
        "runs": runs,
        "operations": ledger.operations,
        "events": result.events,
        "lost": result.lost,
        "duplicated": result.duplicated,
        "out_of_order": result.out_of_order,
        "partial": result.partial_batches,
        "failed_present": result.failed_present,
        "unknown": ledger.unknown_seen,
        "unknown_resolved": ledger.unknown_resolved,
        **extra,
    }
    with Path(target).open("a") as file:
        file.write(json.dumps(row) + "\n")
