"""A real fault: a runner process on the SQLite store killed with SIGKILL mid-batch,
again and again, resumes from its checkpoint without skipping an event."""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
from pathlib import Path

import trio

from engine import NewEvent
from engine.stores.sqlite import open_sqlite_store
from tests.runtime.child_output import lines_until
from tests.runtime.helpers import Noted, codec

ROOT = Path(__file__).resolve().parents[2]
TOTAL = 300
BATCH = 25
# Where each run hangs (mid-batch) before it is killed; 0 = run to the end.
BLOCK_AT = [37, 88, 90, 151, 299, 0]


async def test_sigkill_mid_batch_resumes_from_the_checkpoint(tmp_path: Path) -> None:
    """Each run starts right after the last saved checkpoint (redelivering the killed
    batch's events), and together the runs handle every event, in order."""
    path = tmp_path / "events.db"
    async with open_sqlite_store(path, codec()) as store:
        for first in range(0, TOTAL, 10):
            await store.append("s", [NewEvent(Noted(n)) for n in range(first, first + 10)])
    runs: list[list[int]] = []
    checkpoints: list[int | None] = [None]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with trio.fail_after(120):
        for block_at in BLOCK_AT:
            command = [sys.executable, "-m", "tests.runtime.fault_child", str(path)]
            command += [str(block_at), str(BATCH), str(TOTAL)]
            async with trio.open_nursery() as nursery:
                # The nursery waits for the process (and kills it if the test fails).
                process: trio.Process = await nursery.start(
                    functools.partial(
                        trio.run_process,
                        command,
                        stdout=subprocess.PIPE,
                        check=False,
                        cwd=ROOT,
                        env=env,
                    )
                )
                lines = await lines_until(process, {"blocked", "done"})
                if block_at:
                    process.send_signal(signal.SIGKILL)
            assert process.returncode == (-signal.SIGKILL if block_at else 0)
            assert lines[-1] == ("blocked" if block_at else "done")
            runs.append([int(line) for line in lines[:-1]])
            async with open_sqlite_store(path, codec()) as store:
                checkpoints.append(await store.load_checkpoint("fault@1"))

    for run, before, after, block_at in zip(
        runs, checkpoints[:-1], checkpoints[1:], BLOCK_AT, strict=True
    ):
        start = (before or 0) + 1
        end = block_at - 1 if block_at else TOTAL
        assert run == list(range(start, end + 1))  # contiguous from the checkpoint: no gap
        # Killed mid-batch: only the batches completed before the kill were saved.
        expected = (end // BATCH) * BATCH if block_at else TOTAL
        assert after == max(expected, before or 0)
    assert checkpoints == [None, 25, 75, 75, 150, 275, 300]
    assert sorted(set().union(*map(set, runs))) == list(range(1, TOTAL + 1))
