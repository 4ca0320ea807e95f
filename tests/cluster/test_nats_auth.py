"""The engine's NATS connection to an external server with a token, a user and
password, an NKey, a credentials file (decentralized auth), or mutual TLS (real servers
configured for each; JWTs made here, certificates made with ``openssl``)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nkeys
import pytest
import trio

from engine.daemon.config import parse_config
from engine.daemon.engine import open_nats_from_config
from engine.drivers.nats_server import EmbeddedNats


def make_certificates(folder: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, all signed by the CA."""
    files = {
        name: folder / f"{name}.pem"
        for name in ("ca", "ca-key", "server", "server-key", "client", "client-key")
    }

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=folder)

    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=eskit test CA",
        "-keyout",
        str(files["ca-key"]),
        "-out",
        str(files["ca"]),
    )
    for name, extension in (
        ("server", "subjectAltName=IP:127.0.0.1"),
        ("client", "extendedKeyUsage=clientAuth"),
    ):
        request = folder / f"{name}.csr"
        openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            f"/CN={name}",
            "-keyout",
            str(files[f"{name}-key"]),
            "-out",
            str(request),
        )
        extfile = folder / f"{name}.ext"
        extfile.write_text(extension + "\n")
        openssl(
            "x509",
            "-req",
            "-in",
            str(request),
            "-CA",
            str(files["ca"]),
            "-CAkey",
            str(files["ca-key"]),
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            str(extfile),
            "-out",
            str(files[name]),
        )
    return files


async def run_server(nursery: trio.Nursery, folder: Path, extra_config: str) -> EmbeddedNats:
    """A nats-server with ``extra_config`` (authorization or TLS), started in ``nursery``."""
    server = EmbeddedNats.create(folder, extra_config=extra_config)
    with trio.fail_after(30):
        await nursery.start(server.run)
    return server


async def connect_and_echo(url: str, nats: dict[str, Any]) -> None:
    """Open the engine's NATS connection with ``[nats]`` options and make a round trip."""
    config = parse_config({"nats": {"url": url, **nats}, "bus": {"backend": "nats"}}, environ={})
    async with open_nats_from_config(config) as connection:
        assert connection is not None
        async with connection.subscribe("auth.echo") as sub:
            await connection.send("auth.echo", b"hello")
            with trio.fail_after(10):
                assert (await sub.messages.receive()).data == b"hello"


@pytest.fixture
async def nursery() -> AsyncIterator[trio.Nursery]:
    async with trio.open_nursery() as nursery:
        yield nursery
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("server_config", "good", "bad"),
    [
        ('authorization { token: "s3cret" }', {"token": "s3cret"}, {"token": "wrong"}),
        (
            'authorization { users: [{user: "eskit", password: "pw"}] }',
            {"user": "eskit", "password": "pw"},
            {"user": "eskit", "password": "nope"},
        ),
    ],
    ids=["token", "user-password"],
)
async def test_token_and_user_password(
    tmp_path: Path,
    nursery: trio.Nursery,
    server_config: str,
    good: dict[str, str],
    bad: dict[str, str],
) -> None:
    """The right secret connects; a wrong one fails at start with a connection error."""
    server = await run_server(nursery, tmp_path / "nats", server_config)
    await connect_and_echo(server.url, good)
    with pytest.raises(ConnectionError):
        await connect_and_echo(server.url, bad)


def _nkey_user(folder: Path, name: str) -> tuple[Path, str]:
    """A new NKey user: its seed file and its public key."""
    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    path = folder / f"{name}.nk"
    path.write_bytes(seed + b"\n")
    path.chmod(0o600)
    return path, nkeys.from_seed(seed).public_key.decode()


async def test_nkey_seed(tmp_path: Path, nursery: trio.Nursery) -> None:
    """A user known to the server by its NKey connects with its seed file (the seed signs
    the server's nonce; no secret crosses the wire); another user's seed is refused."""
    good, public = _nkey_user(tmp_path, "good")
    bad, _ = _nkey_user(tmp_path, "bad")
    server = await run_server(
        nursery, tmp_path / "nats", f'authorization {{ users: [{{nkey: "{public}"}}] }}'
    )
    await connect_and_echo(server.url, {"nkey_seed": str(good)})
    with pytest.raises(ConnectionError):
        await connect_and_echo(server.url, {"nkey_seed": str(bad)})


def _jwt(claims: dict[str, Any], signer: nkeys.KeyPair) -> str:
    """A NATS JWT (ed25519-nkey) of ``claims``, signed by ``signer``."""

    def b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    body = json.dumps({**claims, "jti": ""}, separators=(",", ":")).encode()
    jti = base64.b32encode(hashlib.sha256(body).digest()).decode().rstrip("=")
    header = b64(b'{"typ":"JWT","alg":"ed25519-nkey"}')
    payload = b64(json.dumps({**claims, "jti": jti}, separators=(",", ":")).encode())
    return f"{header}.{payload}.{b64(signer.sign(f'{header}.{payload}'.encode()))}"


def _keys(prefix: int) -> tuple[bytes, nkeys.KeyPair, str]:
    seed = nkeys.encode_seed(os.urandom(32), prefix)
    pair = nkeys.from_seed(seed)
    return seed, pair, pair.public_key.decode()


def _operator_setup(folder: Path) -> tuple[str, Path, Path]:
    """A decentralized-auth server config (an operator, one account preloaded), the
    credentials file of a user of that account, and that of a user signed by an account
    the server does not know."""
    now = int(time.time())
    _, operator, operator_public = _keys(nkeys.PREFIX_BYTE_OPERATOR)
    operator_jwt = _jwt(
        {
            "iat": now,
            "iss": operator_public,
            "sub": operator_public,
            "name": "eskit-test-operator",
            "nats": {"type": "operator", "version": 2},
        },
        operator,
    )
    no_limits = {"subs": -1, "data": -1, "payload": -1}
    unlimited = {**no_limits, "conn": -1, "wildcards": True}
    _, account, account_public = _keys(nkeys.PREFIX_BYTE_ACCOUNT)
    account_jwt = _jwt(
        {
            "iat": now,
            "iss": operator_public,
            "sub": account_public,
            "name": "eskit",
            "nats": {"type": "account", "version": 2, "limits": unlimited},
        },
        operator,
    )
    # JetStream (the embedded server runs it) needs a system account in operator mode.
    _, _, system_public = _keys(nkeys.PREFIX_BYTE_ACCOUNT)
    system_jwt = _jwt(
        {
            "iat": now,
            "iss": operator_public,
            "sub": system_public,
            "name": "SYS",
            "nats": {"type": "account", "version": 2, "limits": unlimited},
        },
        operator,
    )

    def creds(name: str, signer: nkeys.KeyPair, issuer: str) -> Path:
        seed, _, public = _keys(nkeys.PREFIX_BYTE_USER)
        user_jwt = _jwt(
            {
                "iat": now,
                "iss": issuer,
                "sub": public,
                "name": name,
                "nats": {"type": "user", "version": 2, "pub": {}, "sub": {}, **no_limits},
            },
            signer,
        )
        path = folder / f"{name}.creds"
        path.write_text(
            f"-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n"
            f"-----BEGIN USER NKEY SEED-----\n{seed.decode()}\n------END USER NKEY SEED------\n"
        )
        path.chmod(0o600)
        return path

    config = (
        f'operator: "{operator_jwt}"\nsystem_account: {system_public}\nresolver: MEMORY\n'
        f'resolver_preload: {{ {account_public}: "{account_jwt}",'
        f' {system_public}: "{system_jwt}" }}\n'
    )
    _, stranger, stranger_public = _keys(nkeys.PREFIX_BYTE_ACCOUNT)
    return (
        config,
        creds("member", account, account_public),
        creds("stranger", stranger, stranger_public),
    )


async def test_credentials_file(tmp_path: Path, nursery: trio.Nursery) -> None:
    """With decentralized auth (an operator JWT, a preloaded account), a user's
    credentials file (its JWT and NKey seed) connects; a user signed by an account the
    server does not trust is refused."""
    config, member, stranger = _operator_setup(tmp_path)
    server = await run_server(nursery, tmp_path / "nats", config)
    await connect_and_echo(server.url, {"credentials": str(member)})
    with pytest.raises(ConnectionError):
        await connect_and_echo(server.url, {"credentials": str(stranger)})


async def test_mutual_tls(tmp_path: Path, nursery: trio.Nursery) -> None:
    """With the CA and a client certificate the engine connects over TLS; without the
    client certificate the server refuses it."""
    files = await trio.to_thread.run_sync(make_certificates, tmp_path)
    server = await run_server(
        nursery,
        tmp_path / "nats",
        f'tls {{ cert_file: "{files["server"]}", key_file: "{files["server-key"]}",'
        f' ca_file: "{files["ca"]}", verify: true, timeout: 5 }}',
    )
    url = server.url.replace("nats://", "tls://")
    await connect_and_echo(
        url,
        {
            "tls_ca": str(files["ca"]),
            "tls_cert": str(files["client"]),
            "tls_key": str(files["client-key"]),
        },
    )
    with pytest.raises(ConnectionError):
        await connect_and_echo(url, {"tls_ca": str(files["ca"])})
