"""Checking, without an instance, that the codec can carry values of a type.

A plugin's event, command and state classes are checked when the plugin is built
(:meth:`engine.plugin.Plugin.check_codec`), so that a type the codec cannot encode or
decode (a set keyed by ints, a class with no hooks...) fails at start-up with one line
naming the class and the field, instead of failing on the first command or snapshot.
"""

from __future__ import annotations

import collections
import collections.abc
import dataclasses
import datetime as dt
import decimal
import enum
import types
import typing
import uuid
from typing import Any, Literal

import attrs
import cattrs

from engine.codec import make_converter

__all__ = ["type_problems"]


#: Types the converter turns into JSON scalars (strings for the non-JSON ones).
_PLAIN: tuple[type, ...] = (
    str,
    int,
    float,
    bool,
    bytes,
    type(None),
    uuid.UUID,
    dt.datetime,
    dt.date,
    decimal.Decimal,
)
#: Mapping keys that stay strings through JSON (orjson refuses other keys).
_STRING_KEYS: tuple[type, ...] = (str, uuid.UUID, dt.datetime, dt.date, decimal.Decimal)
_SEQUENCES = {
    list,
    tuple,
    set,
    frozenset,
    collections.deque,
    collections.abc.Sequence,
    collections.abc.MutableSequence,
    collections.abc.Set,
    collections.abc.MutableSet,
    collections.abc.Collection,
    collections.abc.Iterable,
}
_MAPPINGS = {
    dict,
    collections.OrderedDict,
    collections.abc.Mapping,
    collections.abc.MutableMapping,
}


def type_problems(cls: Any, converter: cattrs.Converter | None = None) -> list[str]:
    """What keeps values of ``cls`` from being encoded and decoded, found without an instance.

    Checks each field (of attrs classes and dataclasses, recursively): that the
    converter can build a structure hook for its type (cattrs does that from the type
    alone) and that unstructuring it gives plain JSON values: scalars, UUIDs, dates,
    decimals, enums with scalar values, lists, sets, tuples, mappings with string-like
    keys, nested classes, or a type the converter has a hook for.

    Args:
        cls: The class (or type) to check.
        converter: The converter values go through (a fresh :func:`make_converter`).

    Returns:
        One ``field.path: problem`` line per problem (empty when the type is fine).
    """
    conv = make_converter() if converter is None else converter
    problems: list[str] = []
    _check_type(cls, "", conv, problems, set())
    return problems


def _fields(cls: type) -> list[tuple[str, Any]]:
    if attrs.has(cls):
        attrs.resolve_types(cls)
        return [(field.name, field.type) for field in attrs.fields(cls)]
    hints = typing.get_type_hints(cls)
    return [(field.name, hints.get(field.name, Any)) for field in dataclasses.fields(cls)]


def _check_type(
    tp: Any, path: str, conv: cattrs.Converter, problems: list[str], seen: set[Any]
) -> None:
    where = f"{path}: " if path else ""
    if tp is Any or tp is object:
        return  # unstructured by the runtime class of the value
    if isinstance(tp, typing.NewType):
        _check_type(tp.__supertype__, path, conv, problems, seen)
        return
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Annotated:
        _check_type(args[0], path, conv, problems, seen)
        return
    if origin is typing.Union or origin is types.UnionType:
        for arm in args:
            _check_type(arm, path, conv, problems, seen)
        return
    if origin is Literal:
        for value in args:
            if not isinstance(value, (str, int, float, bool, type(None), enum.Enum)):
                problems.append(f"{where}literal {value!r} is not a JSON value")
        return
    if origin in _SEQUENCES:
        for arm in args:
            if arm is not Ellipsis:
                _check_type(arm, f"{path}[]", conv, problems, seen)
        return
    if origin in _MAPPINGS:
        if args:
            key, value = args
            if not _string_key(key):
                problems.append(
                    f"{where}mapping keys of type {_name(key)} do not survive JSON (object "
                    f"keys are strings); use str keys"
                )
            _check_type(value, f"{path}[]", conv, problems, seen)
        return
    if not isinstance(tp, type):
        return  # a typing construct cattrs handles at run time (TypeVar, ...)
    if tp in seen:
        return
    if issubclass(tp, enum.Enum):
        for member in tp:
            if not isinstance(member.value, (str, int, float, bool)):
                problems.append(
                    f"{where}{_name(tp)}.{member.name} has the value {member.value!r}, not "
                    f"a JSON scalar"
                )
        return
    if issubclass(tp, _PLAIN) or tp in _SEQUENCES or tp in _MAPPINGS:
        return
    if attrs.has(tp) or dataclasses.is_dataclass(tp):
        seen.add(tp)
        try:
            fields = _fields(tp)
        except Exception as exc:
            problems.append(f"{where}the field types of {_name(tp)} cannot be resolved: {exc}")
            return
        for name, field_type in fields:
            field_path = f"{path}.{name}" if path else name
            known = len(problems)
            _check_type(field_type, field_path, conv, problems, seen)
            if len(problems) == known:
                # What the walk does not see (a union cattrs cannot tell apart...).
                try:
                    conv.get_structure_hook(field_type)
                except Exception as exc:
                    problems.append(f"{field_path}: cannot be decoded: {_short(exc)}")
        return
    try:
        conv.get_structure_hook(tp)
    except Exception:
        structure = False
    else:
        structure = True
    if not structure or conv.get_unstructure_hook(tp) is cattrs.fns.identity:
        problems.append(
            f"{where}{_name(tp)} is not a type the codec can encode and decode (use a "
            f"supported type, or a converter with hooks for it)"
        )


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _string_key(key: Any) -> bool:
    if key is Any:
        return True
    if typing.get_origin(key) is Literal:
        return all(isinstance(value, str) for value in typing.get_args(key))
    if isinstance(key, type) and issubclass(key, enum.Enum):
        return all(isinstance(member.value, str) for member in key)
    return isinstance(key, type) and issubclass(key, _STRING_KEYS)


def _name(tp: Any) -> str:
    return getattr(tp, "__qualname__", None) or repr(tp)
