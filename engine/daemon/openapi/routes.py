"""The parts of the document every engine has: the error and event schemas, and the
routes that do not depend on the plugins."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = [
    "ANY_OBJECT",
    "ERROR",
    "EVENTS",
    "STORED_EVENT",
    "error_response",
    "fixed_paths",
    "json_response",
]


def error_response(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def json_response(description: str, schema: Mapping[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


ERROR = {
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
STORED_EVENT = {
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
EVENTS = {"type": "array", "items": {"$ref": "#/components/schemas/StoredEvent"}}
AFTER = {
    "name": "after",
    "in": "query",
    "description": "Start after this position (the log) or version (a stream).",
    "schema": {"type": "integer", "minimum": 0, "default": 0},
}
LIMIT = {
    "name": "limit",
    "in": "query",
    "description": "At most this many events.",
    "schema": {"type": "integer", "minimum": 0, "maximum": 1000, "default": 100},
}
ANY_OBJECT = {"type": "object"}


def fixed_paths() -> dict[str, Any]:
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
                    AFTER,
                    LIMIT,
                ],
                "responses": {
                    "200": json_response(
                        "The events.",
                        {
                            "type": "object",
                            "properties": {"stream_id": {"type": "string"}, "events": EVENTS},
                            "required": ["stream_id", "events"],
                        },
                    ),
                    "400": error_response("A bad parameter or stream id."),
                    "404": error_response("unknown_stream: the stream has no events."),
                },
            }
        },
        "/events": {
            "get": {
                "operationId": "readLog",
                "tags": ["log"],
                "summary": "A page of the global log, and its head position.",
                "parameters": [AFTER, LIMIT],
                "responses": {
                    "200": json_response(
                        "The events.",
                        {
                            "type": "object",
                            "properties": {"head": {"type": "integer"}, "events": EVENTS},
                            "required": ["head", "events"],
                        },
                    ),
                    "400": error_response("A bad parameter."),
                },
            }
        },
        "/health/live": {
            "get": {
                "operationId": "live",
                "tags": ["operations"],
                "summary": "Liveness: the process serves HTTP (needs no token).",
                "security": [],
                "responses": {"200": json_response("Alive.", ANY_OBJECT)},
            }
        },
        "/health/ready": {
            "get": {
                "operationId": "ready",
                "tags": ["operations"],
                "summary": "Readiness: every runner within runners.ready_lag of the head.",
                "responses": {
                    "200": json_response("Ready.", ANY_OBJECT),
                    "503": json_response("Not ready; the runners that lag.", ANY_OBJECT),
                },
            }
        },
        "/runners": {
            "get": {
                "operationId": "runners",
                "tags": ["operations"],
                "summary": "Every runner's statistics (and a rebuild's progress).",
                "responses": {"200": json_response("The runners.", ANY_OBJECT)},
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
                    "202": json_response("Started.", ANY_OBJECT),
                    "404": error_response("No such projection."),
                    "409": error_response("A rebuild runs already, or another node is active."),
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
                "responses": {"200": json_response("The percentiles.", ANY_OBJECT)},
            }
        },
        "/cluster": {
            "get": {
                "operationId": "cluster",
                "tags": ["operations"],
                "summary": "Command routing on this node.",
                "responses": {"200": json_response("This node's view.", ANY_OBJECT)},
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
                    "200": json_response("The dead letters.", ANY_OBJECT),
                    "400": error_response("A bad runner name."),
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
                    "404": error_response("unknown_dead_letter."),
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
                "responses": {"200": json_response("The status.", ANY_OBJECT)},
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "tags": ["operations"],
                "summary": "This document.",
                "responses": {"200": json_response("The OpenAPI document.", ANY_OBJECT)},
            }
        },
    }
