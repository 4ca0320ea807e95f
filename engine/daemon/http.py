"""The HTTP ingress: a small ASGI app in front of the engine, served by hypercorn on Trio.

Routes:

* ``POST /commands/{plugin}/{command}`` with a JSON body ``{"stream_id": ..., "data":
  {...}, "command_id": ...}`` (``stream_id`` optional when the plugin derives it).
* ``GET /queries/{plugin}/{query}?name=value`` runs a plugin query; add
  ``wait_for_position=P`` (a position a command returned) to read your own writes.
* ``GET /streams/{stream_id}?after=0&limit=100`` reads a stream's events.
* ``GET /events?after=0&limit=100`` reads the global log.
* ``GET /health/live``, ``GET /health/ready`` (ready = runners within their lag bound),
  ``GET /runners``, ``GET /metrics`` (Prometheus text), ``GET /profiler`` (percentiles
  per operation and degradations, JSON).
* ``POST /projections/{name}/rebuild`` (202) builds the projection's next version beside
  the live one and switches to it once caught up; progress under ``rebuild`` in
  ``GET /runners``.
* ``GET /cluster``: command routing on this node (streams owned, commands forwarded
  and served).
* ``GET /dead-letters?runner=R`` lists the events runners parked (all runners, or one:
  its checkpoint name ``plugin.name@1`` or its name), with a count per runner;
  ``DELETE /dead-letters/{runner}/{position}`` discards one once dealt with (204, or 404
  ``unknown_dead_letter``). A runner name with ``/`` is sent as ``%2F``.
* ``GET /openapi.json``: the OpenAPI 3.1 document of this engine's commands and queries.
* ``GET /status``: the status page (HTML; it holds no data and needs no token), which
  polls ``GET /status.json`` (the data, token required like every other route).

Errors are JSON ``{"error": {"code": ..., "message": ...}}`` with stable codes: 400
malformed, 401 unauthorized, 404 unknown plugin/command/query/route, 405 method, 409
conflict, 413 too large, 422 rejected by the domain, 503 not caught up in time, 504
``unknown_outcome`` (a command forwarded to its stream's owner got no reply in time;
the body's ``command_id`` is the id to send it again with), 500 anything else (logged,
never crashing the server). A command forwarded to another node answers with the
owner's status and code, as if it had run here. With a token configured, every route but ``/health/live`` needs
``Authorization: Bearer <token>``, compared in constant time.
"""

from __future__ import annotations

import functools
import hmac
import json
import logging
import re
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any, Protocol

import attrs
import trio

from engine.cluster import RemoteCommandError, UnknownOutcomeError
from engine.daemon.openapi import engine_document
from engine.errors import (
    CodecError,
    ConcurrencyError,
    DomainError,
    EskitError,
    EventTooLargeError,
    IdempotencyConflictError,
    InvalidStreamIdError,
    NotActiveError,
    NotCaughtUpError,
    NotFoundError,
    UnknownCommandError,
)
from engine.observability.page import CONTENT_SECURITY_POLICY, STATUS_HTML

__all__ = ["EngineApi", "HttpError", "HttpIngress", "serve_http", "status_for"]

logger = logging.getLogger("eskit.http")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class EngineApi(Protocol):
    """What the ingress needs from the engine."""

    async def send_command(
        self,
        plugin: str,
        command: str,
        *,
        stream_id: str | None,
        data: Mapping[str, Any],
        command_id: str | None,
    ) -> Mapping[str, Any]: ...

    async def run_query(self, plugin: str, query: str, params: Mapping[str, str]) -> Any: ...

    async def read_stream(self, stream_id: str, *, after: int, limit: int) -> Any: ...

    async def read_log(self, *, after: int, limit: int) -> Any: ...

    def runners_status(self) -> Any: ...

    def ready(self) -> tuple[bool, Any]: ...

    def metrics_text(self) -> str: ...

    def metrics_content_type(self) -> str: ...

    async def status(self) -> Any: ...

    def profiler_json(self) -> Any: ...

    def cluster_status(self) -> Any: ...

    async def list_dead_letters(self, runner: str | None = None) -> Any: ...

    async def discard_dead_letter(self, runner: str, position: int) -> bool: ...

    async def rebuild_projection(self, name: str) -> Any: ...


class HttpError(EskitError):
    """An error with an HTTP status, raised by the ingress or by a plugin query."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error_code = code
        self.message = message


_STATUS_BY_ERROR: tuple[tuple[type[BaseException], int], ...] = (
    (UnknownOutcomeError, 504),
    (EventTooLargeError, 413),
    (ConcurrencyError, 409),
    (IdempotencyConflictError, 409),
    (DomainError, 422),
    (InvalidStreamIdError, 400),
    (CodecError, 400),
    (UnknownCommandError, 404),
    (NotFoundError, 404),
    (NotCaughtUpError, 503),
    (NotActiveError, 409),
)


def status_for(error: BaseException) -> tuple[int, str]:
    """The HTTP status and stable code of an engine error."""
    if isinstance(error, HttpError | RemoteCommandError):
        return error.status, error.error_code
    for cls, status in _STATUS_BY_ERROR:
        if isinstance(error, cls):
            return status, getattr(error, "code", "error")
    return 500, "internal_error"


_MAX_LIMIT = 1000
_INTEGER = re.compile(r"-?[0-9]{1,19}")
_HTML = b"text/html; charset=utf-8"


def _int_param(params: Mapping[str, str], name: str, default: int, *, high: int) -> int:
    raw = params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise HttpError(400, "bad_parameter", f"{name} must be an integer") from None
    if not 0 <= value <= high:
        raise HttpError(400, "bad_parameter", f"{name} must be between 0 and {high}")
    return value


@attrs.define
class HttpIngress:
    """The ASGI application.

    Args:
        engine: What commands and queries go to.
        token: When non-empty, the bearer token every request (but liveness) must carry.
        max_body_bytes: Larger request bodies get 413 without being read in full.
    """

    engine: EngineApi
    token: str = attrs.field(default="", repr=False)
    max_body_bytes: int = 1024 * 1024

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        try:
            status, body, content_type = await self._dispatch(scope, receive)
        except Exception as error:
            status, code = status_for(error)
            if code == "internal_error":  # unexpected: hide it; 503/504 answers say what to do
                logger.exception("unhandled error serving %s %s", scope["method"], scope["path"])
                message = "internal error (see the engine log)"
            else:
                message = getattr(error, "message", None) or str(error)
            described: dict[str, Any] = {"code": code, "message": message}
            if isinstance(error, UnknownOutcomeError):
                described["command_id"] = error.command_id
            body = _json({"error": described})
            content_type = b"application/json"
        headers = [
            (b"cache-control", b"no-store"),
            (b"x-content-type-options", b"nosniff"),
        ]
        if status != 204:  # "No Content" has neither a body nor its headers
            headers += [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
            ]
        if content_type == _HTML:
            headers += [
                (b"content-security-policy", CONTENT_SECURITY_POLICY),
                (b"referrer-policy", b"no-referrer"),
            ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    def _authorized(self, scope: Scope) -> bool:
        if not self.token:
            return True
        expected = b"Bearer " + self.token.encode()
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                return hmac.compare_digest(bytes(value), expected)
        return False

    async def _dispatch(self, scope: Scope, receive: Receive) -> tuple[int, bytes, bytes]:
        method = scope["method"]
        raw_path = scope.get("raw_path") or scope["path"].encode()
        parts = [
            urllib.parse.unquote(p) for p in raw_path.decode("latin-1").split("?")[0].split("/")[1:]
        ]
        params = dict(urllib.parse.parse_qsl(scope.get("query_string", b"").decode("latin-1")))
        if parts == ["health", "live"]:
            return 200, _json({"status": "live"}), b"application/json"
        if parts == ["status"] and method == "GET":
            return 200, STATUS_HTML, _HTML
        if not self._authorized(scope):
            raise HttpError(401, "unauthorized", "a valid bearer token is required")
        engine = self.engine
        match parts:
            case ["commands", plugin, command]:
                _require(method, "POST")
                body = await self._read_json(scope, receive)
                stream_id = body.get("stream_id")
                command_id = body.get("command_id")
                data = body.get("data", {})
                if stream_id is not None and not isinstance(stream_id, str):
                    raise HttpError(400, "bad_request", "stream_id must be a string")
                if command_id is not None and not isinstance(command_id, str):
                    raise HttpError(400, "bad_request", "command_id must be a string")
                if not isinstance(data, dict):
                    raise HttpError(400, "bad_request", "data must be a JSON object")
                result = await engine.send_command(
                    plugin, command, stream_id=stream_id, data=data, command_id=command_id
                )
                return 200, _json(result), b"application/json"
            case ["queries", plugin, query]:
                _require(method, "GET")
                return (
                    200,
                    _json(await engine.run_query(plugin, query, params)),
                    b"application/json",
                )
            case ["streams", stream_id]:
                _require(method, "GET")
                after = _int_param(params, "after", 0, high=2**62)
                limit = _int_param(params, "limit", 100, high=_MAX_LIMIT)
                events = await engine.read_stream(stream_id, after=after, limit=limit)
                return 200, _json(events), b"application/json"
            case ["events"]:
                _require(method, "GET")
                after = _int_param(params, "after", 0, high=2**62)
                limit = _int_param(params, "limit", 100, high=_MAX_LIMIT)
                return (
                    200,
                    _json(await engine.read_log(after=after, limit=limit)),
                    b"application/json",
                )
            case ["health", "ready"]:
                _require(method, "GET")
                ready, details = engine.ready()
                payload = {"status": "ready" if ready else "not ready", "runners": details}
                return (200 if ready else 503), _json(payload), b"application/json"
            case ["projections", name, "rebuild"]:
                _require(method, "POST")
                return 202, _json(await engine.rebuild_projection(name)), b"application/json"
            case ["runners"]:
                _require(method, "GET")
                return 200, _json(engine.runners_status()), b"application/json"
            case ["metrics"]:
                _require(method, "GET")
                return (
                    200,
                    engine.metrics_text().encode(),
                    engine.metrics_content_type().encode(),
                )
            case ["status.json"]:
                _require(method, "GET")
                return 200, _json(await engine.status()), b"application/json"
            case ["cluster"]:
                _require(method, "GET")
                return 200, _json(engine.cluster_status()), b"application/json"
            case ["openapi.json"]:
                _require(method, "GET")
                document = engine_document(engine, token_required=bool(self.token))
                return 200, _json(document), b"application/json"
            case ["profiler"]:
                _require(method, "GET")
                return 200, _json(engine.profiler_json()), b"application/json"
            case ["dead-letters"]:
                _require(method, "GET")
                letters = await engine.list_dead_letters(params.get("runner"))
                return 200, _json(letters), b"application/json"
            case ["dead-letters", runner, position]:
                _require(method, "DELETE")
                if not _INTEGER.fullmatch(position):
                    raise HttpError(400, "bad_parameter", "position must be an integer")
                if not await engine.discard_dead_letter(runner, int(position)):
                    raise HttpError(
                        404,
                        "unknown_dead_letter",
                        f"no dead letter of runner {runner!r} at position {position}",
                    )
                return 204, b"", b""
        raise HttpError(404, "not_found", f"no route for {method} {scope['path']}")

    async def _read_json(self, scope: Scope, receive: Receive) -> dict[str, Any]:
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    raise HttpError(400, "bad_request", "invalid content-length") from None
                if declared > self.max_body_bytes:
                    raise HttpError(413, "too_large", f"body over {self.max_body_bytes} bytes")
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise HttpError(400, "bad_request", "client disconnected")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                raise HttpError(413, "too_large", f"body over {self.max_body_bytes} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        try:
            body = json.loads(b"".join(chunks) or b"{}")
        except (ValueError, UnicodeDecodeError):
            raise HttpError(400, "bad_json", "the body is not valid JSON") from None
        if not isinstance(body, dict):
            raise HttpError(400, "bad_request", "the body must be a JSON object")
        return body


def _require(method: str, expected: str) -> None:
    if method != expected:
        raise HttpError(405, "method_not_allowed", f"use {expected}")


def _json(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str).encode()


async def serve_http(
    app: HttpIngress,
    host: str,
    port: int,
    *,
    shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` with hypercorn's HTTP/1.1 and HTTP/2 protocol code until cancelled or
    ``shutdown_trigger`` returns.

    Calls ``task_status.started(binds)`` with the bound URLs once the socket listens
    (``port=0`` picks a free port; the URL says which).

    The accept loop is ours, not hypercorn's ``serve``: hypercorn lets an error of one
    connection escape into its server's nursery (a request with trailing bytes that the
    app answers while hypercorn answers the bytes with a 400 races its close against
    that send, ``trio.BusyResourceError``), which ends every connection and the listener
    with it. Here a connection's error is logged and ends that connection only
    (``tests/daemon/test_http_connections.py``). hypercorn's own protocol classes are
    used as they are; they are internal API, hence the version pin in pyproject.toml.
    """
    from hypercorn.app_wrappers import ASGIWrapper
    from hypercorn.config import Config as HypercornConfig
    from hypercorn.trio.tcp_server import TCPServer
    from hypercorn.trio.worker_context import WorkerContext
    from hypercorn.typing import ConnectionState
    from hypercorn.utils import repr_socket_addr

    config = HypercornConfig()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("eskit.http.server")
    config.graceful_timeout = 5.0
    config.h11_max_incomplete_size = 64 * 1024
    # hypercorn types the app with its own TypedDicts; ours takes the same dicts untyped.
    asgi_app: Any = ASGIWrapper(app)  # type: ignore[arg-type]
    context = WorkerContext(None)
    sockets = config.create_sockets()
    listeners: list[trio.SocketListener] = []
    binds: list[str] = []
    for sock in sockets.insecure_sockets:
        sock.listen(config.backlog)
        listeners.append(trio.SocketListener(trio.socket.from_stdlib_socket(sock)))
        binds.append(f"http://{repr_socket_addr(sock.family, sock.getsockname())}")

    async def connection(stream: Any) -> None:  # hypercorn types it as an SSL stream
        try:
            await TCPServer(asgi_app, config, context, ConnectionState({}), stream).run()
        except Exception:
            logger.warning("an HTTP connection ended with an error", exc_info=True)

    async with trio.open_nursery() as connections:
        try:
            async with trio.open_nursery() as accepting:
                await accepting.start(
                    functools.partial(
                        trio.serve_listeners, connection, listeners, handler_nursery=connections
                    )
                )
                task_status.started(binds)
                if shutdown_trigger is not None:
                    await shutdown_trigger()
                    accepting.cancel_scope.cancel()
        finally:
            # Idle keep-alive connections close at once; requests in flight get the grace.
            await context.terminated.set()
            connections.cancel_scope.deadline = trio.current_time() + config.graceful_timeout
