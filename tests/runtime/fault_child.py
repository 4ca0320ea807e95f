"""A projection runner in its own process, for the SIGKILL test (test_fault.py).

Usage: ``python -m tests.runtime.fault_child DB BLOCK_AT BATCH_SIZE TOTAL``. Prints the
position of each event it handles; at position ``BLOCK_AT`` prints ``blocked`` and
hangs (waiting to be killed); with ``BLOCK_AT`` 0 it prints ``done`` once its checkpoint
reaches ``TOTAL`` and exits.
"""

from __future__ import annotations

import sys
from typing import Any

import trio

from engine import Event
from engine.runners import ProjectionRunner
from engine.stores.sqlite import open_sqlite_store
from tests.runtime.helpers import codec


async def main(path: str, block_at: int, batch_size: int, total: int) -> None:
    async def handle(event: Event[Any]) -> None:
        await trio.lowlevel.checkpoint()
        if event.position == block_at:
            print("blocked", flush=True)
            await trio.sleep_forever()
        print(event.position, flush=True)

    async with open_sqlite_store(path, codec()) as store:
        runner = ProjectionRunner(
            name="fault", handler=handle, store=store, checkpoints=store, batch_size=batch_size
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(runner.run)
            await runner.wait_caught_up(total)
            print("done", flush=True)
            nursery.cancel_scope.cancel()


if __name__ == "__main__":
    trio.run(main, sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
