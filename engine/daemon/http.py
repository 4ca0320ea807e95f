"""The HTTP ingress: the routes in front of the engine, served by :mod:`engine.daemon.server`.

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
conflict, 413 too large, 415 a body type a browser sends cross-site, 422 rejected by the
domain, 503 not caught up in time (``not_caught_up``), storage full (``storage_full``) or a
lost lock (``lock_not_held``), 504
``unknown_outcome`` (a command forwarded to its stream's owner got no reply in time;
the body's ``command_id`` is the id to send it again with), 500 anything else (logged,
never crashing the server). A command forwarded to another node answers with the
owner's status and code, as if it had run here. With a token configured, every route but
``/health/live`` needs ``Authorization: Bearer <token>`` (the scheme in any case), compared
in constant time.

Browsers (CSRF and DNS rebinding): a request whose ``Host`` is not an IP address, a
``localhost`` name or one of ``allowed_hosts`` gets 403 ``forbidden_host`` (unless a token
is configured: a rebinding page cannot send it); a request whose ``Origin`` is not the
host it was sent to, or with ``Sec-Fetch-Site: cross-site``, gets 403 ``forbidden_origin``;
a body of a type a browser may send cross-site without a preflight (form, multipart,
``text/plain``) from a browser (it carries ``Origin`` or ``Sec-Fetch-Site``) gets 415.
curl and scripts send no ``Origin`` and are unaffected.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import re
import resource
import ssl
import urllib.parse
from collections.abc import Mapping
from typing import Any, Final, Protocol

import attrs
import orjson
import trio

from engine.cluster import RemoteCommandError, UnknownOutcomeError
from engine.daemon.config import HttpConfig
from engine.daemon.http1 import Request, Response, ServerLimits, error_body
from engine.daemon.openapi import engine_document
from engine.daemon.server import serve_http
from engine.dcb.base import AppendConditionError
from engine.errors import (
    CodecError,
    ConcurrencyError,
    ConfigError,
    DomainError,
    EskitError,
    EventTooLargeError,
    IdempotencyConflictError,
    InvalidParameterError,
    InvalidStreamIdError,
    LockNotHeldError,
    NotActiveError,
    NotCaughtUpError,
    NotFoundError,
    NotRunningError,
    RebuildInProgressError,
    RebuildNotActiveError,
    StorageFullError,
    StreamIdRequiredError,
    UnknownCommandError,
)
from engine.observability.page import CONTENT_SECURITY_POLICY, STATUS_HTML

__all__ = [
    "STATUS_BY_ERROR",
    "EngineApi",
    "HttpError",
    "HttpIngress",
    "run_ingress",
    "server_limits",
    "status_for",
    "tls_context",
]

logger = logging.getLogger("eskit.http")


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


#: The HTTP status of each engine error, looked up along the error's MRO (its most
#: specific class in the table wins); an error outside the table is a 500.
STATUS_BY_ERROR: Final[Mapping[type[BaseException], int]] = {
    UnknownOutcomeError: 504,
    EventTooLargeError: 413,
    ConcurrencyError: 409,
    IdempotencyConflictError: 409,
    AppendConditionError: 409,
    RebuildInProgressError: 409,
    RebuildNotActiveError: 409,
    DomainError: 422,
    InvalidStreamIdError: 400,
    InvalidParameterError: 400,
    StreamIdRequiredError: 400,
    CodecError: 400,
    UnknownCommandError: 404,
    NotFoundError: 404,
    NotCaughtUpError: 503,
    NotActiveError: 409,
    NotRunningError: 503,
    StorageFullError: 503,
    LockNotHeldError: 503,
}
#: The same by code, for an error another node raised (it sends the codes of its MRO).
_STATUS_BY_CODE: Final[Mapping[str, int]] = {
    vars(cls)["code"]: status for cls, status in STATUS_BY_ERROR.items() if "code" in vars(cls)
}


def status_for(error: BaseException) -> tuple[int, str]:
    """The HTTP status and stable code of an error: one lookup along its MRO."""
    if isinstance(error, HttpError):
        return error.status, error.error_code
    if isinstance(error, RemoteCommandError):
        for code in error.codes:
            if code in _STATUS_BY_CODE:
                return _STATUS_BY_CODE[code], error.error_code
        return 500, error.error_code
    for cls in type(error).__mro__:
        status = STATUS_BY_ERROR.get(cls)
        if status is not None:
            return status, getattr(error, "code", "error")
    return 500, "internal_error"


#: 503s worth a line in the log, but not a traceback nor a line per request.
_WARNING_INTERVAL: Final = 10.0
#: Descriptors kept for the rest of the engine below the open-files limit.
_FD_RESERVE: Final = 100
_MAX_LIMIT: Final = 1000
#: JSON nested deeper than this is refused (400 ``bad_json``) before it reaches a decoder.
MAX_JSON_DEPTH: Final = 64
_INTEGER: Final = re.compile(r"-?[0-9]{1,19}")
_HTML: Final = b"text/html; charset=utf-8"
_JSON: Final = b"application/json"
_COMMAND_KEYS: Final = ("stream_id", "data", "command_id")
_SECURITY_HEADERS: Final = (
    (b"cache-control", b"no-store"),
    (b"x-content-type-options", b"nosniff"),
)
_HTML_HEADERS: Final = (
    *_SECURITY_HEADERS,
    (b"content-security-policy", CONTENT_SECURITY_POLICY),
    (b"referrer-policy", b"no-referrer"),
)
#: The body types a browser may POST to another site without a CORS preflight.
_SIMPLE_TYPES: Final = (b"application/x-www-form-urlencoded", b"multipart/form-data", b"text/plain")


def _int_param(params: Mapping[str, str], name: str, default: int, *, high: int) -> int:
    raw = params.get(name)
    if raw is None:
        return default
    if not _INTEGER.fullmatch(raw):
        raise HttpError(400, "bad_parameter", f"{name} must be an integer")
    value = int(raw)
    if not 0 <= value <= high:
        raise HttpError(400, "bad_parameter", f"{name} must be between 0 and {high}")
    return value


def _split_host(value: str) -> str:
    """The host name of a ``Host`` header or an origin's authority, lowercase, no port."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    return value.rpartition(":")[0] if value.count(":") == 1 else value


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


@attrs.define
class HttpIngress:
    """The routes: ``await ingress(request)`` answers one request.

    Args:
        engine: What commands and queries go to.
        token: When non-empty, the bearer token every request (but liveness) must carry.
        allowed_hosts: Host names (besides IP addresses and ``localhost``) that requests
            may be addressed to; ``"*"`` allows any.
    """

    engine: EngineApi
    token: str = attrs.field(default="", repr=False)
    allowed_hosts: tuple[str, ...] = ()
    _warned: dict[str, float] = attrs.field(factory=dict, init=False, repr=False)

    async def __call__(self, request: Request) -> Response:
        try:
            return await self._dispatch(request)
        except Exception as error:
            return self._error_response(request, error)

    def _error_response(self, request: Request, error: Exception) -> Response:
        status, code = status_for(error)
        if status >= 500 and code == "internal_error":
            logger.exception("unhandled error serving %s %r", request.method, request.path)
            message = "internal error (see the engine log)"
        else:
            message = getattr(error, "message", None) or str(error)
            if status >= 500:
                self._warn(code, message)
        extra: dict[str, Any] = {}
        if isinstance(error, UnknownOutcomeError):
            extra["command_id"] = error.command_id
        headers: tuple[tuple[bytes, bytes], ...] = _SECURITY_HEADERS
        if isinstance(error, HttpError) and error.error_code == "method_not_allowed":
            headers = (*headers, (b"allow", error.message.removeprefix("use ").encode()))
        return Response(status, error_body(code, message, **extra), _JSON, headers)

    def _warn(self, code: str, message: str) -> None:
        """One WARNING line per code per interval: a 503 is the load, not a bug."""
        now = trio.current_time()
        if now - self._warned.get(code, -_WARNING_INTERVAL) >= _WARNING_INTERVAL:
            self._warned[code] = now
            logger.warning("answered 503 %s: %s", code, message)

    def _authorized(self, request: Request) -> bool:
        if not self.token:
            return True
        value = request.header(b"authorization")
        if value is None:
            return False
        scheme, _, credentials = value.partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(
            credentials.strip(), self.token.encode()
        )

    def _check_browser(self, request: Request) -> None:
        """Refuse what a foreign web page can make a browser send (CSRF, DNS rebinding)."""
        raw_host = request.header(b"host")
        # No Host at all: HTTP/1.0, not a browser (the server refuses HTTP/1.1 without one).
        host = _split_host(raw_host.decode("latin-1")) if raw_host is not None else "localhost"
        if (
            not self.token
            and "*" not in self.allowed_hosts
            and not (
                _is_ip(host)
                or host == "localhost"
                or host.endswith(".localhost")
                or host in self.allowed_hosts
            )
        ):
            raise HttpError(
                403,
                "forbidden_host",
                f"requests to host {host!r} are not allowed (add it to [http] allowed_hosts)",
            )
        origin = request.header(b"origin")
        if origin is not None:
            authority = origin.decode("latin-1").partition("://")[2]
            if raw_host is None or authority.lower() != raw_host.decode("latin-1").lower():
                raise HttpError(403, "forbidden_origin", "cross-origin requests are not allowed")
        if request.header(b"sec-fetch-site") == b"cross-site":
            raise HttpError(403, "forbidden_origin", "cross-site requests are not allowed")

    async def _dispatch(self, request: Request) -> Response:
        method = request.method
        if method == "HEAD":
            method = "GET"
        try:
            parts = [
                urllib.parse.unquote_to_bytes(part).decode("utf-8")
                for part in request.path.split(b"/")[1:]
            ]
        except UnicodeDecodeError:
            raise HttpError(400, "bad_path", "the path is not valid UTF-8") from None
        if parts == ["health", "live"]:
            return _ok({"status": "live"})
        self._check_browser(request)
        if parts == ["status"] and method == "GET":
            return Response(200, STATUS_HTML, _HTML, _HTML_HEADERS)
        if not self._authorized(request):
            raise HttpError(401, "unauthorized", "a valid bearer token is required")
        try:
            params = dict(urllib.parse.parse_qsl(request.query.decode("utf-8"), errors="strict"))
        except UnicodeDecodeError:
            raise HttpError(400, "bad_parameter", "the query string is not valid UTF-8") from None
        engine = self.engine
        match parts:
            case ["commands", plugin, command]:
                _require(method, "POST")
                body = self._command_body(request)
                result = await engine.send_command(
                    plugin,
                    command,
                    stream_id=body.get("stream_id"),
                    data=body.get("data", {}),
                    command_id=body.get("command_id"),
                )
                return _ok(result)
            case ["queries", plugin, query]:
                _require(method, "GET")
                return _ok(await engine.run_query(plugin, query, params))
            case ["streams", stream_id]:
                _require(method, "GET")
                after = _int_param(params, "after", 0, high=2**62)
                limit = _int_param(params, "limit", 100, high=_MAX_LIMIT)
                return _ok(await engine.read_stream(stream_id, after=after, limit=limit))
            case ["events"]:
                _require(method, "GET")
                after = _int_param(params, "after", 0, high=2**62)
                limit = _int_param(params, "limit", 100, high=_MAX_LIMIT)
                return _ok(await engine.read_log(after=after, limit=limit))
            case ["health", "ready"]:
                _require(method, "GET")
                ready, details = engine.ready()
                payload = {"status": "ready" if ready else "not ready", "runners": details}
                return _ok(payload, 200 if ready else 503)
            case ["projections", name, "rebuild"]:
                _require(method, "POST")
                return _ok(await engine.rebuild_projection(name), 202)
            case ["runners"]:
                _require(method, "GET")
                return _ok(engine.runners_status())
            case ["metrics"]:
                _require(method, "GET")
                return Response(
                    200,
                    engine.metrics_text().encode(),
                    engine.metrics_content_type().encode(),
                    _SECURITY_HEADERS,
                )
            case ["status.json"]:
                _require(method, "GET")
                return _ok(await engine.status())
            case ["cluster"]:
                _require(method, "GET")
                return _ok(engine.cluster_status())
            case ["openapi.json"]:
                _require(method, "GET")
                return _ok(engine_document(engine, token_required=bool(self.token)))
            case ["profiler"]:
                _require(method, "GET")
                return _ok(engine.profiler_json())
            case ["dead-letters"]:
                _require(method, "GET")
                return _ok(await engine.list_dead_letters(params.get("runner")))
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
                return Response(204, b"", b"", _SECURITY_HEADERS)
        raise HttpError(404, "not_found", f"no route for {request.method} {'/'.join(parts)!r}")

    def _command_body(self, request: Request) -> dict[str, Any]:
        content_type = (request.header(b"content-type") or b"").partition(b";")[0].strip().lower()
        browser = request.header(b"origin") is not None or (
            request.header(b"sec-fetch-site") is not None
        )
        if browser and content_type in _SIMPLE_TYPES:
            raise HttpError(
                415,
                "unsupported_media_type",
                "send the command as Content-Type: application/json",
            )
        body = parse_json(request.body or b"{}")
        if not isinstance(body, dict):
            raise HttpError(400, "bad_request", "the body must be a JSON object")
        unknown = sorted(set(body) - set(_COMMAND_KEYS))
        if unknown:
            raise HttpError(
                400,
                "unknown_field",
                f"unknown field {unknown[0]!r} in the command body "
                f"(allowed: {', '.join(_COMMAND_KEYS)}; the command's fields go under data)",
            )
        if body.get("stream_id") is not None and not isinstance(body["stream_id"], str):
            raise HttpError(400, "bad_request", "stream_id must be a string")
        if body.get("command_id") is not None and not isinstance(body["command_id"], str):
            raise HttpError(400, "bad_request", "command_id must be a string")
        if not isinstance(body.get("data", {}), dict):
            raise HttpError(400, "bad_request", "data must be a JSON object")
        return body


def parse_json(raw: bytes) -> Any:
    """Decode a request body: valid UTF-8 JSON (no lone surrogates), at most
    :data:`MAX_JSON_DEPTH` levels deep; anything else is a 400 ``bad_json``."""
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        raise HttpError(
            400, "bad_json", f"the body is not valid JSON: {error.msg} (at character {error.pos})"
        ) from None
    pending: list[tuple[Any, int]] = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        children = item.values() if isinstance(item, dict) else item
        if isinstance(item, dict | list):
            if depth > MAX_JSON_DEPTH:
                raise HttpError(
                    400, "bad_json", f"the body is nested deeper than {MAX_JSON_DEPTH} levels"
                )
            pending.extend(
                (child, depth + 1) for child in children if isinstance(child, dict | list)
            )
    return value


def _require(method: str, expected: str) -> None:
    if method != expected:
        raise HttpError(405, "method_not_allowed", f"use {expected}")


def _json(value: Any) -> bytes:
    try:
        return orjson.dumps(value, default=str, option=orjson.OPT_NON_STR_KEYS)
    except TypeError:
        # orjson stops at 64-bit integers; a state may hold a bigger one (a sum).
        return json.dumps(value, default=str, ensure_ascii=False, separators=(",", ":")).encode()


def _ok(value: Any, status: int = 200) -> Response:
    return Response(status, _json(value), _JSON, _SECURITY_HEADERS)


def server_limits(config: HttpConfig, *, grace_period: float) -> ServerLimits:
    """The server's limits from ``[http]`` (and ``[engine] grace_period``).

    ``max_connections`` is lowered to leave room under the process's open-files limit
    (the store, NATS and logs need descriptors too), with a warning.
    """
    max_connections = config.max_connections
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and max_connections > soft - _FD_RESERVE:
        max_connections = max(1, soft - _FD_RESERVE)
        logger.warning(
            "http.max_connections lowered from %d to %d: the open-files limit is %d",
            config.max_connections,
            max_connections,
            soft,
        )
    return ServerLimits(
        max_connections=max_connections,
        max_body_bytes=config.max_body_bytes,
        header_timeout=config.header_timeout,
        body_timeout=config.body_timeout,
        keep_alive_timeout=config.keep_alive_timeout,
        grace_period=grace_period,
    )


def tls_context(config: HttpConfig) -> ssl.SSLContext | None:
    """The server's TLS context from ``[http] tls_cert`` and ``tls_key`` (``None``: plain HTTP).

    Raises:
        ConfigError: A file is missing or is not a certificate and its key.
    """
    if not config.tls_cert:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    try:
        context.load_cert_chain(config.tls_cert, config.tls_key)
    except (OSError, ssl.SSLError) as error:
        raise ConfigError(
            f"http.tls_cert, http.tls_key: cannot load {config.tls_cert} and {config.tls_key}: "
            f"{getattr(error, 'strerror', None) or error}"
        ) from None
    return context


async def run_ingress(
    engine: EngineApi,
    config: HttpConfig,
    *,
    grace_period: float,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the engine over HTTP as ``[http]`` says until cancelled (then, requests in
    flight get ``grace_period`` seconds); ``task_status.started(urls)`` once listening."""
    app = HttpIngress(engine, token=config.token, allowed_hosts=config.allowed_hosts)
    await serve_http(
        app,
        config.host,
        config.port,
        limits=server_limits(config, grace_period=grace_period),
        ssl_context=tls_context(config),
        task_status=task_status,
    )
