"""The engine's configuration: defaults, TOML, environment overrides and error messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.daemon.config import Config, load_config, parse_config
from engine.errors import ConfigError


def test_no_file_is_the_embedded_default() -> None:
    """Without a file the engine runs SQLite, in-process bus and locks, HTTP on loopback."""
    config = load_config(None, environ={})
    assert config == Config()
    assert config.store.backend == "sqlite"
    assert config.store.synchronous == "FULL"
    assert config.bus.backend == config.locks.backend == "memory"
    assert (config.http.host, config.http.port) == ("127.0.0.1", 8080)
    assert config.plugins.enabled is None


def test_toml_file_and_environment_overrides(tmp_path: Path) -> None:
    """Values come from the file; ESKIT_SECTION__KEY overrides them (secrets stay out)."""
    file = tmp_path / "eskit.toml"
    file.write_text(
        """
[engine]
node_id = "n1"
data_dir = "/var/lib/eskit"

[store]
backend = "postgres"
dsn = "postgresql://from-file"

[http]
port = 9000

[plugins]
enabled = ["bank"]
"""
    )
    config = load_config(
        file,
        environ={
            "ESKIT_STORE__DSN": "postgresql://secret@db/eskit",
            "ESKIT_HTTP__TOKEN": "s3cret",
            "ESKIT_HTTP__ENABLED": "false",
            "ESKIT_PLUGINS__ENABLED": "bank, orders",
            "UNRELATED": "x",
        },
    )
    assert config.engine.node_id == "n1"
    assert config.store.dsn == "postgresql://secret@db/eskit"
    assert config.http.port == 9000
    assert config.http.token == "s3cret"
    assert config.http.enabled is False
    assert config.plugins.enabled == ("bank", "orders")
    assert "s3cret" not in repr(config)
    assert config.data_path("events.db") == Path("/var/lib/eskit/events.db")


@pytest.mark.parametrize(
    ("document", "message"),
    [
        (
            {"store": {"backend": "mysql"}},
            "store.backend: must be one of memory, sqlite, postgres, nats (got 'mysql')",
        ),
        ({"http": {"port": "abc"}}, "http.port: expected an integer, got 'abc'"),
        ({"http": {"port": 70000}}, "http.port: must be a TCP port"),
        ({"htp": {}}, "unknown key(s) htp"),
        ({"http": {"prot": 1}}, "http: unknown key(s) prot"),
        ({"http": 3}, "http: expected a table of keys"),
        ({"http": {"enabled": "maybe"}}, "http.enabled: expected true or false, got 'maybe'"),
        ({"engine": {"grace_period": -1}}, "engine.grace_period: must be > 0"),
        ({"plugins": {"enabled": [1]}}, "plugins.enabled: expected a list of strings"),
        ({"store": {"backend": "postgres"}}, "store.dsn: required for the postgres backend"),
        ({"bus": {"backend": "nats"}}, "nats.url: required when a backend is nats"),
        (
            {"locks": {"backend": "postgres"}},
            "locks.backend: postgres locks need store.backend = postgres",
        ),
    ],
)
def test_errors_name_the_key(document: dict[str, object], message: str) -> None:
    """Each invalid value gives one ConfigError that names its key path."""
    with pytest.raises(ConfigError) as info:
        parse_config(document, environ={}, source="eskit.toml")
    assert str(info.value).startswith("config error in eskit.toml: ")
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_unreadable_and_invalid_files(tmp_path: Path) -> None:
    """A missing file or broken TOML is a ConfigError, not a traceback."""
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "missing.toml", environ={})
    broken = tmp_path / "broken.toml"
    broken.write_text("[store\nbackend = ")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(broken, environ={})


@pytest.mark.parametrize(
    ("document", "key"),
    [
        ({"store": {"backend": "postgres", "dsn": ["postgresql://u:hunter2@h/db"]}}, "store.dsn"),
        ({"http": {"token": 4815162342}}, "http.token"),
        ({"nats": {"password": {"value": "hunter2"}}}, "nats.password"),
    ],
)
def test_errors_never_echo_a_secret(document: dict[str, object], key: str) -> None:
    """A secret key of the wrong type is named, but its value (which may be the secret) is not."""
    with pytest.raises(ConfigError) as caught:
        parse_config(document, environ={})
    message = str(caught.value)
    assert f"{key}: expected a string (the value is not shown" in message
    assert "hunter2" not in message
    assert "4815162342" not in message


def test_logging_section() -> None:
    """``[logging]``: INFO, text, no access log by default; names are checked, any case."""
    assert (Config().logging.level, Config().logging.format, Config().logging.access_log) == (
        "INFO",
        "text",
        False,
    )
    config = parse_config(
        {"logging": {"level": "debug", "format": "JSON", "access_log": True}}, environ={}
    )
    assert (config.logging.level, config.logging.format, config.logging.access_log) == (
        "DEBUG",
        "json",
        True,
    )
    with pytest.raises(ConfigError, match=r"logging\.level: must be one of DEBUG"):
        parse_config({"logging": {"level": "loud"}}, environ={})
    with pytest.raises(ConfigError, match=r"logging\.format: must be one of text, json"):
        parse_config({"logging": {"format": "xml"}}, environ={})
