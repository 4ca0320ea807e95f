"""Three engine processes on loopback sharing PostgreSQL and NATS, one killed mid-load."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cluster.scenario import Load, run_scenario
from tests.conftest import NatsTarget, PgTarget


def report(locks: str, figures: object) -> None:
    """Print what the scenario measured (shown with ``pytest -s``)."""
    print(f"\n[cluster, {locks} locks] {figures}")


@pytest.mark.parametrize("locks", ["nats", "postgres"])
async def test_round_robin_commands_survive_a_killed_node(
    tmp_path: Path, pg: PgTarget, nats: NatsTarget, locks: str
) -> None:
    """Commands round-robin over three nodes all succeed, streams stay contiguous with no
    loss or duplicate, each durable runner is active on exactly one node, and after a
    SIGKILL the runners move to the survivors while retried command ids act once."""
    load = Load(streams=24, deposits_before_kill=6, deposits_after_kill=6, workers=12)
    figures = await run_scenario(tmp_path, pg, nats, locks=locks, load=load)
    report(locks, figures)
    assert figures.forwarded > 0
    assert figures.served > 0


@pytest.mark.slow
@pytest.mark.parametrize("locks", ["nats", "postgres"])
async def test_soak_round_robin_with_a_killed_node(
    tmp_path: Path, pg: PgTarget, nats: NatsTarget, locks: str
) -> None:
    """The same checks as the bounded test under a larger load (200 streams, 8,200
    commands, 32 concurrent clients)."""
    load = Load(streams=200, deposits_before_kill=20, deposits_after_kill=20, workers=32)
    figures = await run_scenario(tmp_path, pg, nats, locks=locks, load=load)
    report(locks, figures)
    assert figures.forwarded > 0
