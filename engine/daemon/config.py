"""The engine's configuration: one TOML file, structured into frozen attrs classes.

No file at all is a valid configuration: the tier-1 embedded default (a SQLite store in
the data folder, in-process bus and locks, every installed plugin, HTTP on 127.0.0.1).

Every value can be overridden from the environment: ``ESKIT_<SECTION>__<KEY>`` (two
underscores between the section and the key), for example ``ESKIT_STORE__DSN`` or
``ESKIT_HTTP__TOKEN``, so that secrets need not be written into the file.

Errors name the key path and what was expected, in one line each::

    config error in eskit.toml: store.backend: must be one of memory, sqlite, postgres, nats (got 'mysql')
"""

from __future__ import annotations

import os
import socket
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import attrs
import cattrs

from engine.codec import explain_structure_error
from engine.errors import ConfigError
from engine.observability.logging import is_secret_key, redact_text
from engine.stores.base import DEFAULT_MAX_EVENT_BYTES

__all__ = [
    "BusConfig",
    "ClusterConfig",
    "Config",
    "EngineConfig",
    "HttpConfig",
    "LocksConfig",
    "LoggingConfig",
    "NatsConfig",
    "PluginsConfig",
    "RunnersConfig",
    "StoreConfig",
    "load_config",
    "parse_config",
]

ENV_PREFIX = "ESKIT_"
DEFAULT_PORT = 8080
DEFAULT_DATA_DIR = "eskit-data"

StoreBackend = Literal["memory", "sqlite", "postgres", "nats"]
BusBackend = Literal["memory", "nats"]
LocksBackend = Literal["memory", "nats", "postgres"]
ErrorPolicy = Literal["retry-then-park", "retry-then-stop", "stop"]


def _default_node_id() -> str:
    return socket.gethostname() or "node-1"


def _positive(_: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if value <= 0:
        raise ValueError(f"{attribute.name}: must be > 0 (got {value!r})")


def _non_negative(_: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if value < 0:
        raise ValueError(f"{attribute.name}: must be >= 0 (got {value!r})")


def _port(_: object, attribute: attrs.Attribute[Any], value: int) -> None:
    if not 0 <= value <= 65535:
        raise ValueError(f"{attribute.name}: must be a TCP port, 0 to 65535 (got {value!r})")


@attrs.frozen(kw_only=True)
class EngineConfig:
    """``[engine]``: who this node is and where it keeps its files."""

    node_id: str = attrs.field(factory=_default_node_id)
    data_dir: str = DEFAULT_DATA_DIR
    grace_period: float = attrs.field(default=10.0, validator=_positive)


@attrs.frozen(kw_only=True)
class StoreConfig:
    """``[store]``: the event store (``backend`` picks one; the other keys are its options)."""

    backend: StoreBackend = "sqlite"
    path: str = "events.db"
    synchronous: Literal["FULL", "NORMAL"] = "FULL"
    dsn: str = ""
    read_dsn: str = ""
    schema: str = "eskit"
    #: Most connections to the primary (PostgreSQL), and the fewest kept open.
    pool_size: int = attrs.field(default=10, validator=_positive)
    min_pool_size: int = attrs.field(default=1, validator=_positive)
    #: Most connections to the replica named by ``read_dsn``.
    read_pool_size: int = attrs.field(default=10, validator=_positive)
    max_event_bytes: int = attrs.field(default=DEFAULT_MAX_EVENT_BYTES, validator=_positive)
    namespace: str = "eskit"


@attrs.frozen(kw_only=True)
class NatsConfig:
    """``[nats]``: an external server (``url``) or an embedded one (``embedded = true``).

    An external server takes a ``token``, a ``user`` and ``password``, a ``credentials``
    file (JWT and NKey seed) or an ``nkey_seed`` file, and TLS options (``tls_ca`` to
    verify the server, ``tls_cert`` and ``tls_key`` for a client certificate). The
    embedded server listens on ``embedded_host:embedded_port`` (port 0: a free port
    picked at start) and keeps JetStream's files in ``<data_dir>/nats``.
    """

    url: str = ""
    embedded: bool = False
    token: str = attrs.field(default="", repr=False)
    user: str = ""
    password: str = attrs.field(default="", repr=False)
    credentials: str = ""
    nkey_seed: str = ""
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    embedded_host: str = "127.0.0.1"
    embedded_port: int = attrs.field(default=0, validator=_port)


@attrs.frozen(kw_only=True)
class BusConfig:
    """``[bus]``: how nodes wake each other up (the store stays the source of truth)."""

    backend: BusBackend = "memory"


@attrs.frozen(kw_only=True)
class LocksConfig:
    """``[locks]``: single-writer leases and runner leadership."""

    backend: LocksBackend = "memory"
    ttl: float = attrs.field(default=10.0, validator=_positive)


@attrs.frozen(kw_only=True)
class ClusterConfig:
    """``[cluster]``: command routing between nodes (active with shared locks and NATS).

    A node owns a stream while it holds the stream's lease; commands for a stream owned
    elsewhere are forwarded to the owner over NATS.
    """

    routing: bool = True
    #: Seconds a forwarded command may take before the caller gets ``unknown_outcome``.
    forward_timeout: float = attrs.field(default=5.0, validator=_positive)
    #: Seconds a node keeps a stream's lease after the stream's last command.
    idle_release: float = attrs.field(default=10.0, validator=_positive)
    #: Seconds a node waits for the lease of a stream nobody owned.
    take_timeout: float = attrs.field(default=1.0, validator=_positive)


@attrs.frozen(kw_only=True)
class HttpConfig:
    """``[http]``: the command and query ingress (loopback only unless you say otherwise).

    ``allowed_hosts`` names the host names (besides IP addresses and ``localhost``) that
    browsers may address requests to (DNS-rebinding protection; ``["*"]`` allows any).
    ``tls_cert`` and ``tls_key`` (PEM files) serve HTTPS. The timeouts bound slow clients
    (seconds): a request's head, its body, an idle keep-alive connection.
    """

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = attrs.field(default=DEFAULT_PORT, validator=_port)
    token: str = attrs.field(default="", repr=False)
    max_body_bytes: int = attrs.field(default=1024 * 1024, validator=_positive)
    allowed_hosts: tuple[str, ...] = ()
    max_connections: int = attrs.field(default=1000, validator=_positive)
    header_timeout: float = attrs.field(default=10.0, validator=_positive)
    body_timeout: float = attrs.field(default=30.0, validator=_positive)
    keep_alive_timeout: float = attrs.field(default=5.0, validator=_positive)
    tls_cert: str = ""
    tls_key: str = ""


@attrs.frozen(kw_only=True)
class PluginsConfig:
    """``[plugins]``: which plugins run, where else to find them, and their settings.

    ``enabled`` names the plugins that run, whatever their source (``None``, the key
    left out: every installed plugin and every module; ``[]``: none). ``paths`` are
    folders appended to the import path (their ``dist-info`` entry points and package
    folders are found there). ``modules`` names plugins as ``module:attribute``.
    ``[plugins.settings.NAME]`` tables go to plugin ``NAME``'s factory.
    """

    enabled: tuple[str, ...] | None = None
    paths: tuple[str, ...] = ()
    modules: tuple[str, ...] = ()
    settings: Mapping[str, Mapping[str, Any]] = attrs.field(factory=dict)


def _one_of(*choices: str) -> Any:
    def check(_: object, attribute: attrs.Attribute[Any], value: str) -> None:
        if value not in choices:
            raise ValueError(
                f"{attribute.name}: must be one of {', '.join(choices)} (got {value!r})"
            )

    return check


def _upper(value: str) -> str:
    return value.strip().upper() if isinstance(value, str) else value


def _lower(value: str) -> str:
    return value.strip().lower() if isinstance(value, str) else value


@attrs.frozen(kw_only=True)
class LoggingConfig:
    """``[logging]``: the log's level, its format, and the access log.

    ``ESKIT_LOG_LEVEL``, ``ESKIT_LOG_FORMAT`` and ``ESKIT_LOG_ACCESS`` override these keys.
    ``access_log`` adds one INFO line per command (and per HTTP request); it is off by
    default because, in-process, that line costs a third of a command's time (docs/observability.md).
    """

    level: str = attrs.field(
        default="INFO",
        converter=_upper,
        validator=_one_of("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"),
    )
    format: str = attrs.field(default="text", converter=_lower, validator=_one_of("text", "json"))
    access_log: bool = False


@attrs.frozen(kw_only=True)
class RunnersConfig:
    """``[runners]``: how projections and automations catch up and what they do on errors."""

    batch_size: int = attrs.field(default=500, validator=_positive)
    poll_interval: float = attrs.field(default=1.0, validator=_positive)
    error_policy: ErrorPolicy = "retry-then-park"
    max_retries: int = attrs.field(default=5, validator=_non_negative)
    ready_lag: int = attrs.field(default=100, validator=_non_negative)


@attrs.frozen(kw_only=True)
class Config:
    """The whole configuration. ``Config()`` is the embedded default."""

    engine: EngineConfig = attrs.field(factory=EngineConfig)
    store: StoreConfig = attrs.field(factory=StoreConfig)
    nats: NatsConfig = attrs.field(factory=NatsConfig)
    bus: BusConfig = attrs.field(factory=BusConfig)
    locks: LocksConfig = attrs.field(factory=LocksConfig)
    cluster: ClusterConfig = attrs.field(factory=ClusterConfig)
    http: HttpConfig = attrs.field(factory=HttpConfig)
    plugins: PluginsConfig = attrs.field(factory=PluginsConfig)
    runners: RunnersConfig = attrs.field(factory=RunnersConfig)
    logging: LoggingConfig = attrs.field(factory=LoggingConfig)

    def data_path(self, name: str) -> Path:
        """``name`` inside the data folder (absolute paths are kept as they are)."""
        return Path(self.engine.data_dir).expanduser() / name

    def uses_nats(self) -> bool:
        """Whether a backend needs a NATS connection (store, bus or locks)."""
        return "nats" in (self.store.backend, self.bus.backend, self.locks.backend)

    def routes_commands(self) -> bool:
        """Whether commands are routed to their stream's owner: routing is on, the
        locks are shared between nodes, and NATS is there to carry the requests."""
        return (
            self.cluster.routing
            and self.locks.backend != "memory"
            and bool(self.nats.url or self.nats.embedded)
        )


_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def _structure_bool(value: Any, _: type) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ValueError(f"expected true or false, got {value!r}")


def _structure_int(value: Any, _: type) -> int:
    if isinstance(value, bool):
        raise ValueError(f"expected an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise ValueError(f"expected an integer, got {value!r}")


def _structure_float(value: Any, _: type) -> float:
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got {value!r}")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            pass
    raise ValueError(f"expected a number, got {value!r}")


def _structure_str(value: Any, _: type) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {value!r}")
    return value


def _structure_names(value: Any, _: type) -> tuple[str, ...]:
    if isinstance(value, str):  # from the environment: comma separated
        return tuple(item.strip() for item in value.split(",") if item.strip())
    if isinstance(value, list | tuple) and all(isinstance(item, str) for item in value):
        return tuple(value)
    raise ValueError(f"expected a list of strings, got {value!r}")


def _converter() -> cattrs.Converter:
    converter = cattrs.Converter(forbid_extra_keys=True)
    converter.register_structure_hook(bool, _structure_bool)
    converter.register_structure_hook(int, _structure_int)
    converter.register_structure_hook(float, _structure_float)
    converter.register_structure_hook(str, _structure_str)
    converter.register_structure_hook_func(lambda t: t == tuple[str, ...], _structure_names)
    converter.register_structure_hook_func(
        lambda t: t == tuple[str, ...] | None,
        lambda v, t: None if v is None else _structure_names(v, t),
    )
    converter.register_structure_hook_func(
        lambda t: t == Mapping[str, Mapping[str, Any]], _structure_settings
    )
    return converter


def _structure_settings(value: Any, _: type) -> Mapping[str, Mapping[str, Any]]:
    """``[plugins.settings]``: a table of tables, kept as TOML gave them (each plugin
    structures its own with its own classes)."""
    if not isinstance(value, Mapping):
        raise ValueError("expected a table of tables, one per plugin ([plugins.settings.NAME])")
    for name, table in value.items():
        if not isinstance(table, Mapping):
            raise ValueError(
                f"{name}: expected a table ([plugins.settings.{name}]), got a "
                f"{type(table).__name__}"
            )
    return {str(name): dict(table) for name, table in value.items()}


def _env_overrides(environ: Mapping[str, str]) -> dict[str, dict[str, str]]:
    sections: dict[str, dict[str, str]] = {}
    for key, value in environ.items():
        if not key.startswith(ENV_PREFIX) or "__" not in key:
            continue
        section, _, name = key[len(ENV_PREFIX) :].partition("__")
        if section and name:
            sections.setdefault(section.lower(), {})[name.lower()] = value
    return sections


def _hide_secrets(problem: str) -> str:
    """A problem on a secret key (``store.dsn``, ``http.token``...) without the value given,
    which may hold the secret: ``http.token: expected a string (the value is not shown)``."""
    path, sep, detail = problem.partition(": ")
    if not sep or not is_secret_key(path.rpartition(".")[2]):
        return redact_text(problem)
    expected = detail.partition(", got ")[0]
    return f"{path}: {expected} (the value is not shown: it may be a secret)"


def parse_config(
    data: Mapping[str, Any],
    *,
    environ: Mapping[str, str] | None = None,
    source: str = "config",
) -> Config:
    """Structure a parsed TOML document (plus environment overrides) into a :class:`Config`.

    Raises:
        ConfigError: Unknown sections or keys, wrong types, or missing options of the
            chosen backends; the message names each key path.
    """
    merged: dict[str, Any] = {
        name: dict(value) if isinstance(value, Mapping) else value for name, value in data.items()
    }
    for section, values in _env_overrides(os.environ if environ is None else environ).items():
        target = merged.setdefault(section, {})
        if isinstance(target, dict):
            target.update(values)
    try:
        config = _converter().structure(merged, Config)
    except cattrs.BaseValidationError as exc:
        problems = "; ".join(_hide_secrets(line) for line in explain_structure_error(exc))
        raise ConfigError(f"config error in {source}: {problems}") from None
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"config error in {source}: {exc}") from None
    _check_backends(config, source)
    return config


def _check_backends(config: Config, source: str) -> None:
    problems = []
    if config.store.backend == "postgres" and not config.store.dsn:
        problems.append("store.dsn: required for the postgres backend (or set ESKIT_STORE__DSN)")
    if config.uses_nats() and not (config.nats.url or config.nats.embedded):
        problems.append("nats.url: required when a backend is nats (or set nats.embedded = true)")
    if config.nats.url and config.nats.embedded:
        problems.append("nats: give either url or embedded = true, not both")
    if config.locks.backend == "postgres" and config.store.backend != "postgres":
        problems.append("locks.backend: postgres locks need store.backend = postgres")
    if config.nats.tls_key and not config.nats.tls_cert:
        problems.append("nats.tls_key: needs nats.tls_cert (the client certificate)")
    if config.nats.credentials and config.nats.nkey_seed:
        problems.append("nats: give either credentials or nkey_seed, not both")
    if bool(config.http.tls_cert) != bool(config.http.tls_key):
        problems.append("http.tls_cert, http.tls_key: give both (PEM files) or neither")
    if config.store.min_pool_size > config.store.pool_size:
        problems.append("store.min_pool_size: must be <= store.pool_size")
    if problems:
        raise ConfigError(f"config error in {source}: " + "; ".join(problems))


def load_config(
    path: str | os.PathLike[str] | None, *, environ: Mapping[str, str] | None = None
) -> Config:
    """Read ``path`` (TOML) into a :class:`Config`; ``None`` gives the embedded default.

    Raises:
        ConfigError: The file is missing, not valid TOML, or not a valid configuration.
    """
    if path is None:
        return parse_config({}, environ=environ, source="the embedded default")
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {file}: {exc.strerror}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config error in {file}: not valid TOML: {exc}") from None
    return parse_config(data, environ=environ, source=str(file))
