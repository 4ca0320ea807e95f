"""The single binary's smoke tests: which binary they run, and when they run at all.

Tests marked ``binary`` run the executable named by ``ESKIT_BINARY`` (``make binary``
builds ``dist/eskit``). A developer's plain ``pytest`` deselects them, so the suite stays
fast without a build; naming the marker (``-m binary``) or setting ``ESKIT_BINARY`` selects
them. Under CI (``CI=true``) they are never deselected and a missing binary fails them:
CI cannot pass without having run the binary.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

BINARY_ENV = "ESKIT_BINARY"


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect the ``binary`` tests on a developer's plain run (see the module docstring)."""
    markexpr = str(config.getoption("markexpr", "") or "")
    if os.environ.get(BINARY_ENV) or _in_ci() or "binary" in markexpr:
        return
    deselected = [item for item in items if item.get_closest_marker("binary")]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = [item for item in items if not item.get_closest_marker("binary")]


@pytest.fixture(scope="session")
def eskit_binary() -> Path:
    """The single executable under test (``ESKIT_BINARY``); fails when it is not there."""
    value = os.environ.get(BINARY_ENV, "")
    if not value:
        pytest.fail(
            f"{BINARY_ENV} is not set: build with `make binary`, then {BINARY_ENV}=dist/eskit"
        )
    path = Path(value).resolve()
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.fail(f"{BINARY_ENV}={value} is not an executable file")
    return path
