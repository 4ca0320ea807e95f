"""Trio's strict exception groups stay inside the library (STYLE rule 27).

A public ``async with open_x(...) as x:`` runs its services in a nursery, and a nursery
wraps whatever leaves it in an :class:`ExceptionGroup`, even a single error, even the
error the caller raised in its own block. ``except ConcurrencyError`` around the block
would then miss it. :func:`unwrap_lone_errors` decorates an ``open_*`` so that a group
carrying one error (at any depth of nesting, beside any number of ``trio.Cancelled``)
comes out as that error itself, with its own traceback, cause and context. Several real
errors stay a group: none of them is dropped.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import NoReturn, ParamSpec, TypeVar

import trio

__all__ = ["lone_error", "unwrap_lone_errors"]

P = ParamSpec("P")
T = TypeVar("T")


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    leaves: list[BaseException] = []
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            leaves.extend(_leaves(exc))
        else:
            leaves.append(exc)
    return leaves


def lone_error(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """The one exception ``group`` carries, or ``None`` when it carries several.

    ``trio.Cancelled`` beside a real error is ignored (the error is what ended the
    scope); a group of cancellations only gives its first one.
    """
    leaves = _leaves(group)
    real = [exc for exc in leaves if not isinstance(exc, trio.Cancelled)]
    if len(real) == 1:
        return real[0]
    if not real and leaves:
        return leaves[0]
    return None


def _raise_alone(exc: BaseException) -> NoReturn:
    # Raised without the group as its context: the error reads as if no nursery was there.
    context = exc.__context__
    try:
        raise exc
    finally:
        exc.__context__ = context
        del exc, context


class _Unwrapping(AbstractAsyncContextManager[T]):
    def __init__(self, inner: AbstractAsyncContextManager[T]) -> None:
        self._inner = inner

    async def __aenter__(self) -> T:
        try:
            return await self._inner.__aenter__()
        except BaseExceptionGroup as group:
            lone = lone_error(group)
            if lone is None:
                raise
            _raise_alone(lone)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool | None:
        try:
            return await self._inner.__aexit__(exc_type, exc, traceback)
        except BaseExceptionGroup as group:
            lone = lone_error(group)
            if lone is None or group is exc:
                raise  # several errors, or the caller's own group: as it is
            if lone is exc:
                return False  # the caller's own error goes on, untouched
            _raise_alone(lone)


def unwrap_lone_errors(
    open_x: Callable[P, AbstractAsyncContextManager[T]],
) -> Callable[P, AbstractAsyncContextManager[T]]:
    """Decorate a public ``open_*`` so that a lone error leaves it as itself.

    Put it above ``@asynccontextmanager``. An error raised in the caller's block, or by a
    service of the resource, that a nursery wrapped in (nested) exception groups, comes
    out unwrapped; a group of several errors comes out as it is.
    """

    @functools.wraps(open_x)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> AbstractAsyncContextManager[T]:
        return _Unwrapping(open_x(*args, **kwargs))

    return wrapper
