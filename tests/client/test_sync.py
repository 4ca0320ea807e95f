"""The blocking client against a live engine process."""

from __future__ import annotations

import itertools
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from engine.client import (
    Client,
    ClientError,
    EngineUnreachableError,
    OutcomeUnknownError,
    RemoteDomainError,
    RetryPolicy,
)
from engine.errors import (
    CodecError,
    DomainError,
    NotCaughtUpError,
    NotFoundError,
    UnknownCommandError,
    UnknownStreamError,
)
from tests.client.conftest import LiveEngine, ThreadProxy
from tests.servers import free_port

NO_RETRY = RetryPolicy(attempts=1)


def account() -> str:
    """A stream id no other test uses."""
    return f"acc-{uuid.uuid4().hex[:12]}"


def test_send_then_read_your_write(live_engine: LiveEngine) -> None:
    """A command's result carries its position, and a query waiting for it sees the write."""
    stream = account()
    with Client(live_engine.url) as client:
        opened = client.send("bank", "OpenAccount", {"initial_balance": 100}, stream_id=stream)
        deposited = client.send("bank", "Deposit", {"amount": 5}, stream_id=stream)
        balance = client.query("bank", "balance", {"account": stream}, wait_for_position=deposited)
        assert client.last_position == deposited.position
    assert (opened.version, deposited.version) == (1, 2)
    assert opened.duplicate is False
    assert uuid.UUID(opened.command_id)  # made up by the client
    assert deposited.state == {"exists": True, "balance": 105}
    assert [e.type for e in deposited.events] == ["bank.MoneyDeposited"]
    assert deposited.events[0].data == {"amount": 5}
    assert balance == {"account": stream, "balance": 105}


def test_errors_are_the_engines_own_classes(live_engine: LiveEngine) -> None:
    """Each error answer raises a typed error that is also the engine's class for its code."""
    stream = account()
    with Client(live_engine.url) as client:
        client.send("bank", "OpenAccount", {"initial_balance": 10}, stream_id=stream)
        with pytest.raises(DomainError) as rejected:
            client.send("bank", "Withdraw", {"amount": 50}, stream_id=stream)
        assert isinstance(rejected.value, RemoteDomainError)
        assert (rejected.value.status, rejected.value.error_code) == (422, "insufficient_funds")
        assert "insufficient funds" in rejected.value.message
        with pytest.raises(CodecError, match=r"data\.amount"):
            client.send("bank", "Deposit", {"amount": "5"}, stream_id=stream)
        with pytest.raises(UnknownCommandError):
            client.send("bank", "Steal", {}, stream_id=stream)
        with pytest.raises(UnknownStreamError):
            client.stream(account())
        with pytest.raises(NotFoundError) as missing:
            client.query("bank", "balance", {"account": account()})
        assert missing.value.status == 404


def test_hostile_stream_ids_arrive_verbatim(live_engine: LiveEngine) -> None:
    """Stream ids with slashes, query syntax, percent signs and Unicode are sent verbatim."""
    stream = f"a/../b?c=%2F#x {uuid.uuid4().hex[:6]} é"
    with Client(live_engine.url) as client:
        result = client.send("bank", "OpenAccount", {"initial_balance": 1}, stream_id=stream)
        events = client.stream(stream)
    assert result.stream_id == stream
    assert [(e.stream_id, e.version) for e in events] == [(stream, 1)]


def test_retry_across_a_cut_connection_acts_once(
    live_engine: LiveEngine, proxy: ThreadProxy
) -> None:
    """A command whose reply is cut is sent again with its command id and acts once."""
    stream = account()
    with Client(proxy.url) as client:
        client.send("bank", "OpenAccount", {"initial_balance": 100}, stream_id=stream)
        proxy.arm()
        result = client.send("bank", "Deposit", {"amount": 7}, stream_id=stream)
        assert proxy.cuts == 1
        assert result.duplicate is True  # the retry was answered from the first attempt
        assert result.version == 2
        assert [e.version for e in result.events] == [2]
        events = client.stream(stream)
    assert [e.type for e in events] == ["bank.AccountOpened", "bank.MoneyDeposited"]


def test_unknown_outcome_then_a_manual_retry_acts_once(
    live_engine: LiveEngine, proxy: ThreadProxy
) -> None:
    """Without retries a cut reply is an unknown outcome; resending its command id acts once."""
    stream = account()
    with Client(proxy.url, retry=NO_RETRY) as client:
        client.send("bank", "OpenAccount", {"initial_balance": 100}, stream_id=stream)
        proxy.arm()
        with pytest.raises(OutcomeUnknownError) as unknown:
            client.send("bank", "Withdraw", {"amount": 40}, stream_id=stream)
        assert unknown.value.stream_id == stream
        again = client.send(
            "bank",
            "Withdraw",
            {"amount": 40},
            stream_id=stream,
            command_id=unknown.value.command_id,
        )
        assert again.duplicate is True
        assert again.state == {"exists": True, "balance": 60}
        assert len(client.stream(stream)) == 2


def test_an_engine_that_is_not_there(live_engine: LiveEngine) -> None:
    """Nothing listening: every attempt fails to connect and the error says so."""
    url = f"http://127.0.0.1:{free_port()}"
    policy = RetryPolicy(attempts=3, initial_backoff=0.0)
    with Client(url, retry=policy) as client:
        with pytest.raises(EngineUnreachableError) as unreachable:
            client.send("bank", "OpenAccount", {"initial_balance": 1}, stream_id=account())
        assert unreachable.value.attempts == 3
        with pytest.raises(ConnectionError):
            client.ready()


def test_a_read_that_does_not_catch_up_is_not_caught_up(live_engine: LiveEngine) -> None:
    """A query waiting for a position far ahead raises NotCaughtUpError (503), not a 500."""
    with (
        Client(live_engine.url, retry=NO_RETRY) as client,
        pytest.raises(NotCaughtUpError) as waited,
    ):
        client.query("bank", "totals", wait_for_position=10**12)
    assert isinstance(waited.value, ClientError)
    assert (waited.value.status, waited.value.error_code) == (503, "not_caught_up")
    assert "did not reach position 1000000000000 in time" in waited.value.message
    assert waited.value.position == 10**12


def test_follow_streams_the_log(live_engine: LiveEngine) -> None:
    """Following the log yields every event after a position, in order, then new ones."""
    stream = account()
    with Client(live_engine.url) as client:
        first = client.send("bank", "OpenAccount", {"initial_balance": 5}, stream_id=stream)
        start = first.events[0].position
        client.send("bank", "Deposit", {"amount": 1}, stream_id=stream)
        follower = client.follow(after=start - 1, limit=1, poll_interval=0.05)
        seen = list(itertools.islice(follower, 2))
        later = client.send("bank", "Deposit", {"amount": 2}, stream_id=stream)
        for event in follower:  # the engine stores other tests' events too
            seen.append(event)
            if event.position == later.position:
                break
    positions = [e.position for e in seen]
    assert positions == list(range(start, later.position + 1))
    mine = [(e.version, e.data) for e in seen if e.stream_id == stream]
    assert mine == [(1, {"initial_balance": 5}), (2, {"amount": 1}), (3, {"amount": 2})]


def test_ready(live_engine: LiveEngine) -> None:
    """``ready()`` is true once the engine serves."""
    with Client(live_engine.url) as client:
        assert client.ready() is True
        assert "bank.balances" in client.runners()


def test_one_client_shared_by_threads(live_engine: LiveEngine) -> None:
    """Eight threads sharing one client each get their own answers; last_position is the highest."""
    stream = account()
    with Client(live_engine.url) as client:
        client.send("bank", "OpenAccount", {"initial_balance": 0}, stream_id=stream)
        with ThreadPoolExecutor(max_workers=8) as pool:
            results = list(
                pool.map(
                    lambda n: client.send("bank", "Deposit", {"amount": n}, stream_id=stream),
                    range(1, 41),
                )
            )
        assert client.last_position == max(r.position or 0 for r in results)
        assert sorted(r.version for r in results) == list(range(2, 42))
        balance = client.query(
            "bank", "balance", {"account": stream}, wait_for_position=client.last_position
        )
    assert balance == {"account": stream, "balance": sum(range(1, 41))}


def test_from_env(live_engine: LiveEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    """``Client.from_env`` takes the URL and token from ESKIT_URL and ESKIT_TOKEN, like the CLI."""
    monkeypatch.setenv("ESKIT_URL", live_engine.url)
    monkeypatch.setenv("ESKIT_TOKEN", "")
    with Client.from_env() as client:
        assert client.url == live_engine.url
        assert client.ready() is True
