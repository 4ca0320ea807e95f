"""The Dynamic Consistency Boundary port: events with tags, queries, append conditions.

The names follow the specification at https://dcb.events/specification:

* An event has a **type** (its registered name), **tags** (strings such as
  ``"course:c1"``), data and metadata. :class:`DcbEvent` is what goes into ``append``;
  :class:`SequencedEvent` is what comes back, with its **position** in the log.
* A :class:`Query` is a list of :class:`QueryItem`. An event matches an item when its
  type is one of the item's ``types`` (or the item names no types) **and** it carries
  every one of the item's ``tags``; it matches the query when it matches any item.
  ``Query.all()`` (no items) matches every event.
* ``read(query, *, after=None, limit=None)`` returns the matching events and the
  **head**: the position the answer is complete up to.
* ``append(events, condition)`` writes the events atomically, unless an event matching
  ``condition.fail_if_events_match`` exists after ``condition.after``: then it raises
  :class:`AppendConditionError` and writes nothing. The check and the write are one
  atomic step against every other writer.

The promises every backend keeps are pinned down by the contract suite in
:mod:`engine.testing.dcb_contract`.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import ClassVar, Generic, NamedTuple, Protocol, TypeVar

import attrs
import trio

from engine.errors import EskitError
from engine.events import new_event_id, utc_now

__all__ = [
    "DEFAULT_FOLLOW_BATCH",
    "MAX_TAG_BYTES",
    "AppendCondition",
    "AppendConditionError",
    "DcbEvent",
    "DcbRetriesExhaustedError",
    "DcbStore",
    "DuplicateEventIdError",
    "Query",
    "QueryItem",
    "ReadResult",
    "SequencedEvent",
]

E = TypeVar("E")
E_co = TypeVar("E_co", covariant=True)

#: The longest tag or type name a query or event accepts, in UTF-8 bytes (index
#: entries of every backend stay well inside their limits).
MAX_TAG_BYTES = 512
#: How many events a follower reads per round trip by default.
DEFAULT_FOLLOW_BATCH = 500


def _check_name(what: str, value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"a {what} must be a str, got {value!r}")
    if not value:
        raise ValueError(f"a {what} must not be empty")
    if "\x00" in value:
        raise ValueError(f"a {what} must not contain NUL: {value!r}")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValueError(f"a {what} must be valid Unicode (no lone surrogates)") from None
    if size > MAX_TAG_BYTES:
        raise ValueError(f"a {what} must be at most {MAX_TAG_BYTES} UTF-8 bytes, got {size}")
    return value


def _names(what: str, values: Iterable[str]) -> tuple[str, ...]:
    # A bare string is almost always a forgotten list: "ab" is not ("a", "b").
    if isinstance(values, str):
        raise TypeError(f"{what}s must be a collection of str, not the str {values!r}")
    # Sorted and unique, so that equal sets compare equal and SQL parameters are stable.
    return tuple(sorted({_check_name(what, value) for value in values}))


def _type_names(values: Iterable[str]) -> tuple[str, ...]:
    return _names("type", values)


def _tags(values: Iterable[str]) -> tuple[str, ...]:
    return _names("tag", values)


def _frozen_metadata(value: Mapping[str, str] | None) -> Mapping[str, str]:
    if not value:
        return {}
    for key, item in value.items():
        if not isinstance(key, str) or not isinstance(item, str):
            raise TypeError(f"metadata must map str to str, got {key!r}: {item!r}")
    return dict(value)


@attrs.frozen
class QueryItem:
    """One alternative of a :class:`Query`: types (any of them) and tags (all of them).

    Args:
        types: Event type names; an event matches when its type is one of them. Empty
            means any type.
        tags: Tags an event must all carry. Empty means no tag is required.

    Raises:
        ValueError: Both ``types`` and ``tags`` are empty (use ``Query.all()`` to match
            everything), or a name is empty, contains NUL or is too long.
    """

    types: tuple[str, ...] = attrs.field(default=(), converter=_type_names)
    tags: tuple[str, ...] = attrs.field(default=(), converter=_tags)

    def __attrs_post_init__(self) -> None:
        if not self.types and not self.tags:
            raise ValueError("a query item needs types or tags; Query.all() matches everything")

    def matches(self, type_name: str, tags: Iterable[str]) -> bool:
        """Whether an event of ``type_name`` carrying ``tags`` matches this item."""
        if self.types and type_name not in self.types:
            return False
        if not self.tags:
            return True
        carried = tags if isinstance(tags, set | frozenset) else set(tags)
        return all(tag in carried for tag in self.tags)


def _items(values: Iterable[QueryItem]) -> tuple[QueryItem, ...]:
    items = tuple(dict.fromkeys(values))
    for item in items:
        if not isinstance(item, QueryItem):
            raise TypeError(f"a query holds QueryItem values, got {item!r}")
    return items


@attrs.frozen
class Query:
    """Which events a read returns or an append condition looks for.

    An event matches when it matches any of ``items``; with no items every event matches.

    Example:
        >>> Query([QueryItem(types=["CourseDefined"], tags=["course:c1"])])
        >>> Query.all()
    """

    items: tuple[QueryItem, ...] = attrs.field(default=(), converter=_items)

    @classmethod
    def all(cls) -> Query:
        """The query that matches every event."""
        return cls()

    @classmethod
    def of(cls, *, types: Iterable[str] = (), tags: Iterable[str] = ()) -> Query:
        """A query with one item: ``Query.of(types=[...], tags=[...])``."""
        return cls([QueryItem(types, tags)])

    @property
    def matches_all(self) -> bool:
        """True for ``Query.all()``."""
        return not self.items

    def matches(self, type_name: str, tags: Iterable[str]) -> bool:
        """Whether an event of ``type_name`` carrying ``tags`` matches this query."""
        if not self.items:
            return True
        carried = frozenset(tags)
        return any(item.matches(type_name, carried) for item in self.items)

    def __or__(self, other: Query) -> Query:
        """The query matching what either query matches."""
        if not isinstance(other, Query):
            return NotImplemented
        if self.matches_all or other.matches_all:
            return Query.all()
        return Query([*self.items, *other.items])


@attrs.frozen
class AppendCondition:
    """Fail an append if an event matching ``fail_if_events_match`` exists after ``after``.

    Args:
        fail_if_events_match: The query whose matches make the append fail.
        after: Only events at positions above this count (typically the head returned
            by the read that the decision was based on). ``None``: any matching event
            in the whole log fails the append.
    """

    fail_if_events_match: Query
    after: int | None = None

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.fail_if_events_match, Query):
            raise TypeError(
                f"fail_if_events_match must be a Query, got {self.fail_if_events_match!r}"
            )
        if self.after is not None and (
            not isinstance(self.after, int) or isinstance(self.after, bool) or self.after < 0
        ):
            raise ValueError(f"after must be None or a position >= 0, got {self.after!r}")


@attrs.frozen
class DcbEvent(Generic[E_co]):
    """An event to append: the data, its tags and what the store records beside it.

    The event's type is the name its data's class is registered under in the store's
    codec (the class's ``__qualname__`` for a memory store without a codec).

    Args:
        data: The domain event (an attrs class or dataclass instance).
        tags: Strings that place the event in consistency boundaries (``"course:c1"``).
            Kept sorted and unique.
        metadata: Free-form string pairs (correlation ids, user ids...).
        event_id: A unique id; re-appending events whose ids are all stored already
            returns the original position and writes nothing.
    """

    data: E_co
    tags: tuple[str, ...] = attrs.field(default=(), converter=_tags)
    metadata: Mapping[str, str] = attrs.field(factory=dict, converter=_frozen_metadata)
    event_id: uuid.UUID = attrs.field(factory=new_event_id)


@attrs.frozen
class SequencedEvent(Generic[E_co]):
    """A stored event with its position in the log.

    Attributes:
        position: Global position, strictly increasing in commit order.
        type: The registered type name the event was stored under.
        data: The domain event.
        tags: The event's tags, sorted.
        metadata: String pairs stored with the event.
        event_id: The event's unique id.
        recorded_at: When the store recorded the event (UTC).
    """

    position: int
    type: str
    data: E_co
    tags: tuple[str, ...] = ()
    metadata: Mapping[str, str] = attrs.field(factory=dict)
    event_id: uuid.UUID = attrs.field(factory=new_event_id)
    recorded_at: dt.datetime = attrs.field(factory=utc_now)


class ReadResult(NamedTuple, Generic[E]):
    """What ``read`` returns: ``events, head = await store.read(query)``.

    Attributes:
        events: The matching events, in position order.
        head: The position the answer is complete up to: the log's head when the read
            was not cut by its limit, else the position of the last event returned. No
            event matching the query exists between the last returned event and
            ``head``, so ``AppendCondition(query, after=head)`` protects a decision
            made from ``events``.
    """

    events: list[SequencedEvent[E]]
    head: int


class AppendConditionError(EskitError):
    """An event matching the append condition exists after its ``after`` position.

    Nothing was written. Read again and decide again; the DCB decision handler does
    this for you.

    Attributes:
        condition: The condition that failed.
        position: The position of a conflicting event, when the backend knows it.
    """

    code: ClassVar[str] = "append_condition_failed"

    def __init__(self, condition: AppendCondition, position: int | None = None) -> None:
        super().__init__(condition, position)
        self.condition = condition
        self.position = position

    def __str__(self) -> str:
        after = self.condition.after
        where = "in the log" if after is None else f"after position {after}"
        found = "" if self.position is None else f" (at position {self.position})"
        return f"an event matching the append condition exists {where}{found}"


class DcbRetriesExhaustedError(AppendConditionError):
    """A decision kept conflicting with concurrent writers until its retry budget ran out."""

    code: ClassVar[str] = "dcb_retries_exhausted"

    def __init__(
        self, condition: AppendCondition, position: int | None = None, attempts: int = 0
    ) -> None:
        super().__init__(condition, position)
        self.attempts = attempts

    def __str__(self) -> str:
        return f"{super().__str__()} (gave up after {self.attempts} attempts)"


class DuplicateEventIdError(EskitError, ValueError):
    """Some, but not all, of an append's event ids are stored already; nothing was written.

    Re-appending a batch whose ids are *all* stored is an idempotent retry and returns
    the original position; a batch that mixes stored and new ids is a bug.

    Attributes:
        event_ids: The ids of the batch that are stored already.
    """

    code: ClassVar[str] = "duplicate_event_id"

    def __init__(self, event_ids: Sequence[uuid.UUID]) -> None:
        super().__init__(list(event_ids))
        self.event_ids = list(event_ids)

    def __str__(self) -> str:
        shown = ", ".join(str(event_id) for event_id in self.event_ids[:3])
        more = "" if len(self.event_ids) <= 3 else f" and {len(self.event_ids) - 3} more"
        return (
            f"event ids {shown}{more} are stored already, but not every id of the batch is: "
            "a retry must re-send the same events, a new append needs new ids"
        )


class DcbStore(Protocol[E]):
    """An append-only log of tagged events with conditional appends."""

    async def read(
        self, query: Query | None = None, *, after: int | None = None, limit: int | None = None
    ) -> ReadResult[E]:
        """The events matching ``query`` (every event when ``None``) after ``after``.

        Args:
            query: Which events to return; ``None`` or ``Query.all()`` for all.
            after: Only events at positions above this.
            limit: At most this many events (``None``: all of them).

        Returns:
            The events in position order and the head (see :class:`ReadResult`). A
            reader that has seen position P never later sees a new event at a position
            <= P, however many writers commit concurrently.
        """
        ...

    async def append(
        self, events: Sequence[DcbEvent[E]], condition: AppendCondition | None = None
    ) -> int:
        """Append ``events`` atomically, unless ``condition`` fails.

        Args:
            events: One or more events, stored in this order.
            condition: When given, the append fails if an event matching
                ``condition.fail_if_events_match`` exists after ``condition.after``.

        Returns:
            The position of the last appended event. If every event id of the batch is
            stored already (a retried append), nothing is written and the original
            append's last position is returned, whatever the condition says now.

        Raises:
            AppendConditionError: The condition failed; nothing was written.
            DuplicateEventIdError: Some but not all event ids are stored already.
            EventTooLargeError: An event is over the store's size limit.
            CodecError: An event cannot be encoded.
            ValueError: ``events`` is empty.
        """
        ...

    async def head(self) -> int:
        """The log's current head position (0 for an empty log)."""
        ...

    async def wait_for_append(self, after: int) -> None:
        """Return once the head may have moved beyond ``after``.

        May return early (spuriously), never later than the store's poll interval
        after a commit by any writer. Followers call it when they have caught up.
        """
        ...

    def subscribe(
        self,
        query: Query | None = None,
        *,
        after: int = 0,
        batch_size: int = DEFAULT_FOLLOW_BATCH,
    ) -> AbstractAsyncContextManager[trio.abc.ReceiveChannel[SequencedEvent[E]]]:
        """Follow the log: every matching event after ``after``, then new ones as they commit.

        ``async with store.subscribe(query, after=checkpoint) as events:
        async for event in events: ...``. Each event is delivered once, in position order.
        """
        ...
