"""The single binary's size and its time from start to ready (median of several starts).

Usage: ``python packaging/measure.py [dist/eskit] [--runs 5]``. Each run starts
``eskit run`` on a fresh temporary config (SQLite, HTTP on a free port), times it from the
exec to its "ready" line, and stops it with SIGTERM. ``eskit --version`` is timed too: it
is the floor every command pays (the one-file binary unpacks itself on each start).
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

READY = "ready (stop"
TIMEOUT = 60.0


def time_to_ready(binary: Path) -> float:
    """Seconds from starting ``eskit run`` on a fresh SQLite config to its "ready" line."""
    with tempfile.TemporaryDirectory(prefix="eskit-measure-") as folder:
        config = Path(folder) / "eskit.toml"
        config.write_text(f'[engine]\ndata_dir = "{Path(folder) / "data"}"\n\n[http]\nport = 0\n')
        env = {k: v for k, v in os.environ.items() if not k.startswith("ESKIT_")}
        started = time.monotonic()
        proc = subprocess.Popen(
            [str(binary), "run", "-c", str(config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        assert proc.stdout is not None
        elapsed = None
        try:
            for line in proc.stdout:
                if READY in line:
                    elapsed = time.monotonic() - started
                    break
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=TIMEOUT)
        if elapsed is None or proc.returncode != 0:
            raise SystemExit(f"{binary} did not get ready (exit code {proc.returncode})")
        return elapsed


def time_version(binary: Path) -> float:
    """Seconds that ``eskit --version`` takes."""
    started = time.monotonic()
    subprocess.run([str(binary), "--version"], check=True, capture_output=True, timeout=TIMEOUT)
    return time.monotonic() - started


def main(argv: list[str] | None = None) -> int:
    """Print the binary's size and the median of its start-to-ready and ``--version`` times."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("binary", nargs="?", default="dist/eskit", type=Path)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)
    size = args.binary.stat().st_size
    ready = [time_to_ready(args.binary) for _ in range(args.runs)]
    version = [time_version(args.binary) for _ in range(args.runs)]
    print(f"binary:          {args.binary} ({size / 2**20:.1f} MiB, {size} bytes)")
    print(
        f"start to ready:  median {statistics.median(ready):.2f} s of {args.runs} "
        f"(min {min(ready):.2f}, max {max(ready):.2f})"
    )
    print(
        f"--version:       median {statistics.median(version):.2f} s of {args.runs} "
        f"(min {min(version):.2f}, max {max(version):.2f})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
