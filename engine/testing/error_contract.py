"""The backend error policy every durable store keeps, as a contract (docs/runtime.md).

Whatever the backend, a caller sees one vocabulary, never a driver's exception:

* a store used after its block exited: ``trio.ClosedResourceError``;
* a server that refused a request: :class:`~engine.errors.BackendRefusedError`;
* a connection lost, or a reply that never came, while a request was in flight:
  :class:`~engine.errors.OutcomeUnknownError` (also a ``ConnectionError`` and a
  ``TimeoutError``);
* a server that cannot be reached: :class:`~engine.errors.BackendUnavailableError`.

Use it for a backend of your own: subclass :class:`StoreErrorContract` (every durable
backend) with an ``error_backend`` fixture returning an :class:`ErrorBackend`, and
:class:`ConnectionErrorContract` (backends behind a network connection) with a
``network_faults`` fixture returning :class:`NetworkFaults`. The faults are real (a
proxy that cuts a reply, a port nobody listens on, a database that refuses), so the
fixtures come from the test suite that knows how to make them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from functools import partial
from typing import Any, TypeVar

import attrs
import pytest
import trio

from engine.codec import Codec
from engine.dcb.base import DcbEvent, DcbStore, Query
from engine.errors import (
    BackendError,
    BackendRefusedError,
    BackendUnavailableError,
    OutcomeUnknownError,
)
from engine.events import NewEvent
from engine.locks.base import LockRegistry
from engine.stores.base import EventStore
from engine.testing.contract import Note, contract_codec
from engine.testing.dcb_contract import Alpha, dcb_contract_codec

__all__ = [
    "ConnectionErrorContract",
    "DcbConnectionErrorContract",
    "DcbErrorBackend",
    "DcbErrorContract",
    "DcbNetworkFaults",
    "ErrorBackend",
    "LockConnectionErrorContract",
    "LockNetworkFaults",
    "NetworkFaults",
    "StoreErrorContract",
    "check_closed",
    "check_refused",
]

StoreOpener = Callable[[Codec[Any]], AbstractAsyncContextManager[EventStore[Any]]]
#: Opens a store whose connection runs through a fault; yields the store and ``cut``:
#: after ``cut()``, the reply to the store's next request is lost with its connection.
CutStoreOpener = Callable[
    [Codec[Any]], AbstractAsyncContextManager[tuple[EventStore[Any], Callable[[], None]]]
]


@attrs.frozen
class ErrorBackend:
    """How :class:`StoreErrorContract` opens a backend and makes it refuse.

    Attributes:
        name: The backend's name, as :attr:`~engine.errors.BackendError.backend` gives it.
        open_store: ``open_store(codec)`` opens an event store on fresh data.
        open_refusing: ``open_refusing(codec)`` opens an event store and makes the
            backend refuse its next append (or refuses to open it at all).
    """

    name: str
    open_store: StoreOpener
    open_refusing: StoreOpener


@attrs.frozen
class NetworkFaults:
    """How :class:`ConnectionErrorContract` makes a networked backend fail.

    Attributes:
        name: The backend's name, as :attr:`~engine.errors.BackendError.backend` gives it.
        open_cut_store: See :data:`CutStoreOpener`.
        open_unreachable: ``open_unreachable(codec)`` opens an event store on a server
            address nobody listens on (it must raise).
    """

    name: str
    open_cut_store: CutStoreOpener
    open_unreachable: StoreOpener


def _note(text: str) -> list[NewEvent[Any]]:
    return [NewEvent(Note(text))]


#: Every store call the closed-store test makes, by name.
_CALLS: tuple[tuple[str, Callable[[EventStore[Any]], Awaitable[object]]], ...] = (
    ("append", lambda store: store.append("s", _note("after close"))),
    ("load", lambda store: store.load("s")),
    ("stream_version", lambda store: store.stream_version("s")),
    ("read_all", lambda store: store.read_all(after_position=0, limit=10)),
    ("head_position", lambda store: store.head_position()),
    ("find_idempotent", lambda store: store.find_idempotent("key")),
)


S = TypeVar("S")


async def check_closed(
    opener: Callable[[], AbstractAsyncContextManager[S]],
    first: Callable[[S], Awaitable[object]],
    call: Callable[[S], Awaitable[object]],
) -> None:
    """Open a store, ``first(store)``, close it: then ``call(store)`` must raise
    ``trio.ClosedResourceError``."""
    with trio.fail_after(60):
        async with opener() as store:
            await first(store)
        with pytest.raises(trio.ClosedResourceError):
            await call(store)


async def check_refused(
    opener: Callable[[], AbstractAsyncContextManager[S]],
    call: Callable[[S], Awaitable[object]],
    backend: str,
) -> BackendRefusedError:
    """Open a store that the backend refuses: opening it or ``call(store)`` must raise
    :class:`~engine.errors.BackendRefusedError` naming ``backend``."""
    with trio.fail_after(60):
        with pytest.raises(BackendRefusedError) as info:
            async with opener() as store:
                await call(store)
    assert info.value.backend == backend
    assert not isinstance(info.value, BackendUnavailableError)
    assert info.value.detail
    return info.value


class StoreErrorContract:
    """Closed and refused, on every durable backend (pytest-trio tests).

    Subclasses provide an ``error_backend`` fixture returning an :class:`ErrorBackend`.
    """

    @pytest.mark.parametrize("call", [name for name, _ in _CALLS])
    async def test_a_closed_store_raises_closed_resource_error(
        self, error_backend: ErrorBackend, call: str
    ) -> None:
        """Each store call after the store's block exited raises trio.ClosedResourceError."""
        await check_closed(
            partial(error_backend.open_store, contract_codec()),
            lambda store: store.append("s", _note("before close")),
            dict(_CALLS)[call],
        )

    async def test_a_refused_request_raises_backend_refused_error(
        self, error_backend: ErrorBackend
    ) -> None:
        """A request the backend refuses raises BackendRefusedError naming the backend."""
        await check_refused(
            partial(error_backend.open_refusing, contract_codec()),
            lambda store: store.append("s", _note("refused")),
            error_backend.name,
        )


class ConnectionErrorContract:
    """Connection lost and server unreachable, on backends behind a network connection.

    Subclasses provide a ``network_faults`` fixture returning :class:`NetworkFaults`.
    """

    async def test_a_reply_lost_in_flight_raises_outcome_unknown_error(
        self, network_faults: NetworkFaults
    ) -> None:
        """An append whose connection dies before its reply raises OutcomeUnknownError,
        which is also a ConnectionError and a TimeoutError, as callers catch them."""
        with trio.fail_after(60):
            async with network_faults.open_cut_store(contract_codec()) as (store, cut):
                await store.append("s", _note("first"))
                cut()
                with pytest.raises(OutcomeUnknownError) as info:
                    await store.append("s", _note("lost reply"))
        assert info.value.backend == network_faults.name
        assert isinstance(info.value, ConnectionError)
        assert isinstance(info.value, TimeoutError)

    async def test_an_unreachable_server_raises_backend_unavailable_error(
        self, network_faults: NetworkFaults
    ) -> None:
        """Opening a store on an address nobody listens on raises BackendUnavailableError
        (nothing was sent, so the outcome is known), not a driver's exception."""
        with trio.fail_after(60):
            with pytest.raises(BackendError) as info:
                async with network_faults.open_unreachable(contract_codec()):
                    pass  # pragma: no cover
        assert type(info.value) is BackendUnavailableError
        assert info.value.backend == network_faults.name


# -- DCB stores ---------------------------------------------------------------------------

DcbOpener = Callable[[Codec[Any]], AbstractAsyncContextManager[DcbStore[Any]]]


@attrs.frozen
class DcbErrorBackend:
    """How :class:`DcbErrorContract` opens a DCB backend and makes it refuse.

    Attributes:
        name: The backend's name, as :attr:`~engine.errors.BackendError.backend` gives it.
        open_store: ``open_store(codec)`` opens a DCB store on fresh data.
        open_refusing: ``open_refusing(codec)`` opens a DCB store and makes the backend
            refuse its next append (or refuses to open it at all).
    """

    name: str
    open_store: DcbOpener
    open_refusing: DcbOpener


@attrs.frozen
class DcbNetworkFaults:
    """How :class:`DcbConnectionErrorContract` cuts a networked DCB store's reply.

    Attributes:
        name: The backend's name.
        open_cut_store: Like :data:`CutStoreOpener`, for a DCB store.
    """

    name: str
    open_cut_store: Callable[
        [Codec[Any]], AbstractAsyncContextManager[tuple[DcbStore[Any], Callable[[], None]]]
    ]


def _alpha(text: str) -> list[DcbEvent[Any]]:
    return [DcbEvent(Alpha(text), tags=["t:1"])]


_DCB_CALLS: tuple[tuple[str, Callable[[DcbStore[Any]], Awaitable[object]]], ...] = (
    ("append", lambda store: store.append(_alpha("after close"))),
    ("read", lambda store: store.read(Query.all())),
    ("head", lambda store: store.head()),
)


class DcbErrorContract:
    """Closed and refused, on every durable DCB backend (pytest-trio tests).

    Subclasses provide a ``dcb_error_backend`` fixture returning a :class:`DcbErrorBackend`.
    """

    @pytest.mark.parametrize("call", [name for name, _ in _DCB_CALLS])
    async def test_a_closed_dcb_store_raises_closed_resource_error(
        self, dcb_error_backend: DcbErrorBackend, call: str
    ) -> None:
        """Each DCB store call after the store's block exited raises trio.ClosedResourceError."""
        await check_closed(
            partial(dcb_error_backend.open_store, dcb_contract_codec()),
            lambda store: store.append(_alpha("before close")),
            dict(_DCB_CALLS)[call],
        )

    async def test_a_refused_dcb_append_raises_backend_refused_error(
        self, dcb_error_backend: DcbErrorBackend
    ) -> None:
        """A DCB append the backend refuses raises BackendRefusedError naming the backend."""
        await check_refused(
            partial(dcb_error_backend.open_refusing, dcb_contract_codec()),
            lambda store: store.append(_alpha("refused")),
            dcb_error_backend.name,
        )


class DcbConnectionErrorContract:
    """A lost reply on DCB backends behind a network connection.

    Subclasses provide a ``dcb_network_faults`` fixture returning :class:`DcbNetworkFaults`.
    """

    async def test_a_dcb_reply_lost_in_flight_raises_outcome_unknown_error(
        self, dcb_network_faults: DcbNetworkFaults
    ) -> None:
        """A DCB append whose connection dies before its reply raises OutcomeUnknownError."""
        with trio.fail_after(60):
            async with dcb_network_faults.open_cut_store(dcb_contract_codec()) as (store, cut):
                await store.append(_alpha("first"))
                cut()
                with pytest.raises(OutcomeUnknownError) as info:
                    await store.append(_alpha("lost reply"))
        assert info.value.backend == dcb_network_faults.name


# -- lock registries ------------------------------------------------------------------------


@attrs.frozen
class LockNetworkFaults:
    """How :class:`LockConnectionErrorContract` opens a registry on a server out of reach.

    Attributes:
        name: The backend's name.
        open_unreachable: ``open_unreachable()`` opens a lock registry on an address
            nobody listens on (it must raise).
    """

    name: str
    open_unreachable: Callable[[], AbstractAsyncContextManager[LockRegistry]]


class LockConnectionErrorContract:
    """A server out of reach, for lock registries behind a network connection.

    Subclasses provide a ``lock_network_faults`` fixture returning :class:`LockNetworkFaults`.
    """

    async def test_an_unreachable_lock_server_raises_backend_unavailable_error(
        self, lock_network_faults: LockNetworkFaults
    ) -> None:
        """Opening a lock registry on an address nobody listens on raises
        BackendUnavailableError, alone (no exception group, no driver's exception)."""
        with trio.fail_after(60):
            with pytest.raises(BackendError) as info:
                async with lock_network_faults.open_unreachable():
                    pass  # pragma: no cover
        assert type(info.value) is BackendUnavailableError
        assert info.value.backend == lock_network_faults.name
