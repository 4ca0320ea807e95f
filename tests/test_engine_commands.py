"""Commands through the engine: what the ingress structures, answers and refuses."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from engine import CommandBinding, Decider, EventRegistry, Plugin
from engine.cluster import CommandRequest
from engine.daemon.config import Config, parse_config
from engine.daemon.engine import Engine, open_engine
from engine.daemon.http import status_for
from engine.errors import CodecError, InvalidCommandError, PluginError, UnknownStreamError
from tests.conftest import NatsTarget, PgTarget
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


@pytest.fixture(params=["memory", "sqlite", "postgres", "nats"])
def store_section(request: pytest.FixtureRequest) -> dict[str, Any]:
    """The ``[store]`` (and ``[nats]``) config of one backend on real servers."""
    if request.param in ("memory", "sqlite"):
        return {"store": {"backend": request.param}}
    if request.param == "postgres":
        pg: PgTarget = request.getfixturevalue("pg")
        return {"store": {"backend": "postgres", "dsn": pg.dsn, "schema": pg.schema}}
    nats: NatsTarget = request.getfixturevalue("nats")
    return {"store": {"backend": "nats", "namespace": nats.namespace}, "nats": {"url": nats.url}}


#: Rounds of concurrent copies, and copies per round, in the HTTP idempotency test.
ROUNDS, COPIES = 8, 10


async def test_concurrent_copies_over_http_all_answer_the_original(
    tmp_path: Path, store_section: dict[str, Any]
) -> None:
    """Ten HTTP clients sending one OpenAccount with one command_id at once, round after
    round: one event per round, and every client gets 200 with that event (never 422
    account_already_exists)."""
    async with open_engine(config_for(tmp_path, **store_section)) as engine:
        url = f"{engine.http_urls[0]}/commands/bank/OpenAccount"
        for round_ in range(ROUNDS):
            body = {
                "stream_id": f"acc-{round_}",
                "data": {"initial_balance": 100},
                "command_id": f"open-{round_}",
            }
            replies: list[tuple[int, Any]] = []

            async def send(body: dict[str, Any], replies: list[tuple[int, Any]]) -> None:
                replies.append(await http(url, method="POST", body=body))

            async with trio.open_nursery() as nursery:
                for _ in range(COPIES):
                    nursery.start_soon(send, body, replies)
            assert [status for status, _ in replies] == [200] * COPIES, (round_, replies)
            stored = await engine.store.load(f"acc-{round_}")
            assert len(stored) == 1
            assert {reply["events"][0]["event_id"] for _, reply in replies} == {
                str(stored[0].event_id)
            }
            assert sum(not reply["duplicate"] for _, reply in replies) <= 1


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
    with pytest.raises(InvalidCommandError, match=problem) as info:
        await engine.send_command(
            "bank", "OpenAccount", stream_id="acc", data=data, command_id=None
        )
    assert isinstance(info.value, CodecError)
    assert info.value.command == "OpenAccount"
    assert len(info.value.problems) == 1
    assert info.value.problems[0].startswith(problem)
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


# -- a plugin whose state holds a set --------------------------------------------------


@attrs.frozen
class Lend:
    copy: str


@attrs.frozen
class Lent:
    copy: str


@attrs.frozen
class Loans:
    loans: frozenset[str] = frozenset()
    since: dt.datetime | None = None


def _lend(state: Loans, command: Lend) -> list[Lent]:
    return [Lent(command.copy)]


def _lent(state: Loans, event: Lent) -> Loans:
    return Loans(state.loans | {event.copy}, dt.datetime(2024, 1, 1, tzinfo=dt.UTC))


def _library(state_type: type = Loans, event_type: type = Lent) -> Plugin:
    registry = EventRegistry()
    registry.register(event_type, name="library.Lent")
    decider: Decider[Any, Any, Any] = Decider(
        initial_state=state_type, decide=_lend, evolve=_lent, command_types=(Lend,)
    )
    return Plugin(
        name="library",
        events=registry,
        commands=[CommandBinding(decider=decider, stream_id=lambda c: "shelf", snapshot_every=1)],
    )


async def test_a_set_in_state_is_snapshotted_and_shown_as_a_list(tmp_path: Path) -> None:
    """A frozenset state field is saved in snapshots, read back equal, and shown as a JSON
    list (never a Python repr)."""
    async with open_engine(config_for(tmp_path), plugins=[_library()]) as engine:
        base = engine.http_urls[0]
        for copy in ("copy-2", "copy-1"):
            status, body = await http(
                f"{base}/commands/library/Lend", method="POST", body={"data": {"copy": copy}}
            )
            assert status == 200, body
        assert body["state"] == {
            "loans": ["copy-1", "copy-2"],
            "since": "2024-01-01T00:00:00+00:00",
        }
        snapshot = await engine.store.snapshots(Loans).load_snapshot("shelf")
    assert snapshot is not None
    assert (snapshot.version, snapshot.state) == (
        2,
        Loans(frozenset({"copy-1", "copy-2"}), dt.datetime(2024, 1, 1, tzinfo=dt.UTC)),
    )


class Opaque:
    """A type no codec can encode."""


@attrs.frozen
class BadState:
    handle: Opaque | None = None


@attrs.frozen
class BadEvent:
    copy: str
    scores: dict[int, int] = attrs.field(factory=dict)


@pytest.mark.parametrize(
    ("state_type", "event_type", "line"),
    [
        (
            BadState,
            Lent,
            "plugin 'library': state BadState: field handle: Opaque is not a type the codec "
            "can encode and decode",
        ),
        (
            Loans,
            BadEvent,
            "plugin 'library': event BadEvent: field scores: mapping keys of type int do not "
            "survive JSON",
        ),
    ],
)
def test_a_plugin_with_unencodable_types_fails_at_start_up(
    state_type: type, event_type: type, line: str
) -> None:
    """A plugin whose state or event types cannot be encoded is refused when it is built,
    with one line naming the class and the field."""
    with pytest.raises(PluginError) as info:
        _library(state_type, event_type)
    assert str(info.value).startswith(line)
    assert "\n" not in str(info.value)


# -- internal commands ---------------------------------------------------------------


async def test_internal_commands_are_unknown_from_outside_and_sent_by_automations(
    engine: Engine,
) -> None:
    """ReserveStock is internal: HTTP and the cluster ingress answer 404 unknown_command
    (and do not list it), while the reservation automation still sends it."""
    base = engine.http_urls[0]
    status, body = await http(
        f"{base}/commands/orders/ReserveStock",
        method="POST",
        body={"stream_id": "inventory-book", "data": {"order_id": "o", "quantity": 1}},
    )
    assert status == 404
    assert body["error"]["code"] == "unknown_command"
    assert "ReserveStock" in body["error"]["message"]
    assert (
        "has: AddItem, CancelOrder, CreateOrder, Restock, ShipOrder, SubmitOrder)"
        in (body["error"]["message"])
    )
    request = CommandRequest(
        plugin="orders",
        command="ReserveStock",
        stream_id="inventory-book",
        data={"order_id": "o", "quantity": 1},
        command_id=None,
    )
    with pytest.raises(Exception, match="has no command 'ReserveStock'") as info:
        await engine.handle_local(request)
    assert status_for(info.value) == (404, "unknown_command")
    assert await engine.store.head_position() == 0
    for stream_id, command, data in [
        ("inventory-book", "Restock", {"quantity": 3}),
        ("order-1", "CreateOrder", {"customer_id": "c-1"}),
        ("order-1", "AddItem", {"sku": "book", "quantity": 2, "unit_price": 900}),
        ("order-1", "SubmitOrder", {}),
    ]:
        status, body = await http(
            f"{base}/commands/orders/{command}",
            method="POST",
            body={"stream_id": stream_id, "data": data},
        )
        assert status == 200, body
    with trio.fail_after(10):
        while await engine.store.stream_version("inventory-book") < 2:
            await engine.runners["orders.reserve-inventory"].wait_caught_up()
    reserved = (await engine.store.load("inventory-book"))[1]
    assert reserved.type == "inventory.StockReserved"


def test_internal_names_only_the_deciders_commands() -> None:
    """``internal`` may be True or a set of the decider's own command classes."""
    decider: Decider[Any, Any, Any] = Decider(
        initial_state=Loans, decide=_lend, evolve=_lent, command_types=(Lend,)
    )
    assert CommandBinding(decider=decider, internal=True).is_internal(Lend)
    assert not CommandBinding(decider=decider).is_internal(Lend)
    assert CommandBinding(decider=decider, internal=[Lend]).public_command_names() == {}
    with pytest.raises(ValueError, match="internal names commands the decider does not handle"):
        CommandBinding(decider=decider, internal={Lent})


# -- reading streams -----------------------------------------------------------------


async def test_an_unknown_stream_is_a_404_and_a_page_past_the_end_is_empty(
    engine: Engine,
) -> None:
    """GET /streams/<never written> answers 404 unknown_stream; a stream with events paged
    past its end answers 200 with no events."""
    base = engine.http_urls[0]
    status, body = await http(f"{base}/streams/ghost")
    assert (status, body["error"]["code"]) == (404, "unknown_stream")
    status, body = await http(f"{base}/streams/ghost?after=3")
    assert (status, body["error"]["code"]) == (404, "unknown_stream")
    with pytest.raises(UnknownStreamError):
        await engine.read_stream("ghost", after=0, limit=10)
    status, _ = await http(
        f"{base}/commands/bank/OpenAccount",
        method="POST",
        body={"stream_id": "acc", "data": {"initial_balance": 1}},
    )
    assert status == 200
    status, body = await http(f"{base}/streams/acc?after=1")
    assert (status, body) == (200, {"stream_id": "acc", "events": []})
    assert await engine.read_stream("acc", after=0, limit=0) == {"stream_id": "acc", "events": []}
    status, body = await http(f"{base}/streams/acc")
    assert [e["version"] for e in body["events"]] == [1]
