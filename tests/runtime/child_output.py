"""Reading a child process's stdout line by line, for the SIGKILL tests."""

from __future__ import annotations

import trio


async def lines_until(process: trio.Process, last: set[str]) -> list[str]:
    """Read the child's stdout until a line in ``last`` arrives; return every line read
    (the last one read may come after it)."""
    assert process.stdout is not None
    lines: list[str] = []
    buffer = b""
    while True:
        chunk = await process.stdout.receive_some()
        assert chunk, f"the child exited early after {lines[-3:]}"
        buffer += chunk
        *complete, buffer = buffer.split(b"\n")
        decoded = [line.decode() for line in complete]
        lines += decoded
        if any(line in last for line in decoded):
            return lines
