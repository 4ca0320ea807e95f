"""JSON Schema (2020-12, the dialect of OpenAPI 3.1) of attrs classes and dataclasses, as
the codec carries their values: UUIDs, dates and decimals are strings, bytes base64
text, sets arrays of unique items, enums their values; a closed schema (a command's)
refuses unknown keys."""

from __future__ import annotations

import collections
import collections.abc
import dataclasses
import datetime as dt
import decimal
import enum
import inspect
import re
import types
import typing
import uuid
from typing import Any, Literal

import attrs

from engine.codec import make_converter

__all__ = ["Schemas", "schema_for", "summary"]

_SEQUENCES = {
    list,
    tuple,
    collections.deque,
    collections.abc.Sequence,
    collections.abc.MutableSequence,
    collections.abc.Collection,
    collections.abc.Iterable,
}
_SETS = {set, frozenset, collections.abc.Set, collections.abc.MutableSet}
_MAPPINGS = {
    dict,
    collections.OrderedDict,
    collections.abc.Mapping,
    collections.abc.MutableMapping,
}
_COMPONENT = re.compile(r"[^A-Za-z0-9._-]")


class Schemas:
    """The ``components/schemas`` being built: one entry per class, named once."""

    def __init__(self) -> None:
        self.components: dict[str, Any] = {}
        self._names: dict[type, str] = {}
        self._converter = make_converter()

    def ref(self, cls: type, prefix: str, *, closed: bool) -> dict[str, Any]:
        name = self._names.get(cls)
        if name is None:
            base = _COMPONENT.sub("_", f"{prefix}.{cls.__qualname__}" if prefix else cls.__name__)
            name, n = base, 1
            while name in self.components:
                n += 1
                name = f"{base}_{n}"
            self._names[cls] = name
            self.components[name] = {}  # a placeholder first: classes may nest themselves
            self.components[name] = self._object(cls, prefix, closed=closed)
        return {"$ref": f"#/components/schemas/{name}"}

    def _object(self, cls: type, prefix: str, *, closed: bool) -> dict[str, Any]:
        properties: dict[str, Any] = {}
        required: list[str] = []
        for name, tp, default, validator in _fields(cls):
            schema = self.schema(tp, prefix, closed=closed)
            schema = {**schema, **_validator_schema(validator)}
            if default is attrs.NOTHING:
                required.append(name)
            else:
                plain = self._default(default)
                if plain is not attrs.NOTHING:
                    schema = {**schema, "default": plain}
            properties[name] = schema
        described: dict[str, Any] = {"type": "object", "title": cls.__name__}
        doc = summary(cls)
        if doc:
            described["description"] = doc
        described["properties"] = properties
        if required:
            described["required"] = required
        if closed:
            described["additionalProperties"] = False
        return described

    def _default(self, default: Any) -> Any:
        if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
            if default.takes_self:
                return attrs.NOTHING
            default = default.factory()
        if default is dataclasses.MISSING:
            return attrs.NOTHING
        try:
            return self._converter.unstructure(default)
        except Exception:  # a default the codec cannot show is left out, not fatal
            return attrs.NOTHING

    def schema(self, tp: Any, prefix: str, *, closed: bool) -> dict[str, Any]:
        """The JSON Schema of values of type ``tp`` as the codec carries them."""
        if tp is Any or tp is object:
            return {}
        if isinstance(tp, typing.NewType):
            return self.schema(tp.__supertype__, prefix, closed=closed)
        if isinstance(tp, typing.TypeVar):
            return {}
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        if origin is typing.Annotated:
            return self.schema(args[0], prefix, closed=closed)
        if origin is typing.Union or origin is types.UnionType:
            arms = [self.schema(arm, prefix, closed=closed) for arm in args]
            return arms[0] if len(arms) == 1 else {"anyOf": arms}
        if origin is Literal:
            return {"enum": [v.value if isinstance(v, enum.Enum) else v for v in args]}
        if origin in _SETS or tp in _SETS:
            item = self.schema(args[0], prefix, closed=closed) if args else {}
            return {"type": "array", "items": item, "uniqueItems": True}
        if origin is tuple and args and args[-1] is not Ellipsis:
            if args == ((),):
                return {"type": "array", "maxItems": 0}
            items = [self.schema(arm, prefix, closed=closed) for arm in args]
            return {
                "type": "array",
                "prefixItems": items,
                "items": False,
                "minItems": len(items),
            }
        if origin in _SEQUENCES or tp in _SEQUENCES:
            item = self.schema(args[0], prefix, closed=closed) if args else {}
            return {"type": "array", "items": item}
        if origin in _MAPPINGS or tp in _MAPPINGS:
            schema: dict[str, Any] = {"type": "object"}
            if args:
                key, value = args
                schema["additionalProperties"] = self.schema(value, prefix, closed=closed)
                keys = self.schema(key, prefix, closed=closed)
                if "enum" in keys or "format" in keys:
                    schema["propertyNames"] = keys
            return schema
        if not isinstance(tp, type):
            return {}
        return self._class(tp, prefix, closed=closed)

    def _class(self, tp: type, prefix: str, *, closed: bool) -> dict[str, Any]:
        if issubclass(tp, enum.Enum):
            return {"enum": [member.value for member in tp], "title": tp.__name__}
        if issubclass(tp, bool):
            return {"type": "boolean"}
        if issubclass(tp, int):
            return {"type": "integer"}
        if issubclass(tp, float):
            return {"type": "number"}
        if issubclass(tp, str):
            return {"type": "string"}
        if issubclass(tp, bytes):
            return {"type": "string", "contentEncoding": "base64"}
        if tp is type(None):
            return {"type": "null"}
        if issubclass(tp, uuid.UUID):
            return {"type": "string", "format": "uuid"}
        if issubclass(tp, dt.datetime):
            return {"type": "string", "format": "date-time"}
        if issubclass(tp, dt.date):
            return {"type": "string", "format": "date"}
        if issubclass(tp, decimal.Decimal):
            return {
                "type": ["string", "number"],
                "description": "a decimal number (answered as a string, exact)",
            }
        if attrs.has(tp) or dataclasses.is_dataclass(tp):
            return self.ref(tp, prefix, closed=closed)
        return {}


def schema_for(cls: type, *, closed: bool = True) -> dict[str, Any]:
    """A self-contained JSON Schema (2020-12) of an attrs class or dataclass: nested
    classes go under ``$defs``.

    Args:
        cls: The class.
        closed: Refuse unknown keys (as commands do).
    """
    schemas = Schemas()
    root = schemas.ref(cls, "", closed=closed)
    name = root["$ref"].rsplit("/", 1)[1]
    document = dict(schemas.components.pop(name))
    defs = _rebase(schemas.components)
    document = _rebase(document)
    document["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    if defs:
        document["$defs"] = defs
    return _self_ref(document, name)


def _rebase(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: (
                v.replace("#/components/schemas/", "#/$defs/")
                if k == "$ref" and isinstance(v, str)
                else _rebase(v)
            )
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_rebase(v) for v in value]
    return value


def _self_ref(document: dict[str, Any], name: str) -> dict[str, Any]:
    # A class that contains itself refers to the root of its own schema.
    def fix(value: Any) -> Any:
        if isinstance(value, dict):
            return {
                k: ("#" if k == "$ref" and v == f"#/$defs/{name}" else fix(v))
                for k, v in value.items()
            }
        if isinstance(value, list):
            return [fix(v) for v in value]
        return value

    fixed: dict[str, Any] = fix(document)
    return fixed


def _fields(cls: type) -> list[tuple[str, Any, Any, Any]]:
    """``(name, type, default or NOTHING, validator)`` of each field of ``cls``."""
    if attrs.has(cls):
        attrs.resolve_types(cls)
        return [
            (field.alias or field.name, field.type, field.default, field.validator)
            for field in attrs.fields(cls)
            if field.init
        ]
    hints = typing.get_type_hints(cls)
    found: list[tuple[str, Any, Any, Any]] = []
    for field in dataclasses.fields(cls):
        if not field.init:
            continue
        default: Any = attrs.NOTHING
        if field.default is not dataclasses.MISSING:
            default = field.default
        elif field.default_factory is not dataclasses.MISSING:
            default = attrs.Factory(field.default_factory)
        found.append((field.name, hints.get(field.name, Any), default, None))
    return found


def _validator_schema(validator: Any) -> dict[str, Any]:
    """The JSON Schema keywords of attrs' standard validators (bounds, lengths, choices);
    other validators are checked by the engine only."""
    if validator is None:
        return {}
    inner = getattr(validator, "_validators", None)  # attrs.validators.and_
    if isinstance(inner, tuple):
        merged: dict[str, Any] = {}
        for one in inner:
            merged.update(_validator_schema(one))
        return merged
    kind = type(validator).__name__
    if kind == "_NumberValidator":
        keyword = {
            "<": "exclusiveMaximum",
            "<=": "maximum",
            ">=": "minimum",
            ">": "exclusiveMinimum",
        }.get(getattr(validator, "compare_op", ""))
        bound = getattr(validator, "bound", None)
        if keyword and isinstance(bound, int | float) and not isinstance(bound, bool):
            return {keyword: bound}
    if kind == "_MinLengthValidator":
        return {"minLength": validator.min_length}
    if kind == "_MaxLengthValidator":
        return {"maxLength": validator.max_length}
    if kind == "_InValidator":
        options = getattr(validator, "options", ())
        values = [o.value if isinstance(o, enum.Enum) else o for o in options]
        if all(isinstance(v, str | int | float | bool) for v in values):
            return {"enum": values}
    if kind == "_MatchesReValidator":
        pattern = getattr(validator, "pattern", None)
        if isinstance(pattern, re.Pattern) and isinstance(pattern.pattern, str):
            return {"pattern": pattern.pattern}
    return {}


def summary(obj: Any) -> str:
    """The first paragraph of ``obj``'s own docstring (never one inherited, nor the
    signature a dataclass writes for itself)."""
    doc = inspect.cleandoc(getattr(obj, "__doc__", None) or "")
    if isinstance(obj, type) and doc.startswith(f"{obj.__name__}("):
        return ""
    return doc.split("\n\n", 1)[0].replace("\n", " ").strip()
