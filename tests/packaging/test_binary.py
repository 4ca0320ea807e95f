"""The single binary as a user runs it: ``--version``, ``plugins``, and a daemon on SQLite, on
PostgreSQL and on an external nats-server that takes commands over HTTP, answers a
projection query and stops on SIGTERM with exit code 0.

Every run also loads a plugin from a folder named in the config (with its own entry-point
metadata, as ``pip install --target`` leaves it): the probe plugin reports from inside the
binary that it is frozen, which psycopg implementation it got, and that the bundled
``nats-server`` runs.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

from engine import __version__
from tests.conftest import NatsTarget, PgTarget
from tests.daemon.test_daemon_process import stop_daemon
from tests.daemon.test_engine import http

pytestmark = pytest.mark.binary

START_TIMEOUT = 60
STDLIB_MODULES = Path(__file__).resolve().parents[2] / "packaging" / "stdlib_modules.py"

PROBE_PLUGIN = '''\
"""A plugin from a folder: what the binary carries, seen from inside it."""

import datetime
import importlib
import sys
import zoneinfo
from collections.abc import Mapping
from typing import Any

import psycopg.pq
import trio

from engine import EventRegistry, Plugin
from engine.frozen import is_frozen, nats_server_binary

STDLIB = {stdlib!r}


async def stdlib(params: Mapping[str, str]) -> dict[str, Any]:
    failed = {{}}
    for name in STDLIB:
        try:
            importlib.import_module(name)
        except Exception as exc:
            failed[name] = repr(exc)
    zoneinfo.reset_tzpath(to=[])  # the tzdata package only, not the host's files
    paris = zoneinfo.ZoneInfo("Europe/Paris")
    offset = datetime.datetime(2026, 1, 15, tzinfo=paris).utcoffset()
    return {{
        "imported": len(STDLIB) - len(failed),
        "failed": failed,
        "paris_winter_offset": offset.total_seconds(),
    }}


async def about(params: Mapping[str, str]) -> dict[str, Any]:
    nats = nats_server_binary()
    version = await trio.run_process([str(nats), "--version"], capture_stdout=True)
    return {{
        "frozen": is_frozen(),
        "bundle": getattr(sys, "_MEIPASS", ""),
        "nats_server": str(nats),
        "nats_version": version.stdout.decode().strip(),
        "psycopg_impl": psycopg.pq.__impl__,
    }}


plugin = Plugin(
    name="probe", events=EventRegistry(), queries={{"about": about, "stdlib": stdlib}}
)
'''

#: A plain package folder (no dist-info) exposing ``PLUGIN``.
PLAIN_PLUGIN = """\
from engine import EventRegistry, Plugin

PLUGIN = Plugin(name="plainpkg", events=EventRegistry(), description="a plain package folder")
"""


@functools.cache
def importable_stdlib() -> list[str]:
    """The standard modules the binary promises (``packaging/stdlib_modules.py``) that
    import on this platform in the build virtualenv (each tried in a child process)."""
    probe = (
        "import importlib, runpy, warnings\n"
        "warnings.simplefilter('ignore')\n"
        f"names = runpy.run_path({str(STDLIB_MODULES)!r})['stdlib_modules']()\n"
        "for name in names:\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception:\n"
        "        continue\n"
        "    print(name)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=300, check=True
    )
    return result.stdout.split()


def write_probe_plugin(folder: Path) -> Path:
    """A plugin folder holding the probe package and its dist-info (with its entry point)."""
    (folder / "eskit_probe").mkdir(parents=True)
    (folder / "eskit_probe" / "__init__.py").write_text(
        PROBE_PLUGIN.format(stdlib=importable_stdlib())
    )
    (folder / "plainpkg").mkdir()
    (folder / "plainpkg" / "__init__.py").write_text(PLAIN_PLUGIN)
    info = folder / "eskit_probe-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: eskit-probe\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text("[eskit.plugins]\nprobe = eskit_probe:plugin\n")
    return folder


def write_config(tmp_path: Path, store: str) -> Path:
    """A config file: data in ``tmp_path``, HTTP on a free port, the probe plugin folder."""
    plugins = write_probe_plugin(tmp_path / "plugins")
    config = tmp_path / "eskit.toml"
    config.write_text(
        f"""
[engine]
node_id = "binary-smoke"
data_dir = "{tmp_path / "data"}"
grace_period = 5

[http]
port = 0

[plugins]
paths = ["{plugins}"]

{store}
"""
    )
    return config


def clean_env() -> dict[str, str]:
    """The environment without ``ESKIT_*`` overrides, so only the config file counts."""
    return {k: v for k, v in os.environ.items() if not k.startswith("ESKIT_")}


async def start_binary(binary: Path, config: Path) -> tuple[trio.Process, str]:
    """Start ``eskit run -c config`` and wait for its "ready" line; return it and its URL."""
    proc = await trio.lowlevel.open_process(
        [str(binary), "run", "-c", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=clean_env(),
    )
    assert proc.stdout is not None
    output = b""
    try:
        with trio.fail_after(START_TIMEOUT):
            while b"ready (stop" not in output:
                chunk = await proc.stdout.receive_some(4096)
                if not chunk:
                    raise AssertionError(f"the binary exited early:\n{output.decode()}")
                output += chunk
    except BaseException:
        with trio.CancelScope(shield=True):
            await stop_daemon(proc)
        raise
    url = next(
        line.split("http:", 1)[1].strip()
        for line in output.decode().splitlines()
        if line.strip().startswith("http:")
    )
    return proc, url


async def exercise(url: str, account: str) -> dict[str, Any]:
    """Three commands over HTTP, the projected balance read back; returns the probe's report."""
    position = 0
    for command, data in [
        ("OpenAccount", {"initial_balance": 100}),
        ("Deposit", {"amount": 50}),
        ("Withdraw", {"amount": 30}),
    ]:
        status, body = await http(
            f"{url}/commands/bank/{command}",
            method="POST",
            body={"stream_id": account, "data": data},
        )
        assert status == 200, body
        position = body["events"][-1]["position"]
    status, body = await http(
        f"{url}/queries/bank/balance?account={account}&wait_for_position={position}"
    )
    assert (status, body) == (200, {"account": account, "balance": 120})
    status, probe = await http(f"{url}/queries/probe/about")
    assert status == 200, probe
    return dict(probe)


def check_probe(probe: dict[str, Any]) -> None:
    """The probe ran inside the binary, on psycopg's binary libpq, with the bundled nats-server."""
    assert probe["frozen"] is True
    assert probe["psycopg_impl"] == "binary"
    assert probe["nats_server"] == str(Path(probe["bundle"]) / "nats-server")
    assert probe["nats_version"].startswith("nats-server: v")


async def run_smoke(binary: Path, config: Path, *, stdlib: bool = False) -> None:
    """Start, exercise, SIGTERM: the daemon exits 0 after saying it stopped (and with
    ``stdlib``, the probe imports the standard library from inside the binary)."""
    proc, url = await start_binary(binary, config)
    try:
        probe = await exercise(url, "acc-1")
        if stdlib:
            status, report = await http(f"{url}/queries/probe/stdlib")
            assert status == 200, report
            assert report["failed"] == {}
            assert report["imported"] == len(importable_stdlib())
            assert report["paris_winter_offset"] == 3600.0
    finally:
        code, output = await stop_daemon(proc)
    assert code == 0, output
    assert "received SIGTERM" in output
    assert "stopped" in output
    check_probe(probe)


def test_version(eskit_binary: Path) -> None:
    """``eskit --version`` prints the engine's version."""
    result = subprocess.run(
        [str(eskit_binary), "--version"], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == f"eskit {__version__}"


def test_plugins_bundled_and_from_a_folder(eskit_binary: Path, tmp_path: Path) -> None:
    """``eskit plugins`` lists the bundled examples, and a folder plugin named in the config."""
    bundled = subprocess.run(
        [str(eskit_binary), "plugins"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env=clean_env(),
        cwd=tmp_path,
    )
    assert "eskit-bank" in bundled.stdout
    assert "eskit-orders" in bundled.stdout
    assert "commands: Deposit, OpenAccount, Withdraw" in bundled.stdout
    assert (
        "commands: AddItem, CancelOrder, CreateOrder, ReserveStock, Restock, ShipOrder, SubmitOrder"
        in bundled.stdout
    )

    config = write_config(tmp_path, "")
    with_folder = subprocess.run(
        [str(eskit_binary), "plugins", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env=clean_env(),
    )
    assert "will run: bank, orders, probe" in with_folder.stdout
    assert "eskit-probe" in with_folder.stdout


def test_plain_package_folder_and_enabled_none(eskit_binary: Path, tmp_path: Path) -> None:
    """A plain package folder under ``paths`` runs when enabled; ``enabled = []`` runs none
    (not even the bundled examples)."""
    folder = write_probe_plugin(tmp_path / "plugins")
    config = tmp_path / "eskit.toml"
    for enabled, runs in (('["plainpkg"]', "plainpkg"), ("[]", "nothing")):
        config.write_text(f'[plugins]\nenabled = {enabled}\npaths = ["{folder}"]\n')
        result = subprocess.run(
            [str(eskit_binary), "plugins", "-c", str(config)],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
            env=clean_env(),
        )
        assert f"will run: {runs}" in result.stdout, result.stdout


async def test_daemon_on_sqlite(eskit_binary: Path, tmp_path: Path) -> None:
    """Tier 1: the binary on a SQLite file takes commands and answers the balance query; a
    plugin imports the whole standard library and tzdata's time zones from inside it."""
    config = write_config(tmp_path, '[store]\nbackend = "sqlite"\n')
    await run_smoke(eskit_binary, config, stdlib=True)
    assert (tmp_path / "data" / "events.db").is_file()


async def test_daemon_on_postgres(eskit_binary: Path, tmp_path: Path, pg: PgTarget) -> None:
    """Tier 2: the binary on the test PostgreSQL does the same through psycopg's binary libpq."""
    config = write_config(
        tmp_path, f'[store]\nbackend = "postgres"\ndsn = "{pg.dsn}"\nschema = "{pg.schema}"\n'
    )
    await run_smoke(eskit_binary, config)


async def test_daemon_on_postgres_with_embedded_nats(
    eskit_binary: Path, tmp_path: Path, pg: PgTarget
) -> None:
    """Tier 2 as one node runs it: PostgreSQL events, and the NATS bus and locks on the
    nats-server the binary carries and starts itself."""
    config = write_config(
        tmp_path,
        f'[store]\nbackend = "postgres"\ndsn = "{pg.dsn}"\nschema = "{pg.schema}"\n\n'
        '[bus]\nbackend = "nats"\n\n[locks]\nbackend = "nats"\n\n'
        "[nats]\nembedded = true\nembedded_port = 0\n",
    )
    await run_smoke(eskit_binary, config)
    assert (tmp_path / "data" / "nats").is_dir()


async def test_daemon_on_nats(eskit_binary: Path, tmp_path: Path, nats: NatsTarget) -> None:
    """Tier 3 on the test nats-server: the same through nats-py."""
    config = write_config(
        tmp_path,
        f'[store]\nbackend = "nats"\nnamespace = "{nats.namespace}"\n\n[nats]\nurl = "{nats.url}"\n',
    )
    await run_smoke(eskit_binary, config)
