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

import inspect
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from engine.daemon.openapi.routes import (
    ERROR,
    EVENTS,
    STORED_EVENT,
    error_response,
    fixed_paths,
    json_response,
)
from engine.daemon.openapi.schema import Schemas, schema_for, summary
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
    schemas = Schemas()
    components: dict[str, Any] = {
        "Error": ERROR,
        "StoredEvent": STORED_EVENT,
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
    paths.update(fixed_paths())
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
            "events": EVENTS,
        },
        "required": ["stream_id", "version", "duplicate", "state", "events"],
    }
    return {
        "operationId": f"{plugin}.{name}",
        "tags": [plugin],
        "summary": summary(cls) or f"The {name} command.",
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": body}},
        },
        "responses": {
            "200": json_response("Handled (or a duplicate of a command handled before).", result),
            "400": error_response(
                "Malformed: bad_json, codec_error (data does not fit), invalid_stream_id, "
                "stream_id_required."
            ),
            "404": error_response("unknown_plugin or unknown_command."),
            "409": error_response("retries_exhausted or idempotency_conflict."),
            "413": error_response("too_large or event_too_large."),
            "422": error_response("Rejected by the domain; the code is the domain error's."),
            "504": error_response(
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
        "200": json_response("The answer.", {}),
        "400": error_response("A bad parameter."),
        "404": error_response("unknown_query, or not_found: the query found nothing."),
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
        responses["503"] = error_response("not_caught_up: the read model did not get there.")
        responses["409"] = error_response(
            "not_active: the read model is kept only on the node whose runner is active; "
            "the message names it."
        )
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
            DocumentedQuery(query, loaded.query_runners.get(query), summary(func))
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
            found = [DocumentedQuery(n, None, summary(f)) for n, f in plugin.queries.items()]
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
                found += [DocumentedQuery(n, name, summary(f)) for n, f in setup.queries.items()]
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
