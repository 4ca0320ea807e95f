"""HTTPS: ``[http] tls_cert`` and ``tls_key`` serve the same routes over TLS, with a
self-signed certificate the test makes with ``openssl``."""

from __future__ import annotations

import json
import ssl
import subprocess
from pathlib import Path

import pytest
import trio

from engine.daemon.engine import open_engine
from engine.errors import ConfigError
from tests.daemon.rawhttp import Connection, address, get, post
from tests.daemon.test_engine import config_for


def _certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost, and its key."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


async def _tls_connection(url: str, cert: Path) -> Connection:
    host, port = address(url)
    context = ssl.create_default_context(cafile=str(cert))
    stream = await trio.open_ssl_over_tcp_stream(host, port, ssl_context=context)
    return Connection(stream)


async def test_https_serves_commands_and_queries(tmp_path: Path) -> None:
    """Over TLS a command runs and its stream is read back on a keep-alive connection; a
    client speaking plain HTTP to the TLS port is dropped and the server keeps serving."""
    cert, key = _certificate(tmp_path)
    config = config_for(tmp_path, http={"tls_cert": str(cert), "tls_key": str(key)})
    async with open_engine(config) as engine:
        url = engine.http_urls[0]
        assert url.startswith("https://127.0.0.1:")
        conn = await _tls_connection(url, cert)
        body = b'{"stream_id": "tls-1", "data": {"initial_balance": 3}}'
        await conn.send(post("/commands/bank/OpenAccount", body))
        assert (await conn.reply()).status == 200
        await conn.send(get("/streams/tls-1"))
        reply = await conn.reply()
        assert json.loads(reply.body)["events"][0]["stream_id"] == "tls-1"
        await conn.aclose()
        plain = await Connection.open(url)
        await plain.send(get("/health/live"))
        assert await plain.closed()
        conn = await _tls_connection(url, cert)
        await conn.send(get("/health/live"))
        assert (await conn.reply()).status == 200
        await conn.aclose()


async def test_tls_config_errors(tmp_path: Path) -> None:
    """A certificate without its key is a config error naming both keys; a missing file
    is a config error at start naming the files."""
    with pytest.raises(ConfigError, match=r"http\.tls_cert, http\.tls_key"):
        config_for(tmp_path, http={"tls_cert": "cert.pem"})
    config = config_for(
        tmp_path, http={"tls_cert": str(tmp_path / "no.pem"), "tls_key": str(tmp_path / "no.key")}
    )
    with pytest.raises((ConfigError, BaseExceptionGroup)) as raised:
        async with open_engine(config):
            pass
    error: BaseException = raised.value
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    assert isinstance(error, ConfigError)
    assert "no.pem" in str(error)
