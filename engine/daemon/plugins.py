"""Finding and loading plugins: the ``eskit.plugins`` entry points and ``module:attribute`` names.

Nothing is loaded at ``import engine``: the engine calls :func:`load_plugins` when it
starts. Every failure becomes a :class:`~engine.errors.PluginError` that names the plugin
and the distribution (or module) it came from.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import attrs

from engine.errors import PluginError
from engine.plugin import Plugin

__all__ = ["ENTRY_POINT_GROUP", "PluginSource", "available_plugins", "load_plugins"]

ENTRY_POINT_GROUP = "eskit.plugins"


@attrs.frozen
class PluginSource:
    """Where a plugin comes from (for ``eskit plugins`` and error messages)."""

    name: str
    target: str
    distribution: str


def _add_paths(paths: Iterable[str]) -> None:
    for path in paths:
        folder = str(Path(path).expanduser().resolve())
        if not Path(folder).is_dir():
            raise PluginError(f"plugin folder {path!r} does not exist")
        if folder not in sys.path:
            sys.path.insert(0, folder)


def available_plugins(paths: Sequence[str] = ()) -> list[PluginSource]:
    """The plugins published under ``eskit.plugins`` (after adding ``paths`` to ``sys.path``)."""
    _add_paths(paths)
    sources = []
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        distribution = entry.dist.name if entry.dist is not None else "(unknown distribution)"
        sources.append(PluginSource(entry.name, entry.value, distribution))
    return sorted(sources, key=lambda source: source.name)


def _resolve(target: str, origin: str) -> Plugin:
    module_name, _, attribute = target.partition(":")
    try:
        value: Any = importlib.import_module(module_name)
        for part in attribute.split(".") if attribute else ():
            value = getattr(value, part)
    except Exception as exc:
        raise PluginError(f"plugin {origin} ({target}) failed to load: {exc!r}") from exc
    if callable(value) and not isinstance(value, Plugin):
        try:
            value = value()
        except Exception as exc:
            raise PluginError(f"plugin {origin} ({target}) failed to build: {exc!r}") from exc
    if not isinstance(value, Plugin):
        raise PluginError(
            f"plugin {origin} ({target}) is a {type(value).__qualname__}, not an engine.Plugin"
        )
    return value


def load_plugins(
    enabled: Sequence[str] | None = None,
    *,
    paths: Sequence[str] = (),
    modules: Sequence[str] = (),
) -> list[Plugin]:
    """Load plugins from entry points and ``module:attribute`` names.

    Args:
        enabled: Names of the entry-point plugins to load (``None`` = all installed).
        paths: Folders to add to ``sys.path`` first (plugins that were not pip-installed,
            for example next to a frozen binary).
        modules: Extra plugins named as ``package.module:attribute``.

    Raises:
        PluginError: A named plugin is not installed, fails to import, is not a
            :class:`~engine.plugin.Plugin`, or two plugins share a name.
    """
    sources = {source.name: source for source in available_plugins(paths)}
    if enabled is not None:
        missing = [name for name in enabled if name not in sources]
        if missing:
            known = ", ".join(sorted(sources)) or "none"
            raise PluginError(f"plugin(s) {', '.join(missing)} not installed (installed: {known})")
        chosen = [sources[name] for name in enabled]
    else:
        chosen = list(sources.values())
    plugins = [
        _resolve(source.target, f"{source.name!r} from distribution {source.distribution!r}")
        for source in chosen
    ]
    plugins += [_resolve(target, repr(target)) for target in modules]
    names = [plugin.name for plugin in plugins]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise PluginError(f"two plugins are named {', '.join(duplicates)}")
    return plugins
