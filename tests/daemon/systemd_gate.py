"""A plugin whose read model cannot get past its first event until a test opens a gate: it
holds the engine's runners back, so a test can see that readiness waits for them.

Named in a config as ``plugins.modules = ["tests.daemon.systemd_gate:plugin"]``; the gate
is a FIFO at ``$ESKIT_TEST_GATE``: the first event waits until the test writes to it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import trio

from engine import EventRegistry, Plugin, ProjectionContext, ProjectionDefinition, ProjectionSetup

#: The environment variable naming the gate file.
GATE_ENV = "ESKIT_TEST_GATE"


def gated(context: ProjectionContext) -> ProjectionSetup:
    """A projection whose first event waits until the gate (a FIFO) is written to."""
    gate = Path(os.environ[GATE_ENV])
    opened = False

    async def handle(event: Any) -> None:
        nonlocal opened
        if not opened:
            # Reading a FIFO blocks until a writer opens it: the test's "go".
            await trio.to_thread.run_sync(gate.read_bytes, abandon_on_cancel=True)
            opened = True

    return ProjectionSetup(handler=handle)


plugin = Plugin(
    name="gate",
    description="Holds its runner at the first event until a gate opens (tests only).",
    events=EventRegistry(),
    projections=[ProjectionDefinition(name="gate", setup=gated)],
)
