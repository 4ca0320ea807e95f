"""``GET /openapi.json`` and ``eskit openapi``: a valid OpenAPI 3.1 document whose command
schemas, derived from the plugins' attrs classes, accept what the engine accepts."""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any, Literal

import attrs
import jsonschema
import pytest
from openapi_spec_validator import validate

from engine.codec import make_converter
from engine.daemon.engine import open_engine
from engine.daemon.openapi import schema_for
from tests.daemon.test_engine import config_for, http


def data_validator(document: dict[str, Any], component: str) -> jsonschema.Draft202012Validator:
    """A validator of one component schema, resolving its references inside ``document``."""
    schema = {"$ref": f"#/components/schemas/{component}", "components": document["components"]}
    return jsonschema.Draft202012Validator(schema)


async def test_the_running_engine_describes_its_commands_and_queries(tmp_path: Path) -> None:
    """The live document validates and lists each plugin command with its fields, and queries."""
    async with open_engine(config_for(tmp_path)) as engine:
        status, document = await http(f"{engine.http_urls[0]}/openapi.json")
    assert status == 200
    validate(document)
    assert document["openapi"] == "3.1.0"
    assert document["servers"] == [{"url": engine.http_urls[0]}]
    paths = document["paths"]
    commands = {p for p in paths if p.startswith("/commands/")}
    assert commands == {
        "/commands/bank/OpenAccount",
        "/commands/bank/Deposit",
        "/commands/bank/Withdraw",
        "/commands/orders/CreateOrder",
        "/commands/orders/AddItem",
        "/commands/orders/SubmitOrder",
        "/commands/orders/ShipOrder",
        "/commands/orders/CancelOrder",
        "/commands/orders/Restock",
    }  # ReserveStock is internal: not there
    schemas = document["components"]["schemas"]
    assert schemas["bank.Deposit"]["properties"] == {"amount": {"type": "integer"}}
    assert schemas["bank.Deposit"]["required"] == ["amount"]
    assert schemas["orders.AddItem"]["properties"] == {
        "sku": {"type": "string", "minLength": 1},
        "quantity": {"type": "integer", "exclusiveMinimum": 0},
        "unit_price": {"type": "integer", "minimum": 0},
    }
    assert schemas["orders.CreateOrder"]["required"] == ["customer_id"]
    assert schemas["orders.CreateOrder"]["properties"]["digital"] == {
        "type": "boolean",
        "default": False,
    }
    deposit = paths["/commands/bank/Deposit"]["post"]
    body = deposit["requestBody"]["content"]["application/json"]["schema"]
    assert body["properties"]["data"] == {"$ref": "#/components/schemas/bank.Deposit"}
    assert body["required"] == ["stream_id", "data"]
    result = deposit["responses"]["200"]["content"]["application/json"]["schema"]
    assert result["properties"]["state"] == {"$ref": "#/components/schemas/bank.BankAccount"}
    assert set(deposit["responses"]) >= {"200", "400", "404", "409", "422", "504"}
    balance = paths["/queries/bank/balance"]["get"]
    assert [p["name"] for p in balance["parameters"]] == ["wait_for_position", "params"]
    assert "/queries/orders/orders" in paths
    assert "bank.AccountOpened" in schemas  # event payloads, for readers of the log
    assert "security" not in document


async def test_command_schemas_accept_what_the_engine_accepts(tmp_path: Path) -> None:
    """Payloads the schema refuses, the engine refuses (400); those it accepts, it takes."""
    async with open_engine(config_for(tmp_path)) as engine:
        base = engine.http_urls[0]
        _, document = await http(f"{base}/openapi.json")
        deposit = data_validator(document, "bank.Deposit")
        opening = data_validator(document, "bank.OpenAccount")
        assert opening.is_valid({"initial_balance": 5})
        status, _ = await http(
            f"{base}/commands/bank/OpenAccount",
            method="POST",
            body={"stream_id": "acc", "data": {"initial_balance": 5}},
        )
        assert status == 200
        for refused in (
            {"amount": "5"},
            {"amount": 5.5},
            {"amount": True},
            {"amount": 1, "x": 1},
            {},
        ):
            assert not deposit.is_valid(refused), refused
            status, answer = await http(
                f"{base}/commands/bank/Deposit",
                method="POST",
                body={"stream_id": "acc", "data": refused},
            )
            assert (status, answer["error"]["code"]) == (400, "codec_error"), refused
        assert deposit.is_valid({"amount": 3})
        status, answer = await http(
            f"{base}/commands/bank/Deposit",
            method="POST",
            body={"stream_id": "acc", "data": {"amount": 3}},
        )
        assert status == 200
        data_validator(document, "bank.BankAccount").validate(answer["state"])
        stored = jsonschema.Draft202012Validator(
            {"$ref": "#/components/schemas/StoredEvent", "components": document["components"]}
        )
        stored.validate(answer["events"][0])
        data_validator(document, "bank.MoneyDeposited").validate(answer["events"][0]["data"])


async def test_with_a_token_the_document_needs_it_and_says_so(tmp_path: Path) -> None:
    """With a bearer token configured the route needs it and the document declares it."""
    async with open_engine(config_for(tmp_path, http={"token": "t0ken"})) as engine:
        url = f"{engine.http_urls[0]}/openapi.json"
        status, _ = await http(url)
        assert status == 401
        status, document = await http(url, token="t0ken")
    assert status == 200
    validate(document)
    assert document["security"] == [{"bearer": []}]
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert document["paths"]["/health/live"]["get"]["security"] == []


def test_eskit_openapi_prints_the_document_without_serving(tmp_path: Path) -> None:
    """``eskit openapi`` prints a valid document with the same commands and queries."""
    config = tmp_path / "eskit.toml"
    config.write_text(
        f'[engine]\nnode_id = "doc"\ndata_dir = "{tmp_path / "data"}"\n[http]\nport = 9123\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("ESKIT_")}
    printed = subprocess.run(
        [sys.executable, "-m", "engine", "openapi", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=True,
    )
    document = json.loads(printed.stdout)
    validate(document)
    assert document["servers"] == [{"url": "http://127.0.0.1:9123"}]
    assert document["info"]["title"] == "eskit engine doc"
    assert "/commands/bank/Deposit" in document["paths"]
    assert "/queries/bank/balance" in document["paths"]
    assert "/queries/orders/orders" in document["paths"]
    assert not (tmp_path / "data").exists()  # nothing was opened


class Colour(enum.Enum):
    RED = "red"
    BLUE = "blue"


@attrs.frozen
class Node:
    """A tree node, to check a class that contains itself."""

    label: str
    children: tuple[Node, ...] = ()


@attrs.frozen
class Everything:
    """A command with every kind of field the codec carries."""

    name: str
    count: int
    ratio: float
    flag: bool
    blob: bytes
    ident: uuid.UUID
    when: dt.datetime
    day: dt.date
    price: decimal.Decimal
    colour: Colour
    mode: Literal["fast", "slow"]
    maybe: int | None
    tags: frozenset[str]
    pair: tuple[int, str]
    items: list[Node]
    scores: dict[str, float]
    anything: Any
    note: str = "none"
    extra: list[int] = attrs.Factory(list)
    size: int = attrs.field(default=1, validator=[attrs.validators.ge(1), attrs.validators.le(9)])
    choice: str = attrs.field(default="a", validator=attrs.validators.in_(["a", "b"]))


def test_schema_for_covers_the_codecs_types() -> None:
    """The schema of a class with every codec type is valid JSON Schema and fits its values."""
    schema = schema_for(Everything)
    jsonschema.Draft202012Validator.check_schema(schema)
    props = schema["properties"]
    assert props["blob"] == {"type": "string", "contentEncoding": "base64"}
    assert props["ident"] == {"type": "string", "format": "uuid"}
    assert props["when"] == {"type": "string", "format": "date-time"}
    assert props["colour"]["enum"] == ["red", "blue"]
    assert props["mode"] == {"enum": ["fast", "slow"]}
    assert props["maybe"] == {"anyOf": [{"type": "integer"}, {"type": "null"}]}
    assert props["tags"]["uniqueItems"] is True
    assert props["size"] == {"type": "integer", "minimum": 1, "maximum": 9, "default": 1}
    assert props["choice"] == {"type": "string", "enum": ["a", "b"], "default": "a"}
    assert props["extra"] == {"type": "array", "items": {"type": "integer"}, "default": []}
    assert set(schema["required"]) == {
        "name", "count", "ratio", "flag", "blob", "ident", "when", "day", "price",
        "colour", "mode", "maybe", "tags", "pair", "items", "scores", "anything",
    }  # fmt: skip
    value = Everything(
        name="n",
        count=1,
        ratio=0.5,
        flag=True,
        blob=b"\x00\xff",
        ident=uuid.uuid4(),
        when=dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
        day=dt.date(2026, 1, 2),
        price=decimal.Decimal("1.10"),
        colour=Colour.BLUE,
        mode="slow",
        maybe=None,
        tags=frozenset({"x", "y"}),
        pair=(1, "one"),
        items=[Node("root", (Node("leaf"),))],
        scores={"a": 1.5},
        anything={"free": [1]},
    )
    validator = jsonschema.Draft202012Validator(schema)
    plain = make_converter().unstructure(value)
    validator.validate(plain)
    assert not validator.is_valid({**plain, "count": "1"})
    assert not validator.is_valid({**plain, "unknown": 1})
    assert not validator.is_valid({**plain, "items": [{"label": "x", "children": [{}]}]})


@pytest.mark.parametrize("closed", [True, False])
def test_closed_schemas_refuse_unknown_keys(closed: bool) -> None:
    """Command schemas refuse unknown keys; state and event schemas allow them."""
    schema = schema_for(Node, closed=closed)
    validator = jsonschema.Draft202012Validator(schema)
    assert validator.is_valid({"label": "x", "more": 1}) is not closed


async def test_the_routes_open_without_a_token_are_the_ones_the_document_says(
    tmp_path: Path,
) -> None:
    """With a token set, exactly the routes marked ``security: []`` (liveness, the status page) answer without it."""
    async with open_engine(config_for(tmp_path, http={"token": "t0ken"})) as engine:
        base = engine.http_urls[0]
        _, document = await http(f"{base}/openapi.json", token="t0ken")
        open_routes, closed_routes = [], []
        for path, operations in document["paths"].items():
            if "get" not in operations or "{" in path:
                continue
            status, _ = await http(f"{base}{path}")
            (closed_routes if status == 401 else open_routes).append(path)
            marked_open = operations["get"].get("security") == []
            assert marked_open == (status != 401), path
    assert sorted(open_routes) == ["/health/live", "/status"]
    assert "/openapi.json" in closed_routes
