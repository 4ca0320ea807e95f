"""``python -m benchmarks``: every hot path beside the raw-driver floor and the peer.

Options: ``--quick`` (small sizes, for CI), ``--json PATH``, ``--backend NAME`` (repeatable).
Prints a Markdown table; floors and peers are measured in the same run, on the same
database, with the same durability and the same payloads.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import backends
from benchmarks.harness import Result, table, write_json


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run for CI)")
    parser.add_argument("--json", type=Path, help="write the results as JSON to this path")
    parser.add_argument(
        "--backend",
        action="append",
        choices=sorted(backends.ALL),
        help="run only these backends (default: all)",
    )
    args = parser.parse_args(argv)
    sizes = backends.Sizes.quick() if args.quick else backends.Sizes.full()
    chosen = args.backend or list(backends.ALL)
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="eskit-bench-") as tmp:
        for name in chosen:
            print(f"== {name}", file=sys.stderr, flush=True)
            started = time.perf_counter()
            for result in backends.ALL[name](Path(tmp) / name, sizes):
                # The wall time of the case with its floor and peer (keeps --quick quick).
                took, started = time.perf_counter() - started, time.perf_counter()
                print(
                    f"   {result.name}: {result.value:,.0f} {result.unit}/s ({took:.1f} s)",
                    file=sys.stderr,
                    flush=True,
                )
                results.append(result)
    print(table(results))
    if args.json:
        write_json(args.json, results, {"quick": args.quick, "sizes": sizes.as_dict()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
