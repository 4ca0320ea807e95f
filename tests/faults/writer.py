"""A writer process for the SIGKILL tests (test_kill.py).

Usage: ``python -m tests.faults.writer STREAM FIRST_BATCH BACKEND TARGET...``. Opens the
store, prints ``ready``, then appends batches ``FIRST_BATCH, FIRST_BATCH + 1, ...`` to
``STREAM`` (each with its idempotency key and fixed event ids), printing ``send B``
before and ``ack B POSITION`` after each append, until it is killed. The first batch may
be a retry of one whose outcome the killed predecessor never learned.
"""

from __future__ import annotations

import sys

import trio

from tests.faults.backends import open_target
from tests.faults.ledger import batch_events, batch_key


async def main(stream_id: str, first: int, target: list[str]) -> None:
    async with open_target(target) as store:
        print("ready", flush=True)
        batch = first
        while True:
            print(f"send {batch}", flush=True)
            stored = await store.append(
                stream_id,
                batch_events(stream_id, batch),
                idempotency_key=batch_key(stream_id, batch),
            )
            print(f"ack {batch} {stored[0].position}", flush=True)
            batch += 1


if __name__ == "__main__":
    trio.run(main, sys.argv[1], int(sys.argv[2]), sys.argv[3:])
