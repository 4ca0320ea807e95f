"""The ``eskit`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``eskit`` command."""
    from engine import __version__

    parser = argparse.ArgumentParser(
        prog="eskit",
        description="eskit: event sourcing for Python, from SQLite to PostgreSQL + NATS.",
    )
    parser.add_argument("--version", action="version", version=f"eskit {__version__}")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit code."""
    parser = build_parser()
    parser.parse_args(argv)
    parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
