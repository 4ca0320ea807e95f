"""``eskit init``: a config file and a plugin package that install and run as they are."""

from __future__ import annotations

import keyword
import re
from pathlib import Path

__all__ = ["ScaffoldError", "scaffold"]

_NAME = re.compile(r"^[a-z][a-z0-9_]{0,40}$")


class ScaffoldError(ValueError):
    """The name is not usable or the target files exist already."""


_PYPROJECT = """\
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "{dist}"
version = "0.1.0"
description = "An eskit plugin: {name}."
requires-python = ">=3.11"
dependencies = ["eskit"]

[tool.setuptools.packages.find]
include = ["{pkg}*"]

[project.entry-points."eskit.plugins"]
{name} = "{pkg}.plugin:plugin"
"""

_INIT = '''\
"""The {name} plugin for eskit."""
'''

_DOMAIN = '''\
"""The {name} domain: a counter per stream, as a decider (pure functions, no I/O).

Replace it with your own commands, events and rules; keep ``decide`` and ``evolve`` pure.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from engine import Decider, DomainError, EventRegistry

#: Counters stop here: a rule for ``decide`` to enforce.
LIMIT = 1000


@attrs.frozen
class Counter:
    """The state of one counter."""

    value: int = 0


@attrs.frozen
class Increment:
    """Add ``by`` to the counter."""

    by: int = attrs.field(default=1, validator=attrs.validators.gt(0))


@attrs.frozen
class Reset:
    """Set the counter back to zero."""


@attrs.frozen
class Incremented:
    """The counter went up."""

    by: int


@attrs.frozen
class WasReset:
    """The counter went back to zero."""


def decide(state: Counter, command: Increment | Reset) -> Sequence[Incremented | WasReset]:
    """What a command means for a counter."""
    match command:
        case Increment(by=by):
            if state.value + by > LIMIT:
                raise DomainError(f"a counter stops at {{LIMIT}}")
            return [Incremented(by)]
        case Reset():
            return [WasReset()] if state.value else []
    raise TypeError(f"not a {name} command: {{command!r}}")


def evolve(state: Counter, event: Incremented | WasReset) -> Counter:
    """Apply one event to a counter."""
    match event:
        case Incremented(by=by):
            return Counter(state.value + by)
        case WasReset():
            return Counter()
    return state


decider: Decider[Counter, Increment | Reset, Incremented | WasReset] = Decider(
    initial_state=Counter,
    decide=decide,
    evolve=evolve,
    command_types=(Increment, Reset),
    event_types=(Incremented, WasReset),
)


def registry() -> EventRegistry:
    """The event types under stable names (never rename a stored type without an upcaster)."""
    events = EventRegistry()
    events.register(Incremented, name="{name}.Incremented")
    events.register(WasReset, name="{name}.WasReset")
    return events
'''

_PLUGIN = '''\
"""The {name} plugin: its commands, a read model and its query."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from engine import (
    CommandBinding,
    Event,
    NotFoundError,
    Plugin,
    ProjectionContext,
    ProjectionDefinition,
    ProjectionSetup,
)
from {pkg}.domain import Incremented, WasReset, decider, registry


def totals(context: ProjectionContext) -> ProjectionSetup:
    """Each counter's value, kept in memory and rebuilt from the log at start."""
    values: dict[str, int] = {{}}

    async def handle(event: Event[Any]) -> None:
        match event.data:
            case Incremented(by=by):
                values[event.stream_id] = values.get(event.stream_id, 0) + by
            case WasReset():
                values[event.stream_id] = 0

    async def value(params: Mapping[str, str]) -> dict[str, Any]:
        counter = params.get("counter", "")
        if counter not in values:
            raise NotFoundError(f"no counter {{counter!r}}")
        return {{"counter": counter, "value": values[counter]}}

    return ProjectionSetup(handler=handle, queries={{"value": value}})


plugin = Plugin(
    name="{name}",
    description="Counters (scaffolded by eskit init).",
    events=registry(),
    commands=[CommandBinding(decider=decider)],
    projections=[ProjectionDefinition(name="totals", setup=totals)],
)
'''

_TESTS = '''\
"""Specifications of the {name} decider, and its read model."""

from __future__ import annotations

from engine.testing import DeciderSpec, as_events
from {pkg}.domain import LIMIT, Counter, Increment, Incremented, Reset, WasReset, decider
from {pkg}.plugin import totals

spec = DeciderSpec(decider)


def test_increment() -> None:
    """A counter goes up by what is asked."""
    spec.given(Incremented(2)).when(Increment(3)).then_expect(Incremented(3))


def test_limit() -> None:
    """A counter never passes its limit."""
    spec.given(Incremented(LIMIT)).when(Increment(1)).then_error("stops at")


def test_reset_only_when_needed() -> None:
    """Resetting a zero counter decides nothing."""
    spec.given(Incremented(1)).when(Reset()).then_expect(WasReset())
    spec.given().when(Reset()).then_expect()
    spec.given(Incremented(4), WasReset(), Incremented(1)).then_state(Counter(1))


async def test_totals_read_model() -> None:
    """The read model answers each counter's value."""
    setup = totals(None)  # type: ignore[arg-type]  # this read model needs no context
    for event in as_events([Incremented(2), Incremented(5), WasReset(), Incremented(1)]):
        await setup.handler(event)
    value = await setup.queries["value"]({{"counter": "spec-stream"}})
    assert value == {{"counter": "spec-stream", "value": 1}}
'''

_CONFIG = """\
# eskit configuration (every key has a default; see `eskit check-config`).
# Values can also come from the environment: ESKIT_<SECTION>__<KEY>, e.g. ESKIT_HTTP__PORT.

[engine]
data_dir = "eskit-data"

[store]
backend = "sqlite"            # memory | sqlite | postgres | nats

[http]
host = "127.0.0.1"
port = 8080

[plugins]
enabled = ["{name}"]          # the plugins that run (omit the key: every installed one)
paths = ["{name}"]            # run the plugin from its folder without installing it
modules = ["{pkg}.plugin:plugin"]

# Settings for the plugin, once plugin.py exposes a factory with a `settings`
# parameter instead of a ready-made Plugin (see docs/deployment.md, "Plugin settings"):
# [plugins.settings.{name}]
# limit = 1000
"""

_PYTEST = """\
[pytest]
trio_mode = true
pythonpath = .
"""


#: What pip accepts as a distribution name (PEP 508).
_DISTRIBUTION = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,98}[A-Za-z0-9])?$")
#: Import names that would shadow the engine or the test runner.
_TAKEN = {"engine", "tests", "test"}


def scaffold(
    name: str,
    directory: Path,
    *,
    package: str | None = None,
    distribution: str | None = None,
) -> list[Path]:
    """Write ``eskit.toml`` and a plugin project ``name/`` into ``directory``.

    Args:
        name: The plugin's name (in URLs, ``[plugins] enabled`` and its event type names).
        directory: Where to write.
        package: The import package (default: ``name``, or ``name_plugin`` where ``name``
            would shadow ``engine`` or ``tests``).
        distribution: The name pip installs it as (default: ``name`` with ``-`` for ``_``).

    Returns:
        The files written.

    Raises:
        ScaffoldError: A name is not usable, or a file exists already.
    """
    if not _NAME.match(name) or keyword.iskeyword(name):
        raise ScaffoldError(
            f"plugin name {name!r} must be a lowercase identifier (letters, digits, '_')"
        )
    if package is None:
        package = f"{name}_plugin" if name in _TAKEN else name
    elif not _NAME.match(package) or keyword.iskeyword(package) or package in _TAKEN:
        raise ScaffoldError(
            f"package name {package!r} must be a lowercase identifier (letters, digits, "
            f"'_') other than {', '.join(sorted(_TAKEN))}"
        )
    if distribution is None:
        distribution = name.replace("_", "-")
    elif not _DISTRIBUTION.match(distribution):
        raise ScaffoldError(
            f"distribution name {distribution!r} must be letters, digits, '.', '_' or '-', "
            "starting and ending with a letter or digit"
        )
    values = {"name": name, "pkg": package, "dist": distribution}
    root = directory / name
    files = {
        directory / "eskit.toml": _CONFIG,
        root / "pyproject.toml": _PYPROJECT,
        root / "pytest.ini": _PYTEST,
        root / package / "__init__.py": _INIT,
        root / package / "domain.py": _DOMAIN,
        root / package / "plugin.py": _PLUGIN,
        root / "tests" / f"test_{name}.py": _TESTS,
    }
    existing = [str(path) for path in files if path.exists()]
    if existing:
        raise ScaffoldError(f"will not overwrite {', '.join(existing)}")
    for path, template in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(template.format(**values), encoding="utf-8")
    return list(files)
