"""The contract every dead-letter store passes.

Use it for a store of your own: subclass :class:`DeadLetterStoreContract` in a test module
and provide a ``dead_letter_backend`` fixture that returns a :class:`DeadLetterBackend`::

    class TestMyDeadLetters(DeadLetterStoreContract):
        @pytest.fixture
        def dead_letter_backend(self):
            return DeadLetterBackend(name="mine", open_store=...)

``open_store()`` opens one more client on the *same* data (a durable store reopens it
from where it is kept, as after a restart; an in-process store may hand out one shared
instance). Tests run under pytest-trio, on real servers, with deadlines only as a guard
against hangs (never as assertions about speed).
"""

from __future__ import annotations

import datetime as dt
import random
import unicodedata
import uuid
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

import attrs
import pytest
import trio

from engine.stores.base import DeadLetter, DeadLetterStore
from engine.stores.dead_letter_encoding import (
    MAX_REASON_LENGTH,
    REASON_CUT_MARKER,
    bounded_reason,
)

__all__ = [
    "HOSTILE_REASONS",
    "HOSTILE_RUNNER_NAMES",
    "DeadLetterBackend",
    "DeadLetterStoreContract",
    "letter",
]

#: Seconds any single contract test may take before it counts as hung.
HANG_GUARD = 60

#: Runner names that must each stay their own key: never a wildcard, never a prefix of
#: another, never folded together by encoding, normalisation, case or quoting.
HOSTILE_RUNNER_NAMES: tuple[str, ...] = (
    "",
    " ",
    "a",
    "a.b",
    "a.*",
    "*",
    ">",
    "a.>",
    "$KV.x.y",
    "bank.balances@1",
    "bank.balances@1 ",
    "BANK.BALANCES@1",
    "a/b",
    "a%2Fb",
    "=",
    "==",
    "tab\there",
    "new\nline",
    "\x01\x1f\x7f",
    "line\u2028separator",
    "'; DROP TABLE dead_letters; --",
    '"double" quoted',
    "%_\\",
    "emoji-\U0001f600",
    "right-to-left \u202e",
    unicodedata.normalize("NFC", "caf\u00e9"),
    unicodedata.normalize("NFD", "caf\u00e9"),
    "x" * 1000,
    "x" * 999,
    "\u00e9" * 600,
)

#: Reasons a store keeps verbatim, whatever it is built on.
HOSTILE_REASONS: tuple[str, ...] = (
    "",
    "ValueError: plain",
    "KeyError: 'quoted' \"twice\" `back` and \\ backslash",
    "multi\nline\r\nreason\twith tab",
    "\x01\x02\x1b[31mred\x1b[0m\x7f",
    "\u2028\u2029 separators, \u202e reversed, \ufeff BOM",
    "emoji \U0001f600 and CJK \u6f22\u5b57",
    '{"json": "inside", "n": null}',
    "'; DROP TABLE dead_letters; --",
    "x" * MAX_REASON_LENGTH,
    "\u00e9" * MAX_REASON_LENGTH,
)

_EPOCH = dt.datetime(2024, 5, 17, 12, 30, 45, 123456, tzinfo=dt.UTC)


def letter(
    runner: str = "bank.balances@1",
    position: int = 1,
    *,
    reason: str = "ValueError: cannot digest",
    attempts: int = 3,
    stream_id: str | None = None,
    parked_at: dt.datetime | None = None,
) -> DeadLetter:
    """A dead letter with plausible fields (deterministic in its arguments)."""
    return DeadLetter(
        runner=runner,
        position=position,
        event_id=uuid.uuid5(uuid.NAMESPACE_URL, repr((runner, position))),
        stream_id=stream_id if stream_id is not None else f"account-{position}",
        version=position % 7 + 1,
        type="bank.MoneyDeposited",
        reason=reason,
        attempts=attempts,
        parked_at=(
            parked_at
            if parked_at is not None
            else _EPOCH + dt.timedelta(seconds=position % 1_000_000)
        ),
    )


def _key(item: DeadLetter) -> tuple[str, int]:
    return item.runner, item.position


@attrs.frozen
class DeadLetterBackend:
    """How the contract opens a dead-letter store.

    Attributes:
        name: For test ids and messages.
        open_store: ``open_store()`` opens a client on the backend's data; opened again
            after the first was closed, it must find what the first one kept.

    Every store keeps letters by the rules of :mod:`engine.stores.dead_letter_encoding`
    (reasons cut at :data:`~engine.stores.dead_letter_encoding.MAX_REASON_LENGTH`, names
    with NUL refused).
    """

    name: str
    open_store: Callable[[], AbstractAsyncContextManager[DeadLetterStore]]


class DeadLetterStoreContract:
    """The behaviour every :class:`~engine.stores.base.DeadLetterStore` shares."""

    async def test_park_list_and_discard(self, dead_letter_backend: DeadLetterBackend) -> None:
        """A parked letter is listed with every field as parked; discarding it answers
        ``True`` once, then ``False``, and it is gone."""
        with trio.fail_after(HANG_GUARD):
            async with dead_letter_backend.open_store() as store:
                assert await store.dead_letters() == []
                assert not await store.discard("bank.balances@1", 1)
                parked = letter(position=7)
                await store.park(parked)
                assert await store.dead_letters() == [parked]
                assert await store.dead_letters("bank.balances@1") == [parked]
                assert not await store.discard("bank.balances@1", 8)
                assert not await store.discard("bank.balances@2", 7)
                assert await store.discard("bank.balances@1", 7)
                assert not await store.discard("bank.balances@1", 7)
                assert await store.dead_letters() == []

    async def test_parking_the_same_key_replaces(
        self, dead_letter_backend: DeadLetterBackend
    ) -> None:
        """Parking ``(runner, position)`` again replaces the letter; other keys stay."""
        with trio.fail_after(HANG_GUARD):
            async with dead_letter_backend.open_store() as store:
                first = letter(position=3, reason="first", attempts=1)
                other = letter(position=4)
                await store.park(first)
                await store.park(other)
                again = attrs.evolve(
                    first,
                    reason="second",
                    attempts=6,
                    stream_id="elsewhere",
                    version=9,
                    type="bank.Other",
                    event_id=uuid.uuid4(),
                    parked_at=first.parked_at + dt.timedelta(hours=1),
                )
                await store.park(again)
                assert await store.dead_letters() == [again, other]

    async def test_listed_by_runner_then_position(
        self, dead_letter_backend: DeadLetterBackend
    ) -> None:
        """Letters come back by runner (code point order, whatever the database's
        collation) and then by position as a number, however they were parked."""
        runners = ["b", "a", "B", "\u00e9", "a.b", "a@1", "Z", "a b", "\U0001f600", "e"]
        positions = [10, 2, 300, 1, 2**53 + 1, 99_999]
        letters = [letter(r, p) for r in runners for p in positions]
        random.Random(7).shuffle(letters)
        with trio.fail_after(HANG_GUARD):
            async with dead_letter_backend.open_store() as store:
                for item in letters:
                    await store.park(item)
                assert await store.dead_letters() == sorted(letters, key=_key)

    async def test_filter_by_runner(self, dead_letter_backend: DeadLetterBackend) -> None:
        """``dead_letters(runner)`` lists that runner's letters only: a runner whose name
        is a prefix, a pattern or another case of it is another runner."""
        names = ["a", "a.b", "a.*", "a.>", "A", "a ", "*", ">", "ab"]
        with trio.fail_after(HANG_GUARD):
            async with dead_letter_backend.open_store() as store:
                for name in names:
                    await store.park(letter(name, 1))
                    await store.park(letter(name, 2))
                for name in names:
                    assert await store.dead_letters(name) == [letter(name, 1), letter(name, 2)]
                assert await store.dead_letters("nobody") == []
                assert await store.dead_letters("a.") == []

    async def test_hostile_runner_names_and_reasons(
        self, dead_letter_backend: DeadLetterBackend
    ) -> None:
        """Runner names and reasons with wildcards, quotes, SQL, control characters and
        any script are kept verbatim, each name its own key."""
        letters = [
            letter(name, position, reason=HOSTILE_REASONS[i % len(HOSTILE_REASONS)])
            for i, name in enumerate(HOSTILE_RUNNER_NAMES)
            for position in (1, 2)
        ]
        with trio.fail_after(HANG_GUARD):
            async with dead_letter_backend.open_store() as store:
                for item in letters:
                    await store.park(item)
                assert await store.dead_letters() == sorted(letters, key=_key)
                for name in HOSTILE_RUNNER_NAMES:
                    assert [(x.runner, x.position) for x in await store.dead_letters(name)] == [
                        (name, 1),
                        (name, 2),
                    ]
                for name in HOSTILE_RUNNER_NAMES:
                    assert await store.discard(name, 1)
                assert await store.dead_letters() == [
                    x for x in sorted(letters, key=_key) if x.position == 2
                ]

    async def test_every_reason_is_kept_verbatim(
        self, dead_letter_backend: DeadLetterBackend
    ) -> None:
        """Each hostile reason (up to the length bound) reads back unchanged."""
        letters = [letter("r", i, reason=reason) for i, reason in enumerate(HOSTILE_REASONS)]
        with trio.fail_after(HANG_GUARD):
            async with dead_letter_backend.open_store() as store:
                for item in letters:
                    await store.park(item)
                assert [x.reason for x in await store.dead_letters("r")] == list(HOSTILE_REASONS)

    async def test_long_reasons_are_cut_with_a_marker(
        self, dead_letter_backend: DeadLetterBackend
    ) -> None:
        """A reason longer than the bound is cut to the bound with a visible ``…`` at the
        end (by every durable store alike); a reason at the bound is kept whole."""
        reasons = [
            "x" * (MAX_REASON_LENGTH + 1),
            "\u00e9" * 10_000,
            "\U0001f600" * (MAX_REASON_LENGTH * 2),
            "Traceback:\n" + "line\n" * 100_000,
        ]
        with trio.fail_after(HANG_GUARD):
            async with dead_letter_backend.open_store() as store:
                for i, reason in enumerate(reasons):
                    await store.park(letter("r", i, reason=reason))
                kept = [x.reason for x in await store.dead_letters("r")]
        assert kept == [bounded_reason(reason) for reason in reasons]
        for reason, stored in zip(reasons, kept, strict=True):
            assert len(stored) == MAX_REASON_LENGTH
            assert stored.endswith(REASON_CUT_MARKER)
            assert stored[:-1] == reason[: MAX_REASON_LENGTH - 1]

    async def test_names_no_store_can_key_are_refused(
        self, dead_letter_backend: DeadLetterBackend
    ) -> None:
        """A store refuses a runner name with NUL or a lone surrogate (and a naive
        ``parked_at``) with ``ValueError`` and keeps nothing; NUL in a reason becomes
        U+FFFD."""
        bad = [
            letter("nul\0inside"),
            letter("lone-\ud800"),
            letter(parked_at=dt.datetime(2024, 1, 1, 12, 0)),
        ]
        with trio.fail_after(HANG_GUARD):
            async with dead_letter_backend.open_store() as store:
                for item in bad:
                    with pytest.raises(ValueError, match="dead letter"):
                        await store.park(item)
                assert await store.dead_letters() == []
                with pytest.raises(ValueError, match="runner"):
                    await store.dead_letters("nul\0")
                with pytest.raises(ValueError, match="runner"):
                    await store.discard("nul\0", 1)
                await store.park(letter("r", 1, reason="a\0b\ud800c"))
                [kept] = await store.dead_letters("r")
                assert kept.reason == "a\ufffdb\ufffdc"

    async def test_fields_round_trip(self, dead_letter_backend: DeadLetterBackend) -> None:
        """Large positions and versions, the event id, and ``parked_at`` (any time zone,
        microseconds) read back as the same values and the same instant."""
        tz = dt.timezone(dt.timedelta(hours=-9, minutes=-30))
        items = [
            letter("r", 2**62, parked_at=dt.datetime(1999, 12, 31, 23, 59, 59, 999999, tz)),
            attrs.evolve(letter("r", 1), version=2**40, attempts=1000, event_id=uuid.UUID(int=0)),
            letter("r", 2, parked_at=dt.datetime(2038, 1, 19, 3, 14, 8, 1, dt.UTC)),
        ]
        with trio.fail_after(HANG_GUARD):
            async with dead_letter_backend.open_store() as store:
                for item in items:
                    await store.park(item)
                listed = await store.dead_letters("r")
        assert listed == sorted(items, key=_key)
        for item in listed:
            assert item.parked_at.utcoffset() is not None
            assert isinstance(item.event_id, uuid.UUID)

    async def test_letters_survive_reopening(self, dead_letter_backend: DeadLetterBackend) -> None:
        """What one client parked, a client opened after it was closed lists; a discard
        is just as lasting."""
        items = [letter("p@1", 1), letter("p@1", 5), letter("q@2", 3, reason="multi\nline")]
        with trio.fail_after(HANG_GUARD):
            async with dead_letter_backend.open_store() as store:
                for item in items:
                    await store.park(item)
            async with dead_letter_backend.open_store() as store:
                assert await store.dead_letters() == items
                assert await store.discard("p@1", 5)
                await store.park(attrs.evolve(items[0], attempts=9))
            async with dead_letter_backend.open_store() as store:
                assert await store.dead_letters() == [attrs.evolve(items[0], attempts=9), items[2]]

    async def test_two_clients_see_each_other(self, dead_letter_backend: DeadLetterBackend) -> None:
        """Two clients open at once on the same data (two nodes) see each other's parks
        and discards."""
        with trio.fail_after(HANG_GUARD):
            async with (
                dead_letter_backend.open_store() as a,
                dead_letter_backend.open_store() as b,
            ):
                await a.park(letter("p@1", 1))
                assert await b.dead_letters() == [letter("p@1", 1)]
                assert await b.discard("p@1", 1)
                assert await a.dead_letters() == []
                assert not await a.discard("p@1", 1)

    async def test_concurrent_parks(self, dead_letter_backend: DeadLetterBackend) -> None:
        """Many tasks parking at once (distinct keys, and the same key from several
        tasks) lose nothing: every key is there once, holding one of its letters."""
        distinct = [letter(f"runner-{i % 4}", i) for i in range(48)]
        contested = [letter("hot", 1, attempts=n, reason=f"attempt {n}") for n in range(1, 9)]
        with trio.fail_after(HANG_GUARD):
            async with dead_letter_backend.open_store() as store:
                async with trio.open_nursery() as nursery:
                    for item in [*distinct, *contested]:
                        nursery.start_soon(store.park, item)
                listed = await store.dead_letters()
                [hot] = await store.dead_letters("hot")
        assert hot in contested
        assert listed == sorted([*distinct, hot], key=_key)
