"""The contract every event, snapshot and checkpoint store passes.

Use it for a backend of your own: subclass :class:`EventStoreContract` in a test module
and provide a ``backend`` fixture that returns a :class:`Backend`::

    class TestMyStore(EventStoreContract):
        @pytest.fixture
        def backend(self, tmp_path):
            return Backend(name="mine", open_store=..., open_snapshots=..., open_checkpoints=...)

Every ``open_*`` callable opens one more client on the *same* data (for a database, a new
connection or pool), so that tests can run several writers and a follower at once.
Tests run under pytest-trio.
"""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import random
import unicodedata
import uuid
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import attrs
import pytest
import trio

from engine.codec import Codec, EventRegistry
from engine.decider import Decider
from engine.errors import (
    CheckpointConflictError,
    ConcurrencyError,
    DomainError,
    EventTooLargeError,
    IdempotencyConflictError,
    InvalidStreamIdError,
    UnknownEventTypeError,
)
from engine.events import MAX_STREAM_ID_BYTES, Event, ExpectedVersion, NewEvent
from engine.handler import CommandHandler, CommandResult
from engine.stores.base import CheckpointStore, EventStore, Snapshot, SnapshotStore

__all__ = [
    "HOSTILE_STREAM_IDS",
    "Backend",
    "Counted",
    "EventStoreContract",
    "Note",
    "Tally",
    "contract_codec",
]


@attrs.frozen
class Note:
    """A contract event with a text payload."""

    text: str


@attrs.frozen
class Counted:
    """A contract event with a writer id and a sequence number."""

    writer: int
    n: int


@attrs.frozen
class Unregistered:
    """An event class that the contract codec does not know."""

    value: int


@attrs.frozen
class Tally:
    """A snapshot state."""

    total: int
    names: tuple[str, ...] = ()


class Kind(enum.Enum):
    """An enum in a snapshot state."""

    BOOK = "book"
    DISC = "disc"


@attrs.frozen
class Shelf:
    """A snapshot state with the types JSON does not have."""

    loans: frozenset[str]
    members: set[uuid.UUID]
    kinds: tuple[Kind, ...]
    opened: dt.datetime
    fines: decimal.Decimal


@attrs.frozen
class _Open:
    """A command that may only succeed once per stream (like opening an account)."""

    n: int


def _open_once(state: bool, command: _Open) -> list[Note]:
    if state:
        raise DomainError("already open")
    return [Note(f"opened {command.n}")]


_opener: Decider[bool, _Open, Note] = Decider(
    initial_state=lambda: False, decide=_open_once, evolve=lambda state, event: True
)


def contract_codec() -> Codec[Any]:
    """The codec every contract store is opened with."""
    registry = EventRegistry()
    registry.register(Note, name="contract.Note")
    registry.register(Counted, name="contract.Counted")
    return Codec(registry)


StoreOpener = Callable[..., AbstractAsyncContextManager[EventStore[Any]]]


@attrs.frozen
class Backend:
    """How the contract opens a backend.

    Attributes:
        name: For test ids and messages.
        open_store: ``open_store(codec, *, max_event_bytes=...)`` opens an event store
            client on the backend's shared data.
        open_snapshots: ``open_snapshots(codec, state_type)`` opens a snapshot store.
        open_checkpoints: ``open_checkpoints()`` opens a checkpoint store.
    """

    name: str
    open_store: StoreOpener
    open_snapshots: Callable[[Codec[Any], type], AbstractAsyncContextManager[SnapshotStore[Any]]]
    open_checkpoints: Callable[[], AbstractAsyncContextManager[CheckpointStore]]


#: Stream ids that must be refused with a clear error or stored and read back verbatim.
HOSTILE_STREAM_IDS: tuple[str, ...] = (
    " ",
    "  leading and trailing  ",
    "tab\there",
    "new\nline",
    ".",
    "..",
    "a.b",
    "a.*",
    "*",
    ">",
    "a.>",
    "$JS.API.STREAM.DELETE",
    "$KV.x",
    "'; DROP TABLE events; --",
    "%",
    "_",
    "a%b_c\\",
    '"quoted"',
    "emoji-\U0001f600-\U0001f3f3\ufe0f\u200d\U0001f308",
    unicodedata.normalize("NFC", "caf\u00e9"),
    unicodedata.normalize("NFD", "caf\u00e9"),
    "\u202etxt.exe",
    "x" * (MAX_STREAM_ID_BYTES - 1),
    "\u00e9" * (MAX_STREAM_ID_BYTES // 2),
)

#: Stream ids every store must refuse with InvalidStreamIdError.
REFUSED_STREAM_IDS: tuple[str, ...] = (
    "",
    "nul\x00inside",
    "x" * 10_000,
    "\ud800lone-surrogate",
)


def _new(*texts: str, **metadata: str) -> list[NewEvent[Any]]:
    return [NewEvent(Note(text), metadata) for text in texts]


async def _read_everything(store: EventStore[Any], *, page: int = 100) -> list[Event[Any]]:
    events: list[Event[Any]] = []
    position = 0
    while True:
        batch = await store.read_all(after_position=position, limit=page)
        if not batch:
            return events
        events.extend(batch)
        position = batch[-1].position


class EventStoreContract:
    """The event, snapshot and checkpoint store contract, as pytest-trio tests.

    Subclasses provide a ``backend`` fixture returning a :class:`Backend`.
    """

    #: How many events each concurrent writer appends in the subscription test.
    follower_events_per_writer = 60
    #: How many commands each of the 16 writers on one stream performs.
    same_stream_appends_per_writer = 8
    #: Rounds of ten concurrent copies of one command id.
    idempotency_rounds = 12

    # -- round trip ---------------------------------------------------------------------

    async def test_append_then_load_round_trips(self, backend: Backend) -> None:
        """Appended events come back with data, metadata, ids, versions and positions."""
        async with backend.open_store(contract_codec()) as store:
            ids = [uuid.uuid4(), uuid.uuid4()]
            stored = await store.append(
                "order-1",
                [
                    NewEvent(Note("first"), {"user": "ann", "trace": "\u00fcml\u00e4ut"}, ids[0]),
                    NewEvent(Note("zw\u00f6lf \U0001f600 \u4e2d\u6587"), {}, ids[1]),
                ],
                expected_version=ExpectedVersion.NO_STREAM,
            )
            loaded = await store.load("order-1")
        assert [e.version for e in stored] == [1, 2]
        assert stored[0].position < stored[1].position
        assert loaded == stored
        assert [e.event_id for e in loaded] == ids
        assert loaded[0].data == Note("first")
        assert loaded[0].type == "contract.Note"
        assert dict(loaded[0].metadata) == {"user": "ann", "trace": "\u00fcml\u00e4ut"}
        assert loaded[1].data == Note("zw\u00f6lf \U0001f600 \u4e2d\u6587")
        assert loaded[0].recorded_at.tzinfo is not None

    async def test_load_after_version_and_limit(self, backend: Backend) -> None:
        """``load`` starts after a version and stops at a limit."""
        async with backend.open_store(contract_codec()) as store:
            await store.append("s", _new(*"abcdef"))
            tail = await store.load("s", after_version=3)
            window = await store.load("s", after_version=1, limit=2)
            missing = await store.load("nobody")
            assert await store.stream_version("s") == 6
            assert await store.stream_version("nobody") == 0
        assert [e.data.text for e in tail] == ["d", "e", "f"]
        assert [e.version for e in window] == [2, 3]
        assert missing == []

    async def test_streams_are_separate(self, backend: Backend) -> None:
        """Each stream has its own versions; positions are global."""
        async with backend.open_store(contract_codec()) as store:
            a1 = await store.append("a", _new("a1"))
            b1 = await store.append("b", _new("b1"))
            a2 = await store.append("a", _new("a2"))
        assert [a1[0].version, b1[0].version, a2[0].version] == [1, 1, 2]
        assert a1[0].position < b1[0].position < a2[0].position

    # -- expected versions ----------------------------------------------------------------

    async def test_expected_version_exact(self, backend: Backend) -> None:
        """An exact expected version must equal the stream's version."""
        async with backend.open_store(contract_codec()) as store:
            await store.append("s", _new("a", "b"), expected_version=0)
            await store.append("s", _new("c"), expected_version=2)
            with pytest.raises(ConcurrencyError) as info:
                await store.append("s", _new("x"), expected_version=2)
            assert await store.stream_version("s") == 3
        assert info.value.stream_id == "s"
        assert info.value.expected == 2
        assert info.value.actual == 3

    async def test_expected_version_markers(self, backend: Backend) -> None:
        """NO_STREAM, STREAM_EXISTS and ANY mean what they say."""
        async with backend.open_store(contract_codec()) as store:
            with pytest.raises(ConcurrencyError) as missing:
                await store.append("s", _new("x"), expected_version=ExpectedVersion.STREAM_EXISTS)
            assert missing.value.actual == 0
            await store.append("s", _new("a"), expected_version=ExpectedVersion.NO_STREAM)
            with pytest.raises(ConcurrencyError) as exists:
                await store.append("s", _new("x"), expected_version=ExpectedVersion.NO_STREAM)
            assert exists.value.actual == 1
            with pytest.raises(ConcurrencyError):
                await store.append("s", _new("x"), expected_version=0)
            await store.append("s", _new("b"), expected_version=ExpectedVersion.STREAM_EXISTS)
            await store.append("s", _new("c"), expected_version=ExpectedVersion.ANY)
            assert [e.data.text for e in await store.load("s")] == ["a", "b", "c"]

    # -- atomicity ---------------------------------------------------------------------

    async def test_batch_failing_half_way_writes_nothing(self, backend: Backend) -> None:
        """A batch whose third event cannot be encoded leaves no event behind."""
        async with backend.open_store(contract_codec()) as store:
            await store.append("s", _new("before"))
            batch = [*_new("one", "two"), NewEvent(Unregistered(3)), *_new("four")]
            with pytest.raises(UnknownEventTypeError):
                await store.append("s", batch)
            assert [e.data.text for e in await store.load("s")] == ["before"]
            assert len(await _read_everything(store)) == 1

    async def test_conflicting_batch_writes_nothing(self, backend: Backend) -> None:
        """A multi-event batch that conflicts appends none of its events."""
        async with backend.open_store(contract_codec()) as store:
            await store.append("s", _new("a"))
            with pytest.raises(ConcurrencyError):
                await store.append("s", _new("x", "y", "z"), expected_version=0)
            assert await store.stream_version("s") == 1
            assert await store.head_position() == (await store.load("s"))[0].position

    async def test_oversized_event_is_refused_before_writing(self, backend: Backend) -> None:
        """An event over the size limit is refused and nothing of its batch is written."""
        async with backend.open_store(contract_codec(), max_event_bytes=4096) as store:
            with pytest.raises(EventTooLargeError) as info:
                await store.append("s", [*_new("small"), *_new("x" * 5000)])
            assert await store.stream_version("s") == 0
            await store.append("s", _new("y" * 3000))
        assert info.value.limit == 4096
        assert info.value.size > 4096

    async def test_default_size_limit_is_one_mebibyte(self, backend: Backend) -> None:
        """By default an event of just under 1 MiB is stored and one over it refused."""
        async with backend.open_store(contract_codec()) as store:
            stored = await store.append("big", _new("x" * (1024 * 1024 - 200)))
            with pytest.raises(EventTooLargeError):
                await store.append("big", _new("x" * (1024 * 1024 + 1)))
            loaded = await store.load("big")
        assert loaded == stored

    # -- read_all -------------------------------------------------------------------------

    async def test_read_all_pages_in_global_order(self, backend: Backend) -> None:
        """``read_all`` returns every event once, in increasing position, page by page."""
        async with backend.open_store(contract_codec()) as store:
            for i in range(25):
                await store.append(f"s-{i % 4}", _new(f"e{i}", f"f{i}"))
            pages = []
            position = 0
            while batch := await store.read_all(after_position=position, limit=7):
                assert len(batch) <= 7
                pages.append(batch)
                position = batch[-1].position
            head = await store.head_position()
        events = [event for page in pages for event in page]
        assert len(events) == 50
        positions = [event.position for event in events]
        assert positions == sorted(set(positions))
        assert head == positions[-1]
        assert [e.data.text for e in events[:4]] == ["e0", "f0", "e1", "f1"]

    async def test_empty_store(self, backend: Backend) -> None:
        """An empty store has head 0 and reads nothing."""
        async with backend.open_store(contract_codec()) as store:
            assert await store.head_position() == 0
            assert await store.read_all() == []

    # -- idempotency ---------------------------------------------------------------------

    async def test_idempotency_key_returns_original_and_appends_nothing(
        self, backend: Backend
    ) -> None:
        """A repeated idempotency key returns the first append's events and writes nothing."""
        async with backend.open_store(contract_codec()) as store:
            first = await store.append("s", _new("a", "b"), idempotency_key="cmd-1")
            again = await store.append(
                "s", _new("other"), expected_version=0, idempotency_key="cmd-1"
            )
            found = await store.find_idempotent("cmd-1")
            assert await store.find_idempotent("cmd-unknown") is None
            assert await store.stream_version("s") == 2
            with pytest.raises(IdempotencyConflictError):
                await store.append("other-stream", _new("z"), idempotency_key="cmd-1")
        assert again == first
        assert found == first

    async def test_concurrent_copies_of_one_command_id_answer_the_original(
        self, backend: Backend
    ) -> None:
        """Copies of one command sent at once through two clients, round after round: one
        append, and every copy answers the original events (never the rejection a copy
        deciding on the new state would give)."""
        rounds, copies = self.idempotency_rounds, 10
        async with (
            backend.open_store(contract_codec()) as first,
            backend.open_store(contract_codec()) as second,
        ):
            handlers = [
                CommandHandler(decider=_opener, store=first),
                CommandHandler(decider=_opener, store=second),
            ]
            for round_ in range(rounds):
                stream_id, command_id = f"account-{round_}", f"open-{round_}"
                answers: list[CommandResult[Any, Any]] = []
                errors: list[Exception] = []

                async def send(
                    handler: CommandHandler[Any, Any, Any],
                    stream_id: str,
                    command: _Open,
                    command_id: str,
                    answers: list[CommandResult[Any, Any]],
                    errors: list[Exception],
                ) -> None:
                    try:
                        result = await handler.handle(stream_id, command, command_id=command_id)
                    except Exception as exc:
                        errors.append(exc)
                    else:
                        answers.append(result)

                async with trio.open_nursery() as nursery:
                    for copy in range(copies):
                        nursery.start_soon(
                            send,
                            handlers[copy % 2],
                            stream_id,
                            _Open(round_),
                            command_id,
                            answers,
                            errors,
                        )
                assert errors == [], f"round {round_}: {errors!r}"
                stored = await first.load(stream_id)
                assert [e.data for e in stored] == [Note(f"opened {round_}")]
                assert [[e.event_id for e in a.events] for a in answers] == [
                    [stored[0].event_id]
                ] * copies
                assert sum(not a.duplicate for a in answers) <= 1

    async def test_idempotency_key_of_empty_append(self, backend: Backend) -> None:
        """An empty append with a key records the key with no events."""
        async with backend.open_store(contract_codec()) as store:
            assert await store.append("s", [], idempotency_key="noop") == []
            assert await store.find_idempotent("noop") == []
            assert await store.append("s", _new("x"), idempotency_key="noop") == []
            assert await store.stream_version("s") == 0

    # -- stream ids ----------------------------------------------------------------------

    @pytest.mark.parametrize("stream_id", HOSTILE_STREAM_IDS, ids=lambda s: repr(s)[:30])
    async def test_hostile_stream_ids_are_kept_verbatim(
        self, backend: Backend, stream_id: str
    ) -> None:
        """Strange but valid stream ids are stored and read back byte for byte."""
        async with backend.open_store(contract_codec()) as store:
            stored = await store.append(stream_id, _new("payload"))
            loaded = await store.load(stream_id)
            everything = await _read_everything(store)
        assert [e.stream_id for e in loaded] == [stream_id]
        assert loaded == stored
        assert [e.stream_id for e in everything] == [stream_id]

    @pytest.mark.parametrize("stream_id", REFUSED_STREAM_IDS, ids=lambda s: repr(s)[:30])
    async def test_invalid_stream_ids_are_refused(self, backend: Backend, stream_id: str) -> None:
        """Empty, NUL-bearing, over-long and non-Unicode ids raise InvalidStreamIdError."""
        async with backend.open_store(contract_codec()) as store:
            with pytest.raises(InvalidStreamIdError):
                await store.append(stream_id, _new("x"))
            assert await store.head_position() == 0

    async def test_wildcard_lookalikes_do_not_match_other_streams(self, backend: Backend) -> None:
        """Streams named like patterns (``a.*``, ``a.>``, ``%``) hold only their own events."""
        async with backend.open_store(contract_codec()) as store:
            for stream_id in ("a.b", "a.c.d", "ab", "a"):
                await store.append(stream_id, _new(stream_id))
            for pattern in ("a.*", "a.>", "a%", "a_", "*", ">"):
                assert await store.load(pattern) == []
                assert await store.stream_version(pattern) == 0
            await store.append("a.*", _new("star"))
            assert [e.data.text for e in await store.load("a.*")] == ["star"]
            assert [e.data.text for e in await store.load("a.b")] == ["a.b"]
            assert await store.stream_version("a.b") == 1

    async def test_normalisation_forms_are_distinct_streams(self, backend: Backend) -> None:
        """NFC and NFD spellings of one name are two streams (no normalisation)."""
        nfc = unicodedata.normalize("NFC", "caf\u00e9")
        nfd = unicodedata.normalize("NFD", "caf\u00e9")
        async with backend.open_store(contract_codec()) as store:
            await store.append(nfc, _new("composed"))
            await store.append(nfd, _new("decomposed"))
            assert [e.data.text for e in await store.load(nfc)] == ["composed"]
            assert [e.data.text for e in await store.load(nfd)] == ["decomposed"]

    # -- concurrency ---------------------------------------------------------------------

    async def test_sixteen_writers_on_one_stream(self, backend: Backend) -> None:
        """16 concurrent writers with retries: contiguous versions, nothing lost or doubled."""
        per_writer = self.same_stream_appends_per_writer
        rng = random.Random(16)

        async def writer(store: EventStore[Any], writer_id: int) -> None:
            for n in range(per_writer):
                while True:
                    version = await store.stream_version("hot")
                    try:
                        await store.append(
                            "hot", [NewEvent(Counted(writer_id, n))], expected_version=version
                        )
                        break
                    except ConcurrencyError:
                        await trio.sleep(rng.uniform(0, 0.005))

        async with backend.open_store(contract_codec()) as store:
            async with trio.open_nursery() as nursery:
                for writer_id in range(16):
                    nursery.start_soon(writer, store, writer_id)
            events = await store.load("hot")
        assert [e.version for e in events] == list(range(1, 16 * per_writer + 1))
        seen = sorted((e.data.writer, e.data.n) for e in events)
        assert seen == [(w, n) for w in range(16) for n in range(per_writer)]
        for writer_id in range(16):
            mine = [e.data.n for e in events if e.data.writer == writer_id]
            assert mine == sorted(mine)

    async def test_follower_never_skips_or_repeats(self, backend: Backend) -> None:
        """The subscription invariant: with concurrent writers on many streams, a follower
        tailing ``read_all`` sees every event exactly once, in increasing position."""
        writers, per_writer = 6, self.follower_events_per_writer
        total = writers * per_writer
        seen: list[Event[Any]] = []
        acknowledged: set[uuid.UUID] = set()
        rng = random.Random(7)

        async def writer(writer_id: int) -> None:
            async with backend.open_store(contract_codec()) as store:
                n = 0
                while n < per_writer:
                    size = min(rng.randint(1, 4), per_writer - n)
                    batch = [NewEvent(Counted(writer_id, n + i)) for i in range(size)]
                    stream_id = f"w{writer_id}-s{rng.randint(0, 5)}"
                    await store.append(stream_id, batch)
                    acknowledged.update(e.event_id for e in batch)
                    n += size

        async def follower(done: trio.Event) -> None:
            async with backend.open_store(contract_codec()) as store:
                position = 0
                while True:
                    batch = await store.read_all(after_position=position, limit=17)
                    for event in batch:
                        assert event.position > position, (
                            f"position {event.position} after {position}"
                        )
                        position = event.position
                        seen.append(event)
                    if not batch:
                        if done.is_set() and len(seen) >= total:
                            return
                        await trio.sleep(0.001)

        done = trio.Event()
        with trio.fail_after(120):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(follower, done)
                async with trio.open_nursery() as writing:
                    for writer_id in range(writers):
                        writing.start_soon(writer, writer_id)
                done.set()
        ids = [e.event_id for e in seen]
        assert len(ids) == len(set(ids)) == total
        assert set(ids) == acknowledged
        for writer_id in range(writers):
            mine = [e.data.n for e in seen if e.data.writer == writer_id]
            assert mine == list(range(per_writer))

    # -- snapshots and checkpoints ---------------------------------------------------

    async def test_snapshots_keep_the_latest(self, backend: Backend) -> None:
        """The latest snapshot is returned; an older one never replaces a newer one."""
        async with backend.open_snapshots(contract_codec(), Tally) as snapshots:
            assert await snapshots.load_snapshot("s") is None
            await snapshots.save_snapshot(Snapshot("s", 10, Tally(10, ("a",)), schema=1))
            await snapshots.save_snapshot(Snapshot("s", 20, Tally(20, ("a", "b")), schema=2))
            await snapshots.save_snapshot(Snapshot("s", 15, Tally(15), schema=1))
            await snapshots.save_snapshot(Snapshot("other", 1, Tally(1), schema=1))
            latest = await snapshots.load_snapshot("s")
        assert latest == Snapshot("s", 20, Tally(20, ("a", "b")), schema=2)

    async def test_snapshots_carry_sets_enums_dates_decimals_and_uuids(
        self, backend: Backend
    ) -> None:
        """A state with a set, a frozenset, a tuple, an enum, a datetime, a Decimal and a
        UUID is saved and loaded back equal."""
        state = Shelf(
            loans=frozenset({"copy-2", "copy-1"}),
            members={uuid.UUID(int=7)},
            kinds=(Kind.BOOK, Kind.DISC),
            opened=dt.datetime(2024, 5, 1, 12, 30, tzinfo=dt.UTC),
            fines=decimal.Decimal("12.50"),
        )
        async with backend.open_snapshots(contract_codec(), Shelf) as snapshots:
            await snapshots.save_snapshot(Snapshot("shelf", 3, state))
            loaded = await snapshots.load_snapshot("shelf")
        assert loaded == Snapshot("shelf", 3, state)

    async def test_checkpoints_compare_and_set(self, backend: Backend) -> None:
        """Checkpoints save only over the value the writer read; a stale writer fails."""
        async with backend.open_checkpoints() as checkpoints:
            assert await checkpoints.load_checkpoint("proj") is None
            await checkpoints.save_checkpoint("proj", 5, expected=None)
            await checkpoints.save_checkpoint("proj", 9, expected=5)
            with pytest.raises(CheckpointConflictError) as stale:
                await checkpoints.save_checkpoint("proj", 7, expected=5)
            with pytest.raises(CheckpointConflictError):
                await checkpoints.save_checkpoint("proj", 7, expected=None)
            assert await checkpoints.load_checkpoint("proj") == 9
            assert await checkpoints.load_checkpoint("other") is None
        assert stale.value.actual == 9

    async def test_checkpoint_race_has_one_winner(self, backend: Backend) -> None:
        """Of several writers saving over the same expected value, exactly one wins."""
        wins: list[int] = []

        async def contender(i: int) -> None:
            async with backend.open_checkpoints() as checkpoints:
                try:
                    await checkpoints.save_checkpoint("race", 100 + i, expected=1)
                    wins.append(i)
                except CheckpointConflictError:
                    pass

        async with backend.open_checkpoints() as checkpoints:
            await checkpoints.save_checkpoint("race", 1, expected=None)
            async with trio.open_nursery() as nursery:
                for i in range(8):
                    nursery.start_soon(contender, i)
            final = await checkpoints.load_checkpoint("race")
        assert len(wins) == 1
        assert final == 100 + wins[0]
