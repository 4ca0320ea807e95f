"""The README holds: its quick-start commands run as written against a started engine and
print what it says, its Python examples run, and what it names (files, CLI commands,
routes, the licence) exists."""

from __future__ import annotations

import contextlib
import io
import re
import subprocess
import tomllib
from pathlib import Path

import pytest

from engine.__main__ import build_parser
from engine.daemon.openapi import openapi_document
from tests.client.conftest import run_engine, write_config
from tests.servers import free_port

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
#: The port the README's commands use; the test's engine listens elsewhere.
README_URL = "http://127.0.0.1:8080"


def blocks(language: str, text: str = README) -> list[tuple[int, str]]:
    """``(offset, body)`` of each fenced block of ``language``."""
    return [(m.start(), m.group(2)) for m in FENCE.finditer(text) if m.group(1) == language]


def curl_commands() -> list[tuple[str, str]]:
    """Each ``curl`` command of the README's shell blocks (continuation lines joined) with
    the ``# ...`` line after it: what it prints, ``...`` standing for anything."""
    found: list[tuple[str, str]] = []
    for _, body in blocks("sh"):
        lines = body.replace("\\\n", " ").splitlines()
        for n, line in enumerate(lines):
            if line.startswith("curl "):
                expected = lines[n + 1] if n + 1 < len(lines) else ""
                assert expected.startswith("# "), f"no expected output after: {line}"
                found.append((line, expected[2:]))
    return found


def pattern(expected: str) -> re.Pattern[str]:
    """The expected output as a regex: literal text, ``...`` matching anything."""
    return re.compile(".*".join(re.escape(part) for part in expected.split("...")), re.DOTALL)


def test_the_quick_start_runs_as_written(tmp_path: Path) -> None:
    """Each curl line of the README, run by a shell against a fresh engine, prints what the README shows."""
    commands = curl_commands()
    assert len(commands) >= 3
    port = free_port()
    config = write_config(tmp_path / "eskit.toml", tmp_path / "data", port)
    with run_engine(config, tmp_path / "engine.log"):
        for command, expected in commands:
            line = command.replace(README_URL, f"http://127.0.0.1:{port}")
            assert line != command, f"not against {README_URL}: {command}"
            printed = subprocess.run(
                ["bash", "-c", line], capture_output=True, text=True, timeout=60, check=True
            ).stdout
            assert pattern(expected).fullmatch(printed.strip()), (command, printed)


def run_examples() -> str:
    """Run the README's Python blocks marked ``<!-- readme-test: run -->`` in order, in one
    namespace; returns what they printed."""
    marked = [body for offset, body in blocks("python") if README[:offset].rstrip().endswith("-->")]
    assert len(marked) >= 3
    namespace: dict[str, object] = {"__name__": "readme"}
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        for body in marked:
            exec(compile(body, "README.md", "exec"), namespace)
    return printed.getvalue()


def test_the_python_examples_run_as_written() -> None:
    """The bank example, its specs and the "Run it" block run and print what their comments say."""
    printed = run_examples().splitlines()
    said = [
        m.group(1).split(":")[0]
        for _, body in blocks("python")
        for m in re.finditer(r"^\s*print\(.*\)\s+# (.+)$", body, re.MULTILINE)
    ]
    assert said == ["150", "2"]
    assert printed == said


def test_the_bank_example_rejects_an_unknown_command() -> None:
    """The README's decide raises on a command it does not know instead of returning None."""
    namespace: dict[str, object] = {"__name__": "readme"}
    marked = [body for offset, body in blocks("python") if README[:offset].rstrip().endswith("-->")]
    exec(compile(marked[0], "README.md", "exec"), namespace)
    decide = namespace["decide"]
    state = namespace["BankAccount"]()  # type: ignore[operator]
    with pytest.raises(TypeError, match="not a bank command"):
        decide(state, object())  # type: ignore[operator]


def test_every_cli_command_is_in_the_readme() -> None:
    """Every ``eskit`` subcommand is named in the README."""
    parser = build_parser()
    commands = next(
        action for action in parser._actions if action.dest == "command"
    ).choices  # argparse keeps the subcommands there
    assert commands is not None
    missing = [name for name in commands if f"eskit {name}" not in README]
    assert missing == []


def test_every_route_is_in_the_readme() -> None:
    """Every route of the engine (as its OpenAPI document lists them) is in the README."""
    document = openapi_document([], {}, node_id="n", version="0")
    routes = [
        f"{method.upper()} {path}"
        for path, operations in document["paths"].items()
        for method in operations
    ]
    assert len(routes) > 10
    missing = [route for route in routes if route not in README]
    assert missing == []
    assert "POST /commands/{plugin}/{command}" in README
    assert "GET /queries/{plugin}/{query}" in README


def test_the_files_it_names_exist() -> None:
    """Every repository path the README and docs/ name in backticks exists (no design notes
    kept elsewhere)."""
    texts = {"README.md": README} | {
        f"docs/{p.name}": p.read_text() for p in (ROOT / "docs").glob("*.md")
    }
    tops = ("engine/", "plugins/", "tests/", "docs/", "packaging/", "benchmarks/")
    missing = []
    for name, text in texts.items():
        for path in re.findall(r"`([A-Za-z0-9_./-]+)`", text):
            if path.startswith(tops) and "*" not in path and not (ROOT / path).exists():
                missing.append(f"{name}: {path}")
    assert missing == []
    assert "DESIGN.md" not in README


def test_the_licence_is_there_and_is_the_one_declared() -> None:
    """LICENSE exists and is the MIT licence that pyproject.toml declares."""
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["license"]
    assert declared == {"text": "MIT"}
    assert (ROOT / "LICENSE").read_text().startswith("MIT License\n")


def test_install_and_binary_requirements_are_said_up_front() -> None:
    """The README says how to pip install eskit, and the binary's glibc floor in its section."""
    assert "python -m pip install /path/to/eskit" in README
    binary = README.split("## Single binary", 1)[1]
    assert "glibc 2.36" in binary[:400]
