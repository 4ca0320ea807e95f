"""DCB test fixtures: ``open_dcb`` opens a client on one shared log, per backend."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import pytest

from engine.codec import Codec
from engine.dcb.base import DcbStore
from engine.dcb.memory import MemoryDcbStore

#: ``open_dcb(codec)`` opens one more client on the test's shared DCB log.
DcbOpener = Callable[[Codec[Any]], AbstractAsyncContextManager[DcbStore[Any]]]


def memory_opener() -> DcbOpener:
    """Every client of the returned opener shares one memory log."""
    shared: list[MemoryDcbStore[Any]] = []

    @asynccontextmanager
    async def open_dcb(codec: Codec[Any]) -> AsyncIterator[DcbStore[Any]]:
        if not shared:
            shared.append(MemoryDcbStore(codec))
        yield shared[0]

    return open_dcb


@pytest.fixture(params=["memory"])
def open_dcb(request: pytest.FixtureRequest) -> DcbOpener:
    """Opens clients on a fresh shared DCB log of each backend."""
    return memory_opener()
