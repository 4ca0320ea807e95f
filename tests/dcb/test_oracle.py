"""The DCB concurrency oracle across processes (SQLite) and connections (PostgreSQL).

The bounded tier runs in CI; the ``slow`` tier runs many more appends.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import trio

from engine.dcb.sqlite import open_sqlite_dcb_store
from engine.testing.dcb_oracle import (
    AppendRecord,
    OracleReport,
    OracleSettings,
    oracle_codec,
    read_log,
    run_oracle_tasks,
    validate,
)
from tests.conftest import PgTarget
from tests.dcb.test_dcb_memory import memory_dcb_backend
from tests.dcb.test_dcb_postgres import postgres_dcb_backend

ROOT = Path(__file__).resolve().parents[2]


async def run_sqlite_processes(tmp_path: Path, settings: OracleSettings) -> OracleReport:
    """One process per worker on one SQLite file, then validate the file's log."""
    path = tmp_path / "oracle.db"
    # Create the schema once, so the workers do not all race to migrate at start-up.
    async with open_sqlite_dcb_store(path, oracle_codec()):
        pass
    outs = [tmp_path / f"worker-{n}.jsonl" for n in range(settings.workers)]

    async def worker(n: int) -> None:
        await trio.run_process(
            [
                sys.executable,
                "-m",
                "tests.dcb.oracle_worker",
                f"--path={path}",
                f"--worker={n}",
                f"--workers={settings.workers}",
                f"--appends={settings.appends_per_worker}",
                f"--seed={settings.seed}",
                f"--out={outs[n]}",
            ],
            cwd=ROOT,
        )

    with trio.fail_after(300):
        async with trio.open_nursery() as nursery:
            for n in range(settings.workers):
                nursery.start_soon(worker, n)
    records = [
        AppendRecord.from_json(json.loads(line))
        for out in outs
        for line in out.read_text().splitlines()
    ]
    async with open_sqlite_dcb_store(path, oracle_codec()) as store:
        log = await read_log(store)
    return validate(log, records)


async def test_sqlite_oracle_across_processes(tmp_path: Path) -> None:
    """Four processes making 50 random conditional appends each on one file: every
    accepted condition held, nothing rejected was written, positions and ids are clean."""
    report = await run_sqlite_processes(tmp_path, OracleSettings(workers=4, appends_per_worker=50))
    print(report.summary())
    assert report.violations == [], report.summary()
    assert report.accepted > 0
    assert report.rejected > 0


@pytest.mark.slow
async def test_sqlite_oracle_across_processes_large(tmp_path: Path) -> None:
    """Eight processes making 500 random conditional appends each: no violation."""
    settings = OracleSettings(workers=8, appends_per_worker=500, seed=7)
    report = await run_sqlite_processes(tmp_path, settings)
    print(report.summary())
    assert report.violations == [], report.summary()


@pytest.mark.slow
async def test_postgres_oracle_across_connections_large(pg: PgTarget) -> None:
    """Eight stores (each with its own pool and connections) making 500 random
    conditional appends each on one schema: no violation."""
    settings = OracleSettings(workers=8, appends_per_worker=500, seed=7)
    report = await run_oracle_tasks(postgres_dcb_backend(pg).open_store, settings)
    print(report.summary())
    assert report.violations == [], report.summary()


@pytest.mark.slow
async def test_memory_oracle_large() -> None:
    """Sixteen tasks making 500 random conditional appends each on one memory log."""
    settings = OracleSettings(workers=16, appends_per_worker=500, seed=7)
    report = await run_oracle_tasks(memory_dcb_backend().open_store, settings)
    print(report.summary())
    assert report.violations == [], report.summary()
