"""One oracle worker in its own process: ``python -m tests.dcb.oracle_worker ARGS``.

Opens the SQLite DCB store at ``--path``, runs :func:`engine.testing.dcb_oracle.oracle_worker`
and writes its records as JSON lines to ``--out``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import trio

from engine.dcb.sqlite import open_sqlite_dcb_store
from engine.testing.dcb_oracle import AppendRecord, OracleSettings, oracle_codec, oracle_worker


async def _main(path: str, worker: int, settings: OracleSettings) -> list[AppendRecord]:
    async with open_sqlite_dcb_store(path, oracle_codec(), synchronous="NORMAL") as store:
        return await oracle_worker(store, worker, settings)


def main() -> None:
    """Parse the arguments and run one worker."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--path", required=True)
    parser.add_argument("--worker", type=int, required=True)
    parser.add_argument("--workers", type=int, required=True)
    parser.add_argument("--appends", type=int, required=True)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    settings = OracleSettings(workers=args.workers, appends_per_worker=args.appends, seed=args.seed)
    records = trio.run(_main, args.path, args.worker, settings)
    args.out.write_text("".join(json.dumps(record.to_json()) + "\n" for record in records))


if __name__ == "__main__":
    main()
