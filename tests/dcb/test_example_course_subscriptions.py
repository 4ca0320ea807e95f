"""dcb.events example: course subscriptions (a course's capacity and a student's course limit).

A subscription must respect two boundaries at once: the course may not be over-booked
and a student may not hold more than five subscriptions. With DCB one event,
``StudentSubscribedToCourse``, tagged with both the course and the student, is guarded by
one condition that covers both, with no aggregate owning either rule.
"""

from __future__ import annotations

from typing import Any

import attrs
import pytest
import trio

from engine.codec import Codec, EventRegistry
from engine.dcb.base import DcbEvent, Query
from engine.dcb.handler import (
    DecisionHandler,
    DecisionModel,
    DecisionProjection,
    combine_projections,
)
from engine.errors import DomainError
from engine.testing.dcb import DecisionSpec
from tests.dcb.conftest import DcbOpener

MAX_COURSES_PER_STUDENT = 5

# -- events and commands ----------------------------------------------------------------


@attrs.frozen
class CourseDefined:
    course_id: str
    capacity: int


@attrs.frozen
class CourseCapacityChanged:
    course_id: str
    new_capacity: int


@attrs.frozen
class StudentSubscribedToCourse:
    student_id: str
    course_id: str


@attrs.frozen
class DefineCourse:
    course_id: str
    capacity: int


@attrs.frozen
class ChangeCourseCapacity:
    course_id: str
    new_capacity: int


@attrs.frozen
class SubscribeStudentToCourse:
    student_id: str
    course_id: str


def course_registry() -> EventRegistry:
    registry = EventRegistry()
    for cls in (CourseDefined, CourseCapacityChanged, StudentSubscribedToCourse):
        registry.register(cls)
    return registry


# -- projections: each a query and a fold ---------------------------------------------


def course_exists(course_id: str) -> DecisionProjection[bool, Any]:
    return DecisionProjection(
        query=Query.of(types=["CourseDefined"], tags=[f"course:{course_id}"]),
        initial_state=lambda: False,
        evolve=lambda exists, event: True,
    )


def course_capacity(course_id: str) -> DecisionProjection[int, Any]:
    def evolve(capacity: int, event: Any) -> int:
        if isinstance(event, CourseDefined):
            return event.capacity
        return int(event.new_capacity)

    return DecisionProjection(
        query=Query.of(
            types=["CourseDefined", "CourseCapacityChanged"], tags=[f"course:{course_id}"]
        ),
        initial_state=lambda: 0,
        evolve=evolve,
    )


def course_subscriptions(course_id: str) -> DecisionProjection[int, Any]:
    return DecisionProjection(
        query=Query.of(types=["StudentSubscribedToCourse"], tags=[f"course:{course_id}"]),
        initial_state=lambda: 0,
        evolve=lambda count, event: count + 1,
    )


def student_subscriptions(student_id: str) -> DecisionProjection[int, Any]:
    return DecisionProjection(
        query=Query.of(types=["StudentSubscribedToCourse"], tags=[f"student:{student_id}"]),
        initial_state=lambda: 0,
        evolve=lambda count, event: count + 1,
    )


def student_already_subscribed(student_id: str, course_id: str) -> DecisionProjection[bool, Any]:
    return DecisionProjection(
        query=Query.of(
            types=["StudentSubscribedToCourse"],
            tags=[f"student:{student_id}", f"course:{course_id}"],
        ),
        initial_state=lambda: False,
        evolve=lambda subscribed, event: True,
    )


# -- decision models -------------------------------------------------------------------


def _define(exists: bool, command: DefineCourse) -> list[DcbEvent[Any]]:
    if exists:
        raise DomainError(f"Course with id {command.course_id!r} already exists")
    return [
        DcbEvent(
            CourseDefined(command.course_id, command.capacity), [f"course:{command.course_id}"]
        )
    ]


define_course: DecisionModel[bool, DefineCourse, Any] = DecisionModel(
    projection=lambda command: course_exists(command.course_id), decide=_define
)


def _change(state: tuple[Any, ...], command: ChangeCourseCapacity) -> list[DcbEvent[Any]]:
    exists, capacity = state
    if not exists:
        raise DomainError(f"Course {command.course_id!r} does not exist")
    if capacity == command.new_capacity:
        raise DomainError(
            f"New capacity {command.new_capacity} is the same as the current capacity"
        )
    return [
        DcbEvent(
            CourseCapacityChanged(command.course_id, command.new_capacity),
            [f"course:{command.course_id}"],
        )
    ]


change_course_capacity: DecisionModel[tuple[Any, ...], ChangeCourseCapacity, Any] = DecisionModel(
    projection=lambda command: combine_projections(
        course_exists(command.course_id), course_capacity(command.course_id)
    ),
    decide=_change,
)


def _subscribe(state: tuple[Any, ...], command: SubscribeStudentToCourse) -> list[DcbEvent[Any]]:
    exists, capacity, course_count, student_count, already = state
    if not exists:
        raise DomainError(f"Course {command.course_id!r} does not exist")
    if course_count >= capacity:
        raise DomainError(f"Course {command.course_id!r} is already fully booked")
    if already:
        raise DomainError("Student already subscribed to this course")
    if student_count >= MAX_COURSES_PER_STUDENT:
        raise DomainError(f"Student already subscribed to {MAX_COURSES_PER_STUDENT} courses")
    return [
        DcbEvent(
            StudentSubscribedToCourse(command.student_id, command.course_id),
            [f"student:{command.student_id}", f"course:{command.course_id}"],
        )
    ]


subscribe_student: DecisionModel[tuple[Any, ...], SubscribeStudentToCourse, Any] = DecisionModel(
    projection=lambda command: combine_projections(
        course_exists(command.course_id),
        course_capacity(command.course_id),
        course_subscriptions(command.course_id),
        student_subscriptions(command.student_id),
        student_already_subscribed(command.student_id, command.course_id),
    ),
    decide=_subscribe,
)


def defined(course_id: str, capacity: int) -> DcbEvent[Any]:
    return DcbEvent(CourseDefined(course_id, capacity), [f"course:{course_id}"])


def subscribed(student_id: str, course_id: str) -> DcbEvent[Any]:
    return DcbEvent(
        StudentSubscribedToCourse(student_id, course_id),
        [f"student:{student_id}", f"course:{course_id}"],
    )


# -- specifications --------------------------------------------------------------------


def test_define_a_new_course() -> None:
    """A course that does not exist yet can be defined."""
    DecisionSpec(define_course).given().when(DefineCourse("c1", 15)).then_expect(defined("c1", 15))


def test_define_an_existing_course() -> None:
    """Defining a course twice is refused."""
    DecisionSpec(define_course).given(defined("c1", 15)).when(DefineCourse("c1", 10)).then_error(
        "already exists"
    )


def test_change_capacity() -> None:
    """An existing course's capacity changes; an unknown course or the same value is refused."""
    spec = DecisionSpec(change_course_capacity)
    spec.given().when(ChangeCourseCapacity("c0", 15)).then_error("does not exist")
    spec.given(defined("c1", 12)).when(ChangeCourseCapacity("c1", 12)).then_error("same")
    spec.given(defined("c1", 12)).when(ChangeCourseCapacity("c1", 15)).then_expect(
        DcbEvent(CourseCapacityChanged("c1", 15), ["course:c1"])
    )


def test_subscribe_to_a_course() -> None:
    """A student subscribes to an existing course with free places."""
    spec = DecisionSpec(subscribe_student, course_registry())
    spec.given(defined("c1", 10)).when(SubscribeStudentToCourse("s1", "c1")).then_expect(
        subscribed("s1", "c1")
    )


def test_subscribe_rules() -> None:
    """Unknown, fully booked and already subscribed courses and the five-course limit refuse."""
    spec = DecisionSpec(subscribe_student)
    spec.given().when(SubscribeStudentToCourse("s1", "c0")).then_error("does not exist")
    spec.given(defined("c1", 1), subscribed("s2", "c1")).when(
        SubscribeStudentToCourse("s1", "c1")
    ).then_error("fully booked")
    spec.given(
        defined("c1", 3),
        DcbEvent(CourseCapacityChanged("c1", 1), ["course:c1"]),
        subscribed("s2", "c1"),
    ).when(SubscribeStudentToCourse("s1", "c1")).then_error("fully booked")
    spec.given(defined("c1", 10), subscribed("s1", "c1")).when(
        SubscribeStudentToCourse("s1", "c1")
    ).then_error("already subscribed to this course")
    five = [subscribed("s1", f"c{n}") for n in range(2, 7)]
    spec.given(defined("c1", 10), *five).when(SubscribeStudentToCourse("s1", "c1")).then_error(
        "5 courses"
    )


def test_spec_refuses_events_the_query_would_not_select() -> None:
    """A given event outside the decision's query fails the spec instead of misleading it."""
    untagged = DcbEvent(StudentSubscribedToCourse("s2", "c1"))
    with pytest.raises(AssertionError, match="would not be selected"):
        DecisionSpec(subscribe_student).given(defined("c1", 1), untagged).when(
            SubscribeStudentToCourse("s1", "c1")
        ).then_expect(subscribed("s1", "c1"))


def test_state_of_the_decision() -> None:
    """The combined state holds each projection's fold of only its own events."""
    DecisionSpec(subscribe_student).given(
        defined("c1", 10), subscribed("s1", "c2"), subscribed("s2", "c1")
    ).when(SubscribeStudentToCourse("s1", "c1")).then_state((True, 10, 1, 1, False))


# -- against a store -------------------------------------------------------------------


async def test_capacity_holds_under_concurrent_subscriptions(open_dcb: DcbOpener) -> None:
    """Ten students race for three places: exactly three get in, the rest are refused."""
    codec: Codec[Any] = Codec(course_registry())
    outcomes: dict[str, str] = {}

    async def student(n: int) -> None:
        async with open_dcb(codec) as store:
            handler = DecisionHandler(model=subscribe_student, store=store, max_attempts=100)
            try:
                await handler.handle(SubscribeStudentToCourse(f"s{n}", "c1"))
                outcomes[f"s{n}"] = "in"
            except DomainError as exc:
                outcomes[f"s{n}"] = str(exc)

    async with open_dcb(codec) as store:
        await DecisionHandler(model=define_course, store=store).handle(DefineCourse("c1", 3))
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for n in range(10):
                nursery.start_soon(student, n)
    async with open_dcb(codec) as store:
        events, _ = await store.read(Query.of(tags=["course:c1"]))
    assert sorted(outcomes.values()).count("in") == 3
    assert all(v == "in" or "fully booked" in v for v in outcomes.values())
    assert len([e for e in events if isinstance(e.data, StudentSubscribedToCourse)]) == 3


async def test_student_limit_holds_under_concurrent_subscriptions(open_dcb: DcbOpener) -> None:
    """One student subscribing to eight courses at once ends with exactly five."""
    codec: Codec[Any] = Codec(course_registry())
    refused: list[str] = []

    async def subscribe(course: int) -> None:
        async with open_dcb(codec) as store:
            handler = DecisionHandler(model=subscribe_student, store=store, max_attempts=100)
            try:
                await handler.handle(SubscribeStudentToCourse("s1", f"c{course}"))
            except DomainError as exc:
                refused.append(str(exc))

    async with open_dcb(codec) as store:
        definer = DecisionHandler(model=define_course, store=store)
        for course in range(8):
            await definer.handle(DefineCourse(f"c{course}", 10))
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for course in range(8):
                nursery.start_soon(subscribe, course)
    async with open_dcb(codec) as store:
        events, _ = await store.read(
            Query.of(types=["StudentSubscribedToCourse"], tags=["student:s1"])
        )
    assert len(events) == MAX_COURSES_PER_STUDENT
    assert len(refused) == 3
    assert all("5 courses" in message for message in refused)
