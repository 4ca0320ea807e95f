"""Which plugins run: ``enabled`` over every source, folders that shadow nothing, settings."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from engine.daemon.plugins import load_plugins, plan_plugins
from engine.errors import PluginError
from tests.daemon.test_daemon_process import start_daemon, stop_daemon
from tests.servers import free_port


def eskit(*args: str, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    """The ``eskit`` command in a child process (no ESKIT_* from the caller's environment)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ESKIT_")}
    return subprocess.run(
        [sys.executable, "-m", "engine", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env={**clean, **env},
        check=False,
    )


def package(folder: Path, name: str, body: str) -> Path:
    """A plain package folder ``folder/name`` (no dist-info) whose ``__init__.py`` is ``body``."""
    (folder / name).mkdir(parents=True)
    (folder / name / "__init__.py").write_text(textwrap.dedent(body))
    return folder


GREETER = """
    import attrs
    import cattrs

    from engine import EventRegistry, Plugin


    @attrs.frozen
    class Settings:
        greeting: str = "hello"
        times: int = 1


    def PLUGIN(settings):
        chosen = cattrs.structure(settings, Settings)
        return Plugin(
            name="{name}",
            events=EventRegistry(),
            description=" ".join([chosen.greeting] * chosen.times),
        )
"""


def test_enabled_chooses_among_modules_too(tmp_path: Path) -> None:
    """A module plugin runs when ``enabled`` names it, and not when it names others only."""
    folder = package(tmp_path, "mod_shop", GREETER.format(name="modshop"))
    modules = ["mod_shop:PLUGIN"]
    paths = [str(folder)]
    assert [p.name for p in load_plugins(["modshop"], paths=paths, modules=modules)] == ["modshop"]
    assert [p.name for p in load_plugins(["bank"], paths=paths, modules=modules)] == ["bank"]
    assert load_plugins([], paths=paths, modules=modules) == []
    assert {p.name for p in load_plugins(None, paths=paths, modules=modules)} == {
        "bank",
        "orders",
        "modshop",
    }


def test_a_package_folder_is_a_plugin_when_enabled(tmp_path: Path) -> None:
    """A package folder in ``paths`` (no dist-info) loads by its name; unnamed, it stays off."""
    folder = package(tmp_path, "ledger_pkg", GREETER.format(name="ledger_pkg"))
    loaded = load_plugins(["ledger_pkg"], paths=[str(folder)])
    assert [p.name for p in loaded] == ["ledger_pkg"]
    plan = {s.name: s for s in plan_plugins(None, paths=[str(folder)])}
    assert (plan["ledger_pkg"].kind, plan["ledger_pkg"].enabled) == ("folder", False)
    assert plan["bank"].enabled


def test_settings_reach_the_plugin_factory(tmp_path: Path) -> None:
    """``[plugins.settings.NAME]`` is handed to the factory, which structures it itself."""
    folder = package(tmp_path, "greeter_pkg", GREETER.format(name="greeter_pkg"))
    [plugin] = load_plugins(
        ["greeter_pkg"],
        paths=[str(folder)],
        settings={"greeter_pkg": {"greeting": "hi", "times": 2}},
    )
    assert plugin.description == "hi hi"
    [plugin] = load_plugins(["greeter_pkg"], paths=[str(folder)])
    assert plugin.description == "hello"
    with pytest.raises(PluginError, match="ready-made Plugin"):
        load_plugins(["bank"], settings={"bank": {"x": 1}})
    with pytest.raises(PluginError, match="ghost, which does not run"):
        load_plugins(["bank"], settings={"ghost": {"x": 1}})


def test_settings_in_the_config_file_reach_the_plugin(tmp_path: Path) -> None:
    """A TOML ``[plugins.settings.NAME]`` table shows in what ``eskit plugins`` loads."""
    folder = package(tmp_path / "plugins", "tomlgreeter", GREETER.format(name="tomlgreeter"))
    config = tmp_path / "eskit.toml"
    config.write_text(
        f'[plugins]\nenabled = ["tomlgreeter"]\npaths = ["{folder}"]\n\n'
        '[plugins.settings.tomlgreeter]\ngreeting = "ahoy"\ntimes = 3\n'
    )
    result = eskit("plugins", "-c", str(config))
    assert result.returncode == 0, result.stderr
    assert "tomlgreeter: ahoy ahoy ahoy" in result.stdout


def test_eskit_plugins_says_what_runs(tmp_path: Path) -> None:
    """``eskit plugins`` marks each plugin found as running or off and lists what will run."""
    config = tmp_path / "eskit.toml"
    config.write_text('[plugins]\nenabled = ["bank"]\n')
    result = eskit("plugins", "-c", str(config))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert any(line.split()[:2] == ["bank", "runs"] for line in lines), result.stdout
    assert any(line.split()[:2] == ["orders", "off"] for line in lines), result.stdout
    assert "will run: bank" in lines


def test_check_config_catches_a_misspelled_plugin(tmp_path: Path) -> None:
    """``check-config`` loads the enabled plugins as ``run`` does: a typo fails there."""
    config = tmp_path / "eskit.toml"
    config.write_text('[plugins]\nenabled = ["bnak"]\n')
    result = eskit("check-config", "-c", str(config))
    assert result.returncode == 2
    assert "bnak" in result.stderr
    assert "config ok" not in result.stdout
    config.write_text('[plugins]\nenabled = ["bank"]\n')
    result = eskit("check-config", "-c", str(config))
    assert result.returncode == 0, result.stderr
    assert "plugins bank" in result.stdout


async def test_a_plugin_folder_never_shadows_a_dependency(tmp_path: Path) -> None:
    """A ``paths`` folder holding a package named like a dependency (``sqlite_utils``) is
    not imported in its place: the engine starts with the real one."""
    marker = tmp_path / "shadow-ran"
    folder = package(
        tmp_path / "plugins",
        "sqlite_utils",
        f"""
        open({str(marker)!r}, "w").close()
        raise SystemExit("the shadowing sqlite_utils ran")
        """,
    )
    config = tmp_path / "eskit.toml"
    config.write_text(
        f'[engine]\ndata_dir = "{tmp_path / "data"}"\n[http]\nport = {free_port()}\n'
        f'[plugins]\nenabled = ["bank"]\npaths = ["{folder}"]\n'
    )
    proc, _ = await start_daemon(config)
    code, output = await stop_daemon(proc)
    assert code == 0, output
    assert not marker.exists()
