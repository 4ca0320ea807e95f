"""The engine's HTTP API as an OpenAPI 3.1 document (``GET /openapi.json``, ``eskit openapi``).

Each plugin command becomes a path of its own (``POST /commands/bank/Deposit``) whose
request body's ``data`` is the JSON Schema of the command's class, derived from its
attrs (or dataclass) fields: names, types, which are required, defaults, and the bounds
of attrs' standard validators. States and event payloads are described the same way,
so a client generator gets typed models. Each plugin query is a path too; its
parameters are the query's own (free-form strings) plus ``wait_for_position``.

JSON Schema here is 2020-12, the dialect of OpenAPI 3.1, and follows the codec: UUIDs,
dates and decimals are strings, bytes base64 text, sets arrays of unique items, enums
their values; commands refuse unknown keys (``additionalProperties: false``).
"""

from __future__ import annotations

import collections
import collections.abc
import dataclasses
import datetime as dt
import decimal
import enum
import inspect
import re
import tempfile
import types
import typing
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import attrs

from engine.codec import make_converter
from engine.plugin import Plugin

if TYPE_CHECKING:
    from engine.daemon.config import Config

__all__ = [
    "DocumentedQuery",
    "config_document",
    "engine_document",
    "openapi_document",
    "schema_for",
]

OPENAPI_VERSION = "3.1.0"

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


@attrs.frozen
class DocumentedQuery:
    """A plugin query as the document shows it.

    Attributes:
        name: The query's name.
        read_model: The runner feeding its read model (``plugin.projection``), whose
            position ``wait_for_position`` waits for; ``None`` for a query of no
            projection.
        description: What the query answers.
    """

    name: str
    read_model: str | None = None
    description: str = ""


# -- JSON Schema from Python types --------------------------------------------------------


class _Schemas:
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
        doc = _summary(cls)
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
    schemas = _Schemas()
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


def _summary(obj: Any) -> str:
    """The first paragraph of ``obj``'s own docstring (never one inherited, nor the
    signature a dataclass writes for itself)."""
    doc = inspect.cleandoc(getattr(obj, "__doc__", None) or "")
    if isinstance(obj, type) and doc.startswith(f"{obj.__name__}("):
        return ""
    return doc.split("\n\n", 1)[0].replace("\n", " ").strip()


# -- the document -----------------------------------------------------------------------


def _error_response(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def _json_response(description: str, schema: Mapping[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_ERROR = {
    "type": "object",
    "description": "Every error answer: a stable code (the domain's own for a 422) and a message.",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "code": {"type": "string", "examples": ["insufficient_funds"]},
                "message": {"type": "string"},
                "command_id": {
                    "type": "string",
                    "description": "With unknown_outcome (504): the id to send the command again with.",
                },
            },
            "required": ["code", "message"],
        }
    },
    "required": ["error"],
}
_STORED_EVENT = {
    "type": "object",
    "description": "A stored event; data is the payload of its type (see the event schemas).",
    "properties": {
        "stream_id": {"type": "string"},
        "version": {"type": "integer", "minimum": 1},
        "position": {"type": "integer", "minimum": 1},
        "type": {"type": "string"},
        "data": {},
        "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
        "event_id": {"type": "string", "format": "uuid"},
        "recorded_at": {"type": "string", "format": "date-time"},
    },
    "required": [
        "stream_id",
        "version",
        "position",
        "type",
        "data",
        "metadata",
        "event_id",
        "recorded_at",
    ],
}
_EVENTS = {"type": "array", "items": {"$ref": "#/components/schemas/StoredEvent"}}
_AFTER = {
    "name": "after",
    "in": "query",
    "description": "Start after this position (the log) or version (a stream).",
    "schema": {"type": "integer", "minimum": 0, "default": 0},
}
_LIMIT = {
    "name": "limit",
    "in": "query",
    "description": "At most this many events.",
    "schema": {"type": "integer", "minimum": 0, "maximum": 1000, "default": 100},
}
_ANY_OBJECT = {"type": "object"}


def _fixed_paths() -> dict[str, Any]:
    """The routes every engine has, whatever its plugins."""
    text = {"text/plain": {"schema": {"type": "string"}}}
    return {
        "/streams/{stream_id}": {
            "get": {
                "operationId": "readStream",
                "tags": ["log"],
                "summary": "A page of one stream's events.",
                "parameters": [
                    {
                        "name": "stream_id",
                        "in": "path",
                        "required": True,
                        "description": "Any stream id, percent-encoded (a '/' as %2F).",
                        "schema": {"type": "string"},
                    },
                    _AFTER,
                    _LIMIT,
                ],
                "responses": {
                    "200": _json_response(
                        "The events.",
                        {
                            "type": "object",
                            "properties": {"stream_id": {"type": "string"}, "events": _EVENTS},
                            "required": ["stream_id", "events"],
                        },
                    ),
                    "400": _error_response("A bad parameter or stream id."),
                    "404": _error_response("unknown_stream: the stream has no events."),
                },
            }
        },
        "/events": {
            "get": {
                "operationId": "readLog",
                "tags": ["log"],
                "summary": "A page of the global log, and its head position.",
                "parameters": [_AFTER, _LIMIT],
                "responses": {
                    "200": _json_response(
                        "The events.",
                        {
                            "type": "object",
                            "properties": {"head": {"type": "integer"}, "events": _EVENTS},
                            "required": ["head", "events"],
                        },
                    ),
                    "400": _error_response("A bad parameter."),
                },
            }
        },
        "/health/live": {
            "get": {
                "operationId": "live",
                "tags": ["operations"],
                "summary": "Liveness: the process serves HTTP (needs no token).",
                "security": [],
                "responses": {"200": _json_response("Alive.", _ANY_OBJECT)},
            }
        },
        "/health/ready": {
            "get": {
                "operationId": "ready",
                "tags": ["operations"],
                "summary": "Readiness: every runner within runners.ready_lag of the head.",
                "responses": {
                    "200": _json_response("Ready.", _ANY_OBJECT),
                    "503": _json_response("Not ready; the runners that lag.", _ANY_OBJECT),
                },
            }
        },
        "/runners": {
            "get": {
                "operationId": "runners",
                "tags": ["operations"],
                "summary": "Every runner's statistics (and a rebuild's progress).",
                "responses": {"200": _json_response("The runners.", _ANY_OBJECT)},
            }
        },
        "/projections/{name}/rebuild": {
            "post": {
                "operationId": "rebuildProjection",
                "tags": ["operations"],
                "summary": "Build the projection's next version beside the live one, then switch.",
                "parameters": [
                    {
                        "name": "name",
                        "in": "path",
                        "required": True,
                        "description": "plugin.projection",
                        "schema": {"type": "string"},
                    }
                ],
                "responses": {
                    "202": _json_response("Started.", _ANY_OBJECT),
                    "404": _error_response("No such projection."),
                    "409": _error_response("A rebuild runs already, or another node is active."),
                },
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "tags": ["operations"],
                "summary": "Prometheus metrics (text exposition format).",
                "responses": {"200": {"description": "The metrics.", "content": text}},
            }
        },
        "/profiler": {
            "get": {
                "operationId": "profiler",
                "tags": ["operations"],
                "summary": "Rolling p50/p95/p99 per operation.",
                "responses": {"200": _json_response("The percentiles.", _ANY_OBJECT)},
            }
        },
        "/cluster": {
            "get": {
                "operationId": "cluster",
                "tags": ["operations"],
                "summary": "Command routing on this node.",
                "responses": {"200": _json_response("This node's view.", _ANY_OBJECT)},
            }
        },
        "/dead-letters": {
            "get": {
                "operationId": "deadLetters",
                "tags": ["operations"],
                "summary": "The events runners parked, with a count per runner.",
                "parameters": [
                    {
                        "name": "runner",
                        "in": "query",
                        "description": "Only this runner's (plugin.name@1, or plugin.name).",
                        "schema": {"type": "string"},
                    }
                ],
                "responses": {
                    "200": _json_response("The dead letters.", _ANY_OBJECT),
                    "400": _error_response("A bad runner name."),
                },
            }
        },
        "/dead-letters/{runner}/{position}": {
            "delete": {
                "operationId": "discardDeadLetter",
                "tags": ["operations"],
                "summary": "Discard one parked event once dealt with.",
                "parameters": [
                    {
                        "name": "runner",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string"},
                    },
                    {
                        "name": "position",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "integer"},
                    },
                ],
                "responses": {
                    "204": {"description": "Discarded."},
                    "404": _error_response("unknown_dead_letter."),
                },
            }
        },
        "/status": {
            "get": {
                "operationId": "statusPage",
                "tags": ["operations"],
                "summary": "The live status page (HTML with no data; needs no token).",
                "security": [],
                "responses": {
                    "200": {
                        "description": "The page.",
                        "content": {"text/html": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
        "/status.json": {
            "get": {
                "operationId": "status",
                "tags": ["operations"],
                "summary": "What the status page shows.",
                "responses": {"200": _json_response("The status.", _ANY_OBJECT)},
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "tags": ["operations"],
                "summary": "This document.",
                "responses": {"200": _json_response("The OpenAPI document.", _ANY_OBJECT)},
            }
        },
    }


def openapi_document(
    plugins: Sequence[Plugin],
    queries: Mapping[str, Iterable[DocumentedQuery]],
    *,
    node_id: str,
    version: str,
    server_url: str | None = None,
    token_required: bool = False,
) -> dict[str, Any]:
    """The OpenAPI 3.1 document of an engine running ``plugins``.

    Args:
        plugins: The plugins, in the engine's order.
        queries: Each plugin's queries (by plugin name).
        node_id: The engine's node id (in the title).
        version: The eskit version.
        server_url: Where the engine listens, if known.
        token_required: Whether routes need ``Authorization: Bearer <token>``.
    """
    schemas = _Schemas()
    components: dict[str, Any] = {
        "Error": _ERROR,
        "StoredEvent": _STORED_EVENT,
    }
    paths: dict[str, Any] = {}
    tags: list[dict[str, str]] = []
    for plugin in plugins:
        tags.append({"name": plugin.name, "description": plugin.description or plugin.name})
        for type_name in plugin.events.names():
            schemas.ref(plugin.events.class_for(type_name), plugin.name, closed=False)
        for binding in plugin.commands:
            state = schemas.schema(type(binding.decider.initial_state()), plugin.name, closed=False)
            for name, cls in sorted(binding.public_command_names().items()):
                data = schemas.ref(cls, plugin.name, closed=True)
                paths[f"/commands/{plugin.name}/{name}"] = {
                    "post": _command_operation(
                        plugin.name, name, cls, data, state, derives=binding.stream_id is not None
                    )
                }
        for query in sorted(queries.get(plugin.name, ()), key=lambda q: q.name):
            paths[f"/queries/{plugin.name}/{query.name}"] = {
                "get": _query_operation(plugin.name, query)
            }
    paths.update(_fixed_paths())
    components.update(schemas.components)
    document: dict[str, Any] = {
        "openapi": OPENAPI_VERSION,
        "jsonSchemaDialect": "https://spec.openapis.org/oas/3.1/dialect/base",
        "info": {
            "title": f"eskit engine {node_id}",
            "version": version,
            "description": (
                "Commands in, queries out. Errors are JSON {error: {code, message}} with "
                "stable codes. Plugins: " + (", ".join(p.name for p in plugins) or "none") + "."
            ),
            "license": {"name": "MIT", "identifier": "MIT"},
        },
        "tags": [*tags, {"name": "log"}, {"name": "operations"}],
        "paths": paths,
        "components": {"schemas": components},
    }
    if server_url:
        document["servers"] = [{"url": server_url}]
    if token_required:
        document["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        document["security"] = [{"bearer": []}]
    return document


def _command_operation(
    plugin: str,
    name: str,
    cls: type,
    data: Mapping[str, Any],
    state: Mapping[str, Any],
    *,
    derives: bool,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": "object",
        "properties": {
            "stream_id": {
                "type": "string",
                "minLength": 1,
                "description": "The stream (any non-empty string without NUL, at most 512 "
                "UTF-8 bytes)" + ("; derived from the data when omitted." if derives else "."),
            },
            "data": data,
            "command_id": {
                "type": "string",
                "description": "Idempotency key: the same id acts once and answers the original "
                "result (duplicate: true). Send one to retry safely.",
            },
        },
        "required": ["data"] if derives else ["stream_id", "data"],
        "additionalProperties": False,
    }
    result = {
        "type": "object",
        "properties": {
            "stream_id": {"type": "string"},
            "version": {"type": "integer"},
            "duplicate": {"type": "boolean"},
            "state": state,
            "events": _EVENTS,
        },
        "required": ["stream_id", "version", "duplicate", "state", "events"],
    }
    return {
        "operationId": f"{plugin}.{name}",
        "tags": [plugin],
        "summary": _summary(cls) or f"The {name} command.",
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": body}},
        },
        "responses": {
            "200": _json_response("Handled (or a duplicate of a command handled before).", result),
            "400": _error_response(
                "Malformed: bad_json, codec_error (data does not fit), invalid_stream_id, "
                "stream_id_required."
            ),
            "404": _error_response("unknown_plugin or unknown_command."),
            "409": _error_response("retries_exhausted or idempotency_conflict."),
            "413": _error_response("too_large or event_too_large."),
            "422": _error_response("Rejected by the domain; the code is the domain error's."),
            "504": _error_response(
                "unknown_outcome: forwarded to its stream's owner and no reply came; "
                "send it again with the same command_id."
            ),
        },
    }


def _query_operation(plugin: str, query: DocumentedQuery) -> dict[str, Any]:
    parameters: list[dict[str, Any]] = [
        {
            "name": "params",
            "in": "query",
            "description": "The query's own parameters (strings, by name).",
            "schema": {"type": "object", "additionalProperties": {"type": "string"}},
            "style": "form",
            "explode": True,
        }
    ]
    responses: dict[str, Any] = {
        "200": _json_response("The answer.", {}),
        "400": _error_response("A bad parameter."),
        "404": _error_response("unknown_query, or not_found: the query found nothing."),
    }
    if query.read_model is not None:
        parameters.insert(
            0,
            {
                "name": "wait_for_position",
                "in": "query",
                "description": f"First wait (up to 5 s) until {query.read_model} has handled "
                "this position (a command's last event position): read your writes.",
                "schema": {"type": "integer", "minimum": 0},
            },
        )
        responses["503"] = _error_response("not_caught_up: the read model did not get there.")
    summary = query.description or (
        f"Read {query.read_model}." if query.read_model else f"The {query.name} query."
    )
    return {
        "operationId": f"{plugin}.{query.name}",
        "tags": [plugin],
        "summary": summary,
        "parameters": parameters,
        "responses": responses,
    }


# -- from a running engine ----------------------------------------------------------------


def engine_document(engine: Any, *, token_required: bool) -> dict[str, Any]:
    """The document of a running :class:`~engine.daemon.engine.Engine`: its loaded
    plugins, their queries (with the read models they wait on) and where it listens."""
    from engine import __version__

    plugins: list[Plugin] = []
    queries: dict[str, list[DocumentedQuery]] = {}
    for name, loaded in engine.plugins.items():
        plugins.append(loaded.plugin)
        queries[name] = [
            DocumentedQuery(query, loaded.query_runners.get(query), _summary(func))
            for query, func in loaded.queries.items()
        ]
    urls = list(engine.http_urls)
    return openapi_document(
        plugins,
        queries,
        node_id=engine.config.engine.node_id,
        version=__version__,
        server_url=urls[0] if urls else None,
        token_required=token_required,
    )


async def config_document(config: Config) -> dict[str, Any]:
    """The document of the engine ``config`` describes, without running it.

    The plugins are loaded as ``eskit run`` would; each projection is set up once against
    an empty in-memory store in a scratch folder (no SQL database), to learn the names of
    its queries. Nothing is read from or written to the configured store.

    Raises:
        PluginError: A plugin fails to load or to set up.
    """
    from engine import __version__
    from engine.daemon.plugins import load_plugins
    from engine.errors import PluginError
    from engine.plugin import ProjectionContext
    from engine.stores.memory import MemoryStore

    plugins = load_plugins(
        config.plugins.enabled, paths=config.plugins.paths, modules=config.plugins.modules
    )
    queries: dict[str, list[DocumentedQuery]] = {}
    with tempfile.TemporaryDirectory(prefix="eskit-openapi-") as scratch:
        store: MemoryStore[Any] = MemoryStore()
        for plugin in plugins:
            found = [DocumentedQuery(n, None, _summary(f)) for n, f in plugin.queries.items()]
            for definition in plugin.projections:
                name = f"{plugin.name}.{definition.name}"
                context = ProjectionContext(
                    store=store,
                    data_dir=Path(scratch),
                    node_id=config.engine.node_id,
                    name=name,
                    version=definition.version,
                )
                try:
                    setup = definition.setup(context)
                    if inspect.isawaitable(setup):
                        setup = await setup
                except Exception as exc:
                    raise PluginError(
                        f"plugin {plugin.name!r}: projection {definition.name!r} failed to set "
                        f"up: {exc}"
                    ) from exc
                found += [DocumentedQuery(n, name, _summary(f)) for n, f in setup.queries.items()]
            queries[plugin.name] = found
    host = config.http.host
    shown = f"[{host}]" if ":" in host else host
    return openapi_document(
        plugins,
        queries,
        node_id=config.engine.node_id,
        version=__version__,
        server_url=f"http://{shown}:{config.http.port}",
        token_required=bool(config.http.token),
    )
