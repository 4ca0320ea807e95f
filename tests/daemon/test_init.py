"""``eskit init``: the scaffold installs, runs in the engine, and its specs pass."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import trio

from engine.daemon.scaffold import ScaffoldError, scaffold
from tests.daemon.test_daemon_process import start_daemon, stop_daemon
from tests.daemon.test_engine import http
from tests.servers import free_port


def eskit(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ESKIT_")}
    return subprocess.run(
        [sys.executable, "-m", "engine", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def test_scaffold_refuses_bad_names_and_overwrites(tmp_path: Path) -> None:
    """Names must be lowercase identifiers; existing files are never overwritten."""
    for bad in ("Shop", "my-shop", "class", "", "9lives"):
        with pytest.raises(ScaffoldError):
            scaffold(bad, tmp_path)
    scaffold("shop", tmp_path)
    result = eskit("init", "shop", cwd=tmp_path)
    assert result.returncode == 2
    assert "will not overwrite" in result.stderr


def test_specs_of_the_scaffold_pass(tmp_path: Path) -> None:
    """The generated plugin's own specs pass as generated."""
    assert eskit("init", "shop", cwd=tmp_path).returncode == 0
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "shop"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 passed" in result.stdout


async def test_scaffold_installs_and_runs(tmp_path: Path) -> None:
    """The generated package installs with pip and the engine runs it from its entry point."""
    assert eskit("init", "shop", cwd=tmp_path).returncode == 0
    site = tmp_path / "site"
    with trio.fail_after(300):
        install = await trio.run_process(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "--quiet",
                "--no-deps",
                "--target",
                str(site),
                str(tmp_path / "shop"),
            ],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    assert install.returncode == 0, install.stderr.decode()
    config = tmp_path / "installed.toml"
    config.write_text(
        f"""
[engine]
data_dir = "{tmp_path / "data"}"

[http]
port = {free_port()}

[plugins]
enabled = ["shop"]
paths = ["{site}"]
"""
    )
    proc, url = await start_daemon(config)
    try:
        status, body = await http(
            f"{url}/commands/shop/Increment",
            method="POST",
            body={"stream_id": "visits", "data": {"by": 3}},
        )
        assert status == 200, body
        position = body["events"][0]["position"]
        status, body = await http(
            f"{url}/queries/shop/value?counter=visits&wait_for_position={position}"
        )
        assert (status, body) == (200, {"counter": "visits", "value": 3})
        status, body = await http(
            f"{url}/commands/shop/Increment",
            method="POST",
            body={"stream_id": "visits", "data": {"by": 5000}},
        )
        assert (status, body["error"]["code"]) == (422, "domain_rejected")
    finally:
        code, output = await stop_daemon(proc)
    assert code == 0, output


async def test_run_reads_the_eskit_toml_that_init_wrote(tmp_path: Path) -> None:
    """``eskit init shop`` then ``eskit run`` (no -c) runs with ./eskit.toml, says so, runs shop."""
    assert eskit("init", "shop", cwd=tmp_path).returncode == 0
    env = {k: v for k, v in os.environ.items() if not k.startswith("ESKIT_")}
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-m", "engine", "run"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**env, "ESKIT_LOG_LEVEL": "INFO", "ESKIT_HTTP__PORT": str(free_port())},
    )
    assert proc.stdout is not None
    output = b""
    try:
        with trio.fail_after(60):
            while b"ready (stop" not in output:
                chunk = await proc.stdout.receive_some(4096)
                if not chunk:
                    raise AssertionError(f"daemon exited early:\n{output.decode()}")
                output += chunk
    finally:
        code, rest = await stop_daemon(proc)
    text = output.decode() + rest
    assert code == 0, text
    used = str(tmp_path / "eskit.toml")
    assert f"config:  {used}" in text
    assert f"eskit.engine: config: {used}" in text
    assert "plugins: shop" in text
    assert (tmp_path / "eskit-data" / "events.db").exists()


def test_init_names_the_package_and_distribution_apart(tmp_path: Path) -> None:
    """``--package`` and ``--distribution`` name the import package and the pip name; the
    plugin keeps its own name, runs from ./eskit.toml, and its specs pass."""
    result = eskit(
        "init", "shop", "--package", "shop_core", "--distribution", "acme-shop", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    project = tomllib.loads((tmp_path / "shop" / "pyproject.toml").read_text())
    assert project["project"]["name"] == "acme-shop"
    assert project["project"]["entry-points"]["eskit.plugins"] == {
        "shop": "shop_core.plugin:plugin"
    }
    assert (tmp_path / "shop" / "shop_core" / "plugin.py").is_file()
    plugins = eskit("plugins", cwd=tmp_path)
    assert plugins.returncode == 0, plugins.stderr
    assert "will run: shop" in plugins.stdout
    shown = [line.split()[:3] for line in plugins.stdout.splitlines()]
    assert ["shop", "runs", "module"] in shown  # the module, under its plugin's name
    assert ["shop_core", "off", "folder"] in shown  # the same code as a folder: not twice
    specs = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "shop"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert "4 passed" in specs.stdout, specs.stdout + specs.stderr
    for bad in (["--package", "engine"], ["--package", "Shop"], ["--distribution", "-x-"]):
        refused = eskit("init", "other", *bad, cwd=tmp_path)
        assert refused.returncode == 2
        assert "name" in refused.stderr
