"""Commands through the engine: what the ingress structures, answers and refuses."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from engine.daemon.config import Config, parse_config
from engine.daemon.engine import Engine, open_engine
from engine.errors import CodecError
from tests.daemon.test_engine import http, wait_for


def config_for(tmp_path: Path, **sections: dict[str, Any]) -> Config:
    """A one-node engine on a SQLite file in ``tmp_path``, HTTP on a free port."""
    document: dict[str, Any] = {
        "engine": {"data_dir": str(tmp_path / "data"), "node_id": "test-node"},
        "http": {"port": 0},
        "runners": {"poll_interval": 0.5},
    }
    for name, values in sections.items():
        document.setdefault(name, {}).update(values)
    return parse_config(document, environ={})


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[Engine]:
    async with open_engine(config_for(tmp_path)) as running:
        yield running


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ({"initial_balance": 5.7}, "data.initial_balance: expected an integer, got a number 5.7"),
        ({"initial_balance": True}, "data.initial_balance: expected an integer, got a boolean"),
        ({"initial_balance": "5"}, "data.initial_balance: expected an integer, got a string"),
    ],
)
async def test_lossy_numbers_are_refused_naming_the_field(
    engine: Engine, data: dict[str, Any], problem: str
) -> None:
    """5.7, true or "5" for an int field is a 400 naming the field, and nothing is stored."""
    with pytest.raises(CodecError, match=problem):
        await engine.send_command(
            "bank", "OpenAccount", stream_id="acc", data=data, command_id=None
        )
    status, body = await http(
        f"{engine.http_urls[0]}/commands/bank/OpenAccount",
        method="POST",
        body={"stream_id": "acc", "data": data},
    )
    assert status == 400
    assert body["error"]["code"] == "codec_error"
    assert problem in body["error"]["message"]
    assert await engine.store.head_position() == 0


async def test_a_deposit_of_int64_max_is_refused_and_the_read_model_stays_integer(
    engine: Engine,
) -> None:
    """The bank bounds its amounts: a deposit of 2**63-1 is a 400, and the SQL balance stays
    an exact integer."""
    base = engine.http_urls[0]
    status, _ = await http(
        f"{base}/commands/bank/OpenAccount",
        method="POST",
        body={"stream_id": "acc", "data": {"initial_balance": 500}},
    )
    assert status == 200
    status, body = await http(
        f"{base}/commands/bank/Deposit",
        method="POST",
        body={"stream_id": "acc", "data": {"amount": 2**63 - 1}},
    )
    assert status == 400
    assert (
        "data.amount: must be between 1 and 1000000000000, got 9223372036854775807"
        in body["error"]["message"]
    )
    await wait_for(engine, "bank.balances")
    status, body = await http(f"{base}/queries/bank/balance?account=acc")
    assert (status, body) == (200, {"account": "acc", "balance": 500})
