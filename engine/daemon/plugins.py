"""Finding and loading plugins: entry points, ``module:attribute`` names and package folders.

Nothing is loaded at ``import engine``: the engine calls :func:`load_plugins` when it
starts. A plugin comes from one of three sources:

* an **entry point** of the ``eskit.plugins`` group (a pip-installed distribution, or a
  distribution's ``*.dist-info`` inside a ``[plugins] paths`` folder), named by the
  entry point;
* a **module** named in ``[plugins] modules`` as ``package.module:attribute``, named by
  the :class:`~engine.plugin.Plugin` it yields;
* a **package folder** inside a ``[plugins] paths`` folder (``paths/shop/__init__.py``,
  no ``dist-info`` needed) that exposes ``plugin`` or ``PLUGIN`` (in the package or its
  ``plugin`` module), named by the folder; it is loaded when ``enabled`` names it.

``enabled`` chooses by name among all three (``None``: every entry point and module);
nothing else is imported. The ``paths`` folders are appended to ``sys.path``, so a
folder there never shadows an installed package (the engine's own dependencies
included). A plugin attribute that is a factory is called; a factory with a
``settings`` parameter gets the plugin's ``[plugins.settings.NAME]`` table (a dict,
empty when the config has none) to structure with its own classes.

Every failure becomes a :class:`~engine.errors.PluginError` that names the plugin and
the distribution, module or folder it came from.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import attrs

from engine.codec import EventRegistry
from engine.errors import DuplicateEventTypeError, PluginError
from engine.plugin import Plugin

__all__ = [
    "ENTRY_POINT_GROUP",
    "PluginSource",
    "available_plugins",
    "load_plugin_sources",
    "load_plugins",
    "merged_registry",
    "plan_plugins",
]

ENTRY_POINT_GROUP = "eskit.plugins"

#: The attributes a package folder's plugin may have (first found wins).
FOLDER_ATTRIBUTES = ("plugin", "PLUGIN")

SourceKind = Literal["entry point", "module", "folder"]


@attrs.frozen
class PluginSource:
    """Where a plugin comes from, and whether it runs (for ``eskit plugins`` and errors).

    Attributes:
        name: The plugin's name (a module's name is known once it is loaded).
        target: ``module:attribute`` (or the folder, for a package folder).
        distribution: The distribution of an entry point, or what else provides it.
        kind: ``entry point``, ``module`` or ``folder``.
        enabled: Whether ``[plugins] enabled`` lets it run.
    """

    name: str
    target: str
    distribution: str
    kind: SourceKind = "entry point"
    enabled: bool = True


def _add_paths(paths: Sequence[str]) -> list[Path]:
    """Append the plugin folders to ``sys.path`` (after everything installed)."""
    folders = []
    for path in paths:
        folder = Path(path).expanduser().resolve()
        if not folder.is_dir():
            raise PluginError(f"plugin folder {path!r} ([plugins] paths) is not a folder")
        if str(folder) not in sys.path:
            sys.path.append(str(folder))
        folders.append(folder)
    return folders


def _entry_points() -> list[PluginSource]:
    sources: dict[str, PluginSource] = {}
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        distribution = entry.dist.name if entry.dist is not None else "(unknown distribution)"
        # The first of two same-named entry points is the one on sys.path first.
        sources.setdefault(entry.name, PluginSource(entry.name, entry.value, distribution))
    return list(sources.values())


def _package_folders(folders: Sequence[Path]) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for folder in folders:
        for child in sorted(folder.iterdir()):
            if child.name.isidentifier() and (child / "__init__.py").is_file():
                found.setdefault(child.name, child)
    return found


def available_plugins(paths: Sequence[str] = ()) -> list[PluginSource]:
    """The plugins published under ``eskit.plugins`` (after adding ``paths`` to ``sys.path``)."""
    _add_paths(paths)
    return sorted(_entry_points(), key=lambda source: source.name)


def _call_factory(value: Any, settings: Mapping[str, Any] | None, origin: str) -> Any:
    try:
        takes_settings = "settings" in inspect.signature(value).parameters
    except (TypeError, ValueError):  # no signature to read (a builtin): call it bare
        takes_settings = False
    if settings is not None and not takes_settings:
        raise PluginError(
            f"plugin {origin} has settings in the config ([plugins.settings]) but takes "
            "none: expose a factory that accepts them"
        )
    try:
        return value(settings=dict(settings or {})) if takes_settings else value()
    except PluginError:
        raise
    except Exception as exc:
        raise PluginError(f"plugin {origin} failed to build: {exc!r}") from exc


def _as_plugin(value: Any, settings: Mapping[str, Any] | None, origin: str) -> Plugin:
    if callable(value) and not isinstance(value, Plugin):
        value = _call_factory(value, settings, origin)
    elif settings is not None:
        raise PluginError(
            f"plugin {origin} has settings in the config ([plugins.settings]) but is a "
            "ready-made Plugin: expose a factory that accepts them"
        )
    if not isinstance(value, Plugin):
        raise PluginError(f"plugin {origin} is a {type(value).__qualname__}, not an engine.Plugin")
    return value


def _import(target: str, origin: str) -> Any:
    module_name, _, attribute = target.partition(":")
    try:
        value: Any = importlib.import_module(module_name)
        for part in attribute.split(".") if attribute else ():
            value = getattr(value, part)
    except Exception as exc:
        raise PluginError(f"plugin {origin} ({target}) failed to load: {exc!r}") from exc
    return value


def _from_folder(name: str, folder: Path, settings: Mapping[str, Any] | None) -> Plugin:
    origin = f"{name!r} from folder {str(folder)!r}"
    module = _import(name, origin)
    where = Path(getattr(module, "__file__", "") or "").resolve().parent
    if where != folder.resolve():
        raise PluginError(
            f"plugin {origin}: an installed module {name!r} ({where}) comes first on the "
            "path; rename the folder or install the plugin"
        )
    candidates = [module]
    try:
        candidates.append(importlib.import_module(f"{name}.plugin"))
    except ModuleNotFoundError as exc:
        if exc.name != f"{name}.plugin":
            raise PluginError(f"plugin {origin} failed to load: {exc!r}") from exc
    except Exception as exc:
        raise PluginError(f"plugin {origin} failed to load: {exc!r}") from exc
    for candidate in candidates:
        for attribute in FOLDER_ATTRIBUTES:
            if hasattr(candidate, attribute):
                return _as_plugin(getattr(candidate, attribute), settings, origin)
    raise PluginError(
        f"plugin {origin} exposes no plugin: give the package (or its plugin module) a "
        "`plugin` or `PLUGIN` attribute"
    )


def plan_plugins(
    enabled: Sequence[str] | None = None,
    *,
    paths: Sequence[str] = (),
    modules: Sequence[str] = (),
) -> list[PluginSource]:
    """What :func:`load_plugins` would load, without importing any plugin: every source
    found, each marked enabled or not (modules are named by their target until loaded).

    Raises:
        PluginError: A ``paths`` entry is not a folder.
    """
    folders = _add_paths(paths)
    wanted = None if enabled is None else set(enabled)
    sources = [
        attrs.evolve(source, enabled=wanted is None or source.name in wanted)
        for source in _entry_points()
    ]
    known = {source.name for source in sources}
    for name, folder in _package_folders(folders).items():
        if name not in known:
            sources.append(
                PluginSource(
                    name,
                    str(folder),
                    "(package folder)",
                    kind="folder",
                    enabled=wanted is not None and name in wanted,
                )
            )
    sources += [PluginSource(target, target, "(module)", kind="module") for target in modules]
    return sorted(sources, key=lambda source: (source.kind != "module", source.name))


def load_plugins(
    enabled: Sequence[str] | None = None,
    *,
    paths: Sequence[str] = (),
    modules: Sequence[str] = (),
    settings: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[Plugin]:
    """Load the enabled plugins from entry points, ``module:attribute`` names and folders.

    Args:
        enabled: The names of the plugins to run, whatever their source (``None``:
            every installed entry point and every module).
        paths: Folders appended to ``sys.path`` (plugins that were not pip-installed, for
            example next to a frozen binary): their ``dist-info`` entry points and their
            package folders are found.
        modules: Plugins named as ``package.module:attribute``; they are imported, and
            run when ``enabled`` is ``None`` or names them.
        settings: Plugin name -> its ``[plugins.settings.NAME]`` table, passed to the
            plugin's factory.

    Raises:
        PluginError: An enabled plugin is found nowhere, fails to import, is not a
            :class:`~engine.plugin.Plugin`, has settings it cannot take, or two plugins
            share a name.
    """
    loaded = load_plugin_sources(enabled, paths=paths, modules=modules, settings=settings)
    return [plugin for plugin, _ in loaded]


def load_plugin_sources(
    enabled: Sequence[str] | None = None,
    *,
    paths: Sequence[str] = (),
    modules: Sequence[str] = (),
    settings: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[tuple[Plugin, PluginSource]]:
    """:func:`load_plugins`, with the source each plugin came from (a module's source
    carries the name of the Plugin it yielded)."""
    settings = settings or {}
    wanted = None if enabled is None else list(dict.fromkeys(enabled))
    plan = plan_plugins(enabled, paths=paths, modules=modules)
    chosen: dict[str, tuple[Plugin, PluginSource]] = {}
    used: set[str] = set()
    for target in modules:
        # A module's settings are under its top-level package's name (``shop`` for
        # ``shop.plugin:plugin``); it runs under the name of the Plugin it yields.
        key = target.partition(":")[0].partition(".")[0]
        plugin = _as_plugin(_import(target, repr(target)), settings.get(key), repr(target))
        if plugin.name in chosen:
            raise PluginError(f"two plugins are named {plugin.name!r}")
        if wanted is None or plugin.name in wanted:
            source = PluginSource(plugin.name, target, "(module)", kind="module")
            chosen[plugin.name] = (plugin, source)
            used.add(key)
    by_name = {source.name: source for source in plan if source.kind != "module"}
    names = (
        [source.name for source in plan if source.kind == "entry point"]
        if wanted is None
        else wanted
    )
    missing = [name for name in names if name not in chosen and name not in by_name]
    if missing:
        found = ", ".join(sorted({*by_name, *chosen})) or "none"
        raise PluginError(f"plugin(s) {', '.join(missing)} not found (found: {found})")
    for name in names:
        if name in chosen:
            continue  # a module's plugin of that name comes first
        source = by_name[name]
        if source.kind == "folder":
            plugin = _from_folder(name, Path(source.target), settings.get(name))
        else:
            origin = f"{name!r} from distribution {source.distribution!r}"
            plugin = _as_plugin(_import(source.target, origin), settings.get(name), origin)
        if plugin.name in chosen:
            raise PluginError(f"two plugins are named {plugin.name!r}")
        chosen[plugin.name] = (plugin, attrs.evolve(source, enabled=True))
        used.add(name)
    unused = sorted(set(settings) - used)
    if unused:
        raise PluginError(
            f"[plugins.settings] has a table for {', '.join(unused)}, which does not run "
            f"(running: {', '.join(sorted(chosen)) or 'none'})"
        )
    return list(chosen.values())


def merged_registry(plugins: Sequence[Plugin]) -> EventRegistry:
    """One registry holding every plugin's event types.

    Raises:
        PluginError: Two plugins register the same type name (or class).
    """
    registry = EventRegistry()
    owners: dict[str, str] = {}
    for plugin in plugins:
        for name in plugin.events.names():
            if name in owners:
                raise PluginError(
                    f"plugins {owners[name]!r} and {plugin.name!r} both register the event "
                    f"type {name!r}"
                )
            owners[name] = plugin.name
            try:
                registry.register(
                    plugin.events.class_for(name), name=name, version=plugin.events.version_of(name)
                )
            except DuplicateEventTypeError as exc:
                raise PluginError(f"plugin {plugin.name!r}: {exc}") from exc
        for key, step in plugin.events._upcasters.items():
            registry.add_upcaster(key[0], key[1], step[0], rename_to=step[1])
    return registry
