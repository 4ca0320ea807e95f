"""The standard library the single binary carries, so plugins can import it as anywhere.

PyInstaller bundles only what the engine's own imports reach; a plugin loaded from a
folder may import any standard module (``xml.etree``, ``html.parser``, ``graphlib``,
``zoneinfo``, ``cProfile``...). ``eskit.spec`` names every module listed here as a hidden
import, and ``tests/packaging/test_binary.py`` imports them from inside the binary.

Left out: the GUI toolkits (no Tk in the binary), the interpreter's own test suite, and
modules that act when imported (``antigravity`` opens a browser, ``this`` prints).

Run ``python packaging/stdlib_modules.py`` to print the list.
"""

from __future__ import annotations

import importlib.util
import pkgutil
import sys

#: Top-level standard modules the binary does not carry (and why: see the docstring).
LEFT_OUT = frozenset(
    {
        "tkinter",
        "_tkinter",
        "turtle",
        "turtledemo",
        "idlelib",
        "test",
        "antigravity",
        "this",
        "__phello__",
        "_testcapi",
        "_testinternalcapi",
        "_testbuffer",
        "_testimportmultiple",
        "_testmultiphase",
        "_xxtestfuzz",
        "_ctypes_test",
    }
)

#: Subpackages left out wherever they are (test suites inside standard packages).
LEFT_OUT_PARTS = frozenset({"test", "tests", "idle_test"})


def _submodules(name: str, path: list[str]) -> list[str]:
    found = []
    for info in pkgutil.iter_modules(path):
        if info.name in LEFT_OUT_PARTS or info.name == "__main__":
            continue  # test suites; and a __main__ runs its program when imported
        full = f"{name}.{info.name}"
        found.append(full)
        if info.ispkg:
            found += _submodules(full, [f"{entry}/{info.name}" for entry in path])
    return found


def stdlib_modules() -> list[str]:
    """Every standard module of this interpreter that exists on this platform (top-level
    names of ``sys.stdlib_module_names`` and their submodules), minus :data:`LEFT_OUT`;
    nothing is imported to find them."""
    names = []
    for name in sorted(sys.stdlib_module_names):
        if name in LEFT_OUT:
            continue
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            continue
        if spec is None:
            continue  # another platform's module (winreg, msvcrt...)
        names.append(name)
        if spec.submodule_search_locations:
            names += _submodules(name, list(spec.submodule_search_locations))
    return names


if __name__ == "__main__":
    print("\n".join(stdlib_modules()))
