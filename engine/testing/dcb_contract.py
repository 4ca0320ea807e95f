"""The contract every DCB store passes.

Use it for a backend of your own: subclass :class:`DcbStoreContract` in a test module and
provide a ``dcb_backend`` fixture that returns a :class:`DcbBackend`::

    class TestMyDcbStore(DcbStoreContract):
        @pytest.fixture
        def dcb_backend(self, tmp_path):
            return DcbBackend(name="mine", open_store=...)

``open_store`` opens one more client on the *same* data (for a database, a new
connection), so that tests can run several writers and a follower at once. Tests run
under pytest-trio. The concurrency oracle (:mod:`engine.testing.dcb_oracle`) runs as part
of the suite in its bounded size.
"""

from __future__ import annotations

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
from engine.dcb.base import (
    AppendCondition,
    AppendConditionError,
    DcbEvent,
    DcbStore,
    DuplicateEventIdError,
    Query,
    QueryItem,
    SequencedEvent,
)
from engine.errors import EventTooLargeError, UnknownEventTypeError
from engine.testing.dcb_oracle import OracleSettings, run_oracle_tasks

__all__ = [
    "HOSTILE_TAGS",
    "Alpha",
    "Beta",
    "DcbBackend",
    "DcbStoreContract",
    "Gamma",
    "dcb_contract_codec",
]


@attrs.frozen
class Alpha:
    """A contract event of type ``dcb.Alpha``."""

    text: str


@attrs.frozen
class Beta:
    """A contract event of type ``dcb.Beta``."""

    text: str


@attrs.frozen
class Gamma:
    """A contract event of type ``dcb.Gamma``."""

    text: str


@attrs.frozen
class Unregistered:
    """An event class that the contract codec does not know."""

    value: int


TYPE_NAMES = {Alpha: "dcb.Alpha", Beta: "dcb.Beta", Gamma: "dcb.Gamma"}


def dcb_contract_codec() -> Codec[Any]:
    """The codec every contract store is opened with."""
    registry = EventRegistry()
    for cls, name in TYPE_NAMES.items():
        registry.register(cls, name=name)
    return Codec(registry)


StoreOpener = Callable[..., AbstractAsyncContextManager[DcbStore[Any]]]


@attrs.frozen
class DcbBackend:
    """How the contract opens a backend.

    Attributes:
        name: For test ids and messages.
        open_store: ``open_store(codec, *, max_event_bytes=...)`` opens a DCB store client
            on the backend's shared data.
        oracle_settings: The size of the concurrency oracle run for this backend.
    """

    name: str
    open_store: StoreOpener
    oracle_settings: OracleSettings = attrs.field(factory=OracleSettings)


#: Tags that must be stored and matched verbatim: never as patterns, never normalised.
HOSTILE_TAGS: tuple[str, ...] = (
    "a,b",
    "a b",
    " padded ",
    "%",
    "_",
    "a%",
    "a_c",
    "*",
    "a.*",
    ">",
    "'; DROP TABLE dcb_events; --",
    '"quoted"',
    "back\\slash",
    "{braces}",
    "(parens)",
    "new\nline",
    "emoji-\U0001f600",
    unicodedata.normalize("NFC", "caf\u00e9"),
    unicodedata.normalize("NFD", "caf\u00e9"),
    "x" * 512,
)


def _ev(cls: type, text: str, *tags: str, **metadata: str) -> DcbEvent[Any]:
    return DcbEvent(cls(text), tags, metadata)


async def _all(store: DcbStore[Any]) -> list[SequencedEvent[Any]]:
    events, _ = await store.read()
    return events


def _random_query(rng: random.Random, types: list[str], tags: list[str]) -> Query:
    if rng.random() < 0.05:
        return Query.all()
    items = []
    for _ in range(rng.randint(1, 3)):
        item_types = rng.sample(types, rng.randint(0, 2))
        item_tags = rng.sample(tags, rng.randint(0 if item_types else 1, 3))
        items.append(QueryItem(item_types, item_tags))
    return Query(items)


class DcbStoreContract:
    """The DCB store contract, as pytest-trio tests.

    Subclasses provide a ``dcb_backend`` fixture returning a :class:`DcbBackend`.
    """

    # -- round trip ---------------------------------------------------------------------

    async def test_append_then_read_round_trips(self, dcb_backend: DcbBackend) -> None:
        """Appended events come back with type, data, tags, metadata, ids and positions."""
        ids = [uuid.uuid4(), uuid.uuid4()]
        async with dcb_backend.open_store(dcb_contract_codec()) as store:
            position = await store.append(
                [
                    DcbEvent(
                        Alpha("first"), ["course:c1", "student:s1"], {"user": "\u00e4nn"}, ids[0]
                    ),
                    DcbEvent(Beta("zw\u00f6lf \U0001f600 \u4e2d\u6587"), [], {}, ids[1]),
                ]
            )
            events, head = await store.read()
            assert await store.head() == head
        assert [e.event_id for e in events] == ids
        assert events[1].position == position == head
        assert events[0].position < events[1].position
        assert events[0].type == "dcb.Alpha"
        assert events[0].data == Alpha("first")
        assert events[0].tags == ("course:c1", "student:s1")
        assert dict(events[0].metadata) == {"user": "\u00e4nn"}
        assert events[1].type == "dcb.Beta"
        assert events[1].data == Beta("zw\u00f6lf \U0001f600 \u4e2d\u6587")
        assert events[1].tags == ()
        assert events[0].recorded_at.tzinfo is not None

    async def test_empty_store(self, dcb_backend: DcbBackend) -> None:
        """An empty store has head 0 and reads nothing, with or without a query."""
        async with dcb_backend.open_store(dcb_contract_codec()) as store:
            assert await store.head() == 0
            assert await store.read() == ([], 0)
            assert await store.read(Query.of(tags=["x"])) == ([], 0)

    async def test_positions_strictly_increase(self, dcb_backend: DcbBackend) -> None:
        """Positions increase within a batch and across appends; append returns the last."""
        async with dcb_backend.open_store(dcb_contract_codec()) as store:
            returned = []
            for n in range(5):
                returned.append(
                    await store.append([_ev(Alpha, f"{n}-{i}", f"n:{n}") for i in range(n + 1)])
                )
            events = await _all(store)
        positions = [e.position for e in events]
        assert positions == sorted(set(positions))
        assert returned == sorted(set(returned))
        ends = [max(e.position for e in events if e.tags == (f"n:{n}",)) for n in range(5)]
        assert returned == ends

    # -- queries ------------------------------------------------------------------------

    async def test_query_semantics(self, dcb_backend: DcbBackend) -> None:
        """Types are OR, tags are AND, items are OR, and an empty query matches all."""
        async with dcb_backend.open_store(dcb_contract_codec()) as store:
            await store.append(
                [
                    _ev(Alpha, "a-xy", "x", "y"),
                    _ev(Alpha, "a-x", "x"),
                    _ev(Beta, "b-xy", "x", "y"),
                    _ev(Gamma, "g-y", "y"),
                    _ev(Gamma, "g"),
                ]
            )

            async def texts(query: Query | None) -> list[str]:
                events, _ = await store.read(query)
                return [e.data.text for e in events]

            assert await texts(None) == ["a-xy", "a-x", "b-xy", "g-y", "g"]
            assert await texts(Query.all()) == ["a-xy", "a-x", "b-xy", "g-y", "g"]
            assert await texts(Query.of(types=["dcb.Alpha"])) == ["a-xy", "a-x"]
            assert await texts(Query.of(types=["dcb.Alpha", "dcb.Gamma"])) == [
                "a-xy",
                "a-x",
                "g-y",
                "g",
            ]
            assert await texts(Query.of(tags=["x"])) == ["a-xy", "a-x", "b-xy"]
            assert await texts(Query.of(tags=["x", "y"])) == ["a-xy", "b-xy"]
            assert await texts(Query.of(types=["dcb.Beta", "dcb.Gamma"], tags=["y"])) == [
                "b-xy",
                "g-y",
            ]
            either = Query([QueryItem(["dcb.Alpha"], ["y"]), QueryItem(["dcb.Gamma"])])
            assert await texts(either) == ["a-xy", "g-y", "g"]
            assert await texts(Query.of(tags=["x", "y", "z"])) == []
            assert await texts(Query.of(types=["dcb.Nothing"])) == []

    async def test_random_queries_agree_with_the_reference(self, dcb_backend: DcbBackend) -> None:
        """200 random queries return exactly what ``Query.matches`` selects, in order."""
        rng = random.Random(2024)
        types, tags = list(TYPE_NAMES.values()), ["t0", "t1", "t2", "t3", "t4"]
        classes = list(TYPE_NAMES)
        async with dcb_backend.open_store(dcb_contract_codec()) as store:
            for batch in range(12):
                await store.append(
                    [
                        _ev(
                            rng.choice(classes),
                            f"{batch}-{i}",
                            *rng.sample(tags, rng.randint(0, 4)),
                        )
                        for i in range(rng.randint(1, 6))
                    ]
                )
            everything = await _all(store)
            for _ in range(200):
                query = _random_query(rng, types, tags)
                after = rng.choice([None, 0, *[e.position for e in everything[::5]]])
                events, head = await store.read(query, after=after)
                expected = [
                    e.event_id
                    for e in everything
                    if e.position > (after or 0) and query.matches(e.type, e.tags)
                ]
                assert [e.event_id for e in events] == expected, query
                assert head == everything[-1].position

    async def test_read_after_limit_and_head(self, dcb_backend: DcbBackend) -> None:
        """``after`` skips, ``limit`` cuts, and head is where the answer is complete up to."""
        async with dcb_backend.open_store(dcb_contract_codec()) as store:
            for n in range(10):
                await store.append([_ev(Alpha if n % 2 else Beta, str(n), f"n:{n % 3}")])
            everything = await _all(store)
            top = everything[-1].position
            alphas = Query.of(types=["dcb.Alpha"])
            events, head = await store.read(alphas)
            assert [e.data.text for e in events] == ["1", "3", "5", "7", "9"]
            assert head == top
            events, head = await store.read(alphas, limit=2)
            assert [e.data.text for e in events] == ["1", "3"]
            assert head == events[-1].position
            events, head = await store.read(alphas, after=head, limit=2)
            assert [e.data.text for e in events] == ["5", "7"]
            events, head = await store.read(alphas, after=head, limit=2)
            assert [e.data.text for e in events] == ["9"]
            assert head == top
            events, head = await store.read(Query.of(tags=["n:0"]), after=everything[6].position)
            assert [e.data.text for e in events] == ["9"]
            assert await store.read(alphas, after=top) == ([], top)
            events, head = await store.read(None, limit=3)
            assert [e.data.text for e in events] == ["0", "1", "2"]
            assert head == events[-1].position
            with pytest.raises(ValueError, match="limit"):
                await store.read(None, limit=0)

    @pytest.mark.parametrize("tag", HOSTILE_TAGS, ids=lambda s: repr(s)[:24])
    async def test_hostile_tags_are_kept_verbatim(self, dcb_backend: DcbBackend, tag: str) -> None:
        """Strange tags are stored verbatim and match only themselves, never as patterns."""
        async with dcb_backend.open_store(dcb_contract_codec()) as store:
            await store.append([_ev(Alpha, "decoy-1", "ab"), _ev(Alpha, "decoy-2", "abc")])
            await store.append([_ev(Alpha, "decoy-3", "a"), _ev(Alpha, "decoy-4", "{x}")])
            await store.append([_ev(Alpha, "target", tag)])
            events, _ = await store.read(Query.of(tags=[tag]))
            everything = await _all(store)
        assert [e.data.text for e in events] == ["target"]
        assert events[0].tags == (tag,)
        assert [e.tags for e in everything if e.data.text == "target"] == [(tag,)]

    async def test_normalisation_forms_are_distinct_tags(self, dcb_backend: DcbBackend) -> None:
        """NFC and NFD spellings of one tag are two tags (no normalisation)."""
        nfc = unicodedata.normalize("NFC", "caf\u00e9")
        nfd = unicodedata.normalize("NFD", "caf\u00e9")
        async with dcb_backend.open_store(dcb_contract_codec()) as store:
            await store.append([_ev(Alpha, "composed", nfc), _ev(Alpha, "decomposed", nfd)])
            composed, _ = await store.read(Query.of(tags=[nfc]))
            decomposed, _ = await store.read(Query.of(tags=[nfd]))
        assert [e.data.text for e in composed] == ["composed"]
        assert [e.data.text for e in decomposed] == ["decomposed"]

    async def test_many_tags(self, dcb_backend: DcbBackend) -> None:
        """An event with 40 tags matches a query naming any subset of them."""
        tags = [f"tag-{i:02}" for i in range(40)]
        async with dcb_backend.open_store(dcb_contract_codec()) as store:
            await store.append([_ev(Alpha, "many", *tags), _ev(Alpha, "few", *tags[:3])])
            many, _ = await store.read(Query.of(tags=tags))
            few, _ = await store.read(Query.of(tags=tags[:3]))
            odd, _ = await store.read(Query.of(tags=tags[1::2]))
        assert [e.data.text for e in many] == ["many"]
        assert [e.data.text for e in few] == ["many", "few"]
        assert [e.data.text for e in odd] == ["many"]
        assert many[0].tags == tuple(tags)

    # -- append conditions ----------------------------------------------------------------

    async def test_condition_fails_on_a_match_after_its_position(
        self, dcb_backend: DcbBackend
    ) -> None:
        """A matching event after ``after`` fails the append; at or before it, it does not."""
        query = Query.of(types=["dcb.Alpha"], tags=["user:ann"])
        async with dcb_backend.open_store(dcb_contract_codec()) as store:
            first = await store.append([_ev(Alpha, "claimed", "user:ann")])
            with pytest.raises(AppendConditionError) as failed:
                await store.append([_ev(Alpha, "again", "user:ann")], AppendCondition(query))
            with pytest.raises(AppendConditionError):
                await store.append([_ev(Alpha, "again", "user:ann")], AppendCondition(query, 0))
            second = await store.append(
                [_ev(Alpha, "after", "user:ann")], AppendCondition(query, after=first)
            )
            with pytest.raises(AppendConditionError) as stale:
                await store.append(
                    [_ev(Alpha, "stale", "user:ann")], AppendCondition(query, after=first)
                )
            events = await _all(store)
        assert [e.data.text for e in events] == ["claimed", "after"]
        assert failed.value.condition == AppendCondition(query)
        assert failed.value.position in (None, first)
        assert stale.value.position in (None, second)
        assert stale.value.condition.after == first

    async def test_condition_ignores_events_that_do_not_match(
        self, dcb_backend: DcbBackend
    ) -> None:
        """Events of other types, or lacking a required tag, never fail a condition."""
        query = Query.of(types=["dcb.Alpha", "dcb.Beta"], tags=["course:c1", "student:s1"])
        async with dcb_backend.open_store(dcb_contract_codec()) as store:
            await store.append(
                [
                    _ev(Gamma, "other type", "course:c1", "student:s1"),
                    _ev(Alpha, "one tag only", "course:c1"),
                    _ev(Beta, "other student", "course:c1", "student:s2"),
                ]
            )
            position = await store.append(
                [_ev(Alpha, "ok", "course:c1", "student:s1")], AppendCondition(query)
            )
            with pytest.raises(AppendConditionError):
                await store.append([_ev(Beta, "no", "course:c1")], AppendCondition(query))
            assert await store.head() == position

    async def test_condition_on_all_events_guards_the_whole_log(
        self, dcb_backend: DcbBackend
    ) -> None:
        """``Query.all()`` with ``after=head`` fails once anything was appended since."""
        async with dcb_backend.open_store(dcb_contract_codec()) as store:
            head = await store.append([_ev(Alpha, "first")], AppendCondition(Query.all()))
            assert head == await store.head()
            await store.append([_ev(Gamma, "unrelated", "x")])
            with pytest.raises(AppendConditionError):
                await store.append([_ev(Alpha, "late")], AppendCondition(Query.all(), head))
            head = await store.head()
            await store.append([_ev(Alpha, "now")], AppendCondition(Query.all(), head))

    async def test_condition_with_several_items(self, dcb_backend: DcbBackend) -> None:
        """A condition fails if any of its items matches an event after ``after``."""
        course = QueryItem(["dcb.Alpha"], ["course:c1"])
        student = QueryItem(["dcb.Beta"], ["student:s1"])
        async with dcb_backend.open_store(dcb_contract_codec()) as store:
            head = await store.head()
            await store.append([_ev(Beta, "s1 elsewhere", "student:s1", "course:c9")])
            with pytest.raises(AppendConditionError):
                await store.append(
                    [_ev(Alpha, "x", "course:c1")], AppendCondition(Query([course, student]), head)
                )
            await store.append(
                [_ev(Alpha, "y", "course:c1")], AppendCondition(Query([course]), head)
            )

    async def test_failed_condition_writes_nothing(self, dcb_backend: DcbBackend) -> None:
        """A multi-event batch whose condition fails appends none of its events."""
        async with dcb_backend.open_store(dcb_contract_codec()) as store:
            head = await store.append([_ev(Alpha, "a", "k")])
            with pytest.raises(AppendConditionError):
                await store.append(
                    [_ev(Beta, "x", "j"), _ev(Beta, "y", "k"), _ev(Gamma, "z")],
                    AppendCondition(Query.of(tags=["k"])),
                )
            assert await store.head() == head
            assert [e.data.text for e in await _all(store)] == ["a"]

    async def test_invalid_conditions_are_refused(self, dcb_backend: DcbBackend) -> None:
        """A condition needs a Query and a non-negative ``after``."""
        with pytest.raises(ValueError, match="after"):
            AppendCondition(Query.all(), after=-1)
        with pytest.raises(TypeError):
            AppendCondition(Query.of(tags=["x"]).items[0])  # type: ignore[arg-type]  # the point of the test
        async with dcb_backend.open_store(dcb_contract_codec()) as store:
            assert await store.head() == 0

    # -- idempotency and refusals ---------------------------------------------------------

    async def test_retry_with_the_same_ids_returns_the_original_position(
        self, dcb_backend: DcbBackend
    ) -> None:
        """Re-appending stored event ids writes nothing and returns the first position,
        even though the condition would now fail because of those very events."""
        async with dcb_backend.open_store(dcb_contract_codec()) as store:
            batch = [_ev(Alpha, "one", "order:1"), _ev(Beta, "two", "order:1")]
            condition = AppendCondition(Query.of(tags=["order:1"]))
            first = await store.append(batch, condition)
            await store.append([_ev(Gamma, "later")])
            again = await store.append(batch, condition)
            rebuilt = [DcbEvent(e.data, e.tags, e.metadata, e.event_id) for e in batch]
            third = await store.append(rebuilt)
            events = await _all(store)
        assert again == third == first
        assert [e.data.text for e in events] == ["one", "two", "later"]

    async def test_partly_stored_ids_are_refused(self, dcb_backend: DcbBackend) -> None:
        """A batch mixing stored and new event ids raises and writes nothing."""
        async with dcb_backend.open_store(dcb_contract_codec()) as store:
            stored = _ev(Alpha, "stored")
            head = await store.append([stored])
            with pytest.raises(DuplicateEventIdError) as info:
                await store.append([_ev(Beta, "new"), stored])
            assert await store.head() == head
            assert len(await _all(store)) == 1
        assert info.value.event_ids == [stored.event_id]

    async def test_empty_and_malformed_batches_are_refused(self, dcb_backend: DcbBackend) -> None:
        """An empty batch, a repeated id or a non-event is refused before writing."""
        event = _ev(Alpha, "x")
        async with dcb_backend.open_store(dcb_contract_codec()) as store:
            with pytest.raises(ValueError, match="at least one"):
                await store.append([])
            with pytest.raises(ValueError, match="same event id"):
                await store.append([event, event])
            with pytest.raises(TypeError):
                await store.append([Alpha("bare")])  # type: ignore[list-item]  # the point of the test
            with pytest.raises(TypeError):
                await store.append(event)  # type: ignore[arg-type]  # the point of the test
            assert await store.head() == 0

    async def test_unencodable_batch_writes_nothing(self, dcb_backend: DcbBackend) -> None:
        """A batch whose third event cannot be encoded leaves no event behind."""
        async with dcb_backend.open_store(dcb_contract_codec()) as store:
            await store.append([_ev(Alpha, "before")])
            batch = [
                _ev(Alpha, "one"),
                _ev(Beta, "two"),
                DcbEvent(Unregistered(3)),
                _ev(Alpha, "4"),
            ]
            with pytest.raises(UnknownEventTypeError):
                await store.append(batch)
            assert [e.data.text for e in await _all(store)] == ["before"]

    async def test_oversized_event_is_refused_before_writing(self, dcb_backend: DcbBackend) -> None:
        """An event over the size limit is refused and nothing of its batch is written."""
        async with dcb_backend.open_store(dcb_contract_codec(), max_event_bytes=4096) as store:
            with pytest.raises(EventTooLargeError) as info:
                await store.append([_ev(Alpha, "small"), _ev(Alpha, "x" * 5000)])
            assert await store.head() == 0
            await store.append([_ev(Alpha, "y" * 3000)])
        assert info.value.limit == 4096

    # -- concurrency ----------------------------------------------------------------------

    async def test_racing_claims_have_one_winner(self, dcb_backend: DcbBackend) -> None:
        """Twelve clients that all read "free" and claim one name: exactly one succeeds."""
        query = Query.of(types=["dcb.Alpha"], tags=["username:ann"])
        wins: list[int] = []
        losses: list[int] = []
        read_done = trio.Event()
        readers = 0

        async def contender(i: int) -> None:
            nonlocal readers
            async with dcb_backend.open_store(dcb_contract_codec()) as store:
                events, head = await store.read(query)
                assert events == []
                readers += 1
                if readers == 12:
                    read_done.set()
                await read_done.wait()
                try:
                    await store.append(
                        [_ev(Alpha, f"claim-{i}", "username:ann")], AppendCondition(query, head)
                    )
                    wins.append(i)
                except AppendConditionError:
                    losses.append(i)

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                for i in range(12):
                    nursery.start_soon(contender, i)
        async with dcb_backend.open_store(dcb_contract_codec()) as store:
            events, _ = await store.read(query)
        assert len(wins) == 1
        assert len(losses) == 11
        assert [e.data.text for e in events] == [f"claim-{wins[0]}"]

    async def test_disjoint_conditions_never_conflict(self, dcb_backend: DcbBackend) -> None:
        """Concurrent conditional appends on different tags all succeed."""
        failures: list[int] = []

        async def writer(i: int) -> None:
            async with dcb_backend.open_store(dcb_contract_codec()) as store:
                query = Query.of(tags=[f"account:{i}"])
                for n in range(5):
                    _, head = await store.read(query)
                    try:
                        await store.append(
                            [_ev(Alpha, f"{i}-{n}", f"account:{i}")], AppendCondition(query, head)
                        )
                    except AppendConditionError:
                        failures.append(i)

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                for i in range(8):
                    nursery.start_soon(writer, i)
        async with dcb_backend.open_store(dcb_contract_codec()) as store:
            events = await _all(store)
        assert failures == []
        assert len(events) == 40

    async def test_concurrency_oracle(self, dcb_backend: DcbBackend) -> None:
        """Random concurrent conditional appends: every accepted condition held at its
        position, rejected batches left nothing, positions and ids are clean."""
        report = await run_oracle_tasks(dcb_backend.open_store, dcb_backend.oracle_settings)
        print(f"{dcb_backend.name} oracle: {report.summary()}")
        assert report.violations == [], report.summary()
        assert report.accepted > 0
        assert report.rejected > 0

    # -- following ------------------------------------------------------------------------

    async def test_subscribe_delivers_matching_events_once_in_order(
        self, dcb_backend: DcbBackend
    ) -> None:
        """A follower with a query sees every matching event exactly once, in position
        order, while concurrent writers append (the subscription invariant)."""
        writers, per_writer = 4, 30
        query = Query.of(tags=["watched"])
        seen: list[SequencedEvent[Any]] = []
        expected: set[uuid.UUID] = set()
        rng = random.Random(5)

        async def writer(w: int) -> None:
            async with dcb_backend.open_store(dcb_contract_codec()) as store:
                for n in range(per_writer):
                    tags = ["watched", f"w:{w}"] if rng.random() < 0.5 else [f"w:{w}"]
                    event = _ev(Alpha, f"{w}-{n}", *tags)
                    await store.append([event])
                    if "watched" in tags:
                        expected.add(event.event_id)

        async def consume(events: trio.abc.ReceiveChannel[SequencedEvent[Any]]) -> None:
            async for event in events:
                seen.append(event)
                if event.data.text == "end":
                    return

        with trio.fail_after(60):
            async with (
                dcb_backend.open_store(dcb_contract_codec()) as follower,
                follower.subscribe(query, batch_size=7) as events,
                trio.open_nursery() as nursery,
            ):
                nursery.start_soon(consume, events)
                async with trio.open_nursery() as writing:
                    for w in range(writers):
                        writing.start_soon(writer, w)
                async with dcb_backend.open_store(dcb_contract_codec()) as store:
                    await store.append([_ev(Gamma, "end", "watched", "end")])
        positions = [e.position for e in seen]
        assert positions == sorted(set(positions))
        assert {e.event_id for e in seen[:-1]} == expected
        assert all("watched" in e.tags for e in seen)

    async def test_subscribe_resumes_after_a_checkpoint(self, dcb_backend: DcbBackend) -> None:
        """Subscribing after a position delivers only the events after it, then new ones."""
        async with dcb_backend.open_store(dcb_contract_codec()) as store:
            for n in range(6):
                await store.append([_ev(Alpha, str(n))])
            everything = await _all(store)
            checkpoint = everything[2].position
            got = []
            with trio.fail_after(30):
                async with store.subscribe(after=checkpoint, batch_size=2) as events:
                    async for event in events:
                        got.append(event.data.text)
                        if event.data.text == "5":
                            await store.append([_ev(Alpha, "6")])
                        if event.data.text == "6":
                            break
        assert got == ["3", "4", "5", "6"]
