"""dcb.events example: unique usernames, free again once the account is closed or renamed.

Global uniqueness usually needs a reservation table or a saga. With DCB the username is
a tag: registering checks that no event tagged ``username:<name>`` claims it, and the
events that release a name (closing the account, changing the username) carry the tag
too, so the same query sees the release.
"""

from __future__ import annotations

from typing import Any

import attrs
import trio

from engine.codec import Codec, EventRegistry
from engine.dcb.base import DcbEvent, Query
from engine.dcb.handler import (
    DecisionHandler,
    DecisionModel,
    DecisionProjection,
    combine_projections,
)
from engine.errors import DomainError
from engine.testing.dcb import DecisionSpec
from tests.dcb.conftest import DcbOpener


@attrs.frozen
class AccountRegistered:
    account_id: str
    username: str


@attrs.frozen
class AccountClosed:
    account_id: str
    username: str


@attrs.frozen
class UsernameChanged:
    account_id: str
    old_username: str
    new_username: str


@attrs.frozen
class RegisterAccount:
    account_id: str
    username: str


@attrs.frozen
class CloseAccount:
    account_id: str


@attrs.frozen
class ChangeUsername:
    account_id: str
    new_username: str


ACCOUNT_EVENTS = ["AccountRegistered", "AccountClosed", "UsernameChanged"]


def account_registry() -> EventRegistry:
    registry = EventRegistry()
    for cls in (AccountRegistered, AccountClosed, UsernameChanged):
        registry.register(cls)
    return registry


def username_claimed(username: str) -> DecisionProjection[bool, Any]:
    """Whether some open account holds ``username``."""

    def evolve(claimed: bool, event: Any) -> bool:
        if isinstance(event, AccountRegistered):
            return True
        if isinstance(event, UsernameChanged):
            return bool(event.new_username == username)
        return False

    return DecisionProjection(
        query=Query.of(types=ACCOUNT_EVENTS, tags=[f"username:{username}"]),
        initial_state=lambda: False,
        evolve=evolve,
    )


def current_username(account_id: str) -> DecisionProjection[str | None, Any]:
    """The account's username, or ``None`` when it does not exist or is closed."""

    def evolve(name: str | None, event: Any) -> str | None:
        if isinstance(event, AccountRegistered):
            return str(event.username)
        if isinstance(event, UsernameChanged):
            return str(event.new_username)
        return None

    return DecisionProjection(
        query=Query.of(types=ACCOUNT_EVENTS, tags=[f"account:{account_id}"]),
        initial_state=lambda: None,
        evolve=evolve,
    )


def _register(claimed: bool, command: RegisterAccount) -> list[DcbEvent[Any]]:
    if claimed:
        raise DomainError(f"Username {command.username!r} is claimed")
    return [registered(command.account_id, command.username)]


register_account: DecisionModel[bool, RegisterAccount, Any] = DecisionModel(
    projection=lambda command: username_claimed(command.username), decide=_register
)


def _close(username: str | None, command: CloseAccount) -> list[DcbEvent[Any]]:
    if username is None:
        raise DomainError(f"Account {command.account_id!r} is not open")
    return [
        DcbEvent(
            AccountClosed(command.account_id, username),
            [f"account:{command.account_id}", f"username:{username}"],
        )
    ]


close_account: DecisionModel[str | None, CloseAccount, Any] = DecisionModel(
    projection=lambda command: current_username(command.account_id), decide=_close
)


def _change(state: tuple[Any, ...], command: ChangeUsername) -> list[DcbEvent[Any]]:
    old, claimed = state
    if old is None:
        raise DomainError(f"Account {command.account_id!r} is not open")
    if claimed:
        raise DomainError(f"Username {command.new_username!r} is claimed")
    return [
        DcbEvent(
            UsernameChanged(command.account_id, old, command.new_username),
            [
                f"account:{command.account_id}",
                f"username:{old}",
                f"username:{command.new_username}",
            ],
        )
    ]


change_username: DecisionModel[tuple[Any, ...], ChangeUsername, Any] = DecisionModel(
    projection=lambda command: combine_projections(
        current_username(command.account_id), username_claimed(command.new_username)
    ),
    decide=_change,
)


def registered(account_id: str, username: str) -> DcbEvent[Any]:
    return DcbEvent(
        AccountRegistered(account_id, username), [f"account:{account_id}", f"username:{username}"]
    )


def closed(account_id: str, username: str) -> DcbEvent[Any]:
    return DcbEvent(
        AccountClosed(account_id, username), [f"account:{account_id}", f"username:{username}"]
    )


def test_register_a_free_username() -> None:
    """A username nobody holds can be registered."""
    DecisionSpec(register_account).given().when(RegisterAccount("a1", "u1")).then_expect(
        registered("a1", "u1")
    )


def test_register_a_claimed_username() -> None:
    """A username held by an open account is refused."""
    DecisionSpec(register_account).given(registered("a0", "u1")).when(
        RegisterAccount("a1", "u1")
    ).then_error("is claimed")


def test_reuse_after_the_account_is_closed() -> None:
    """Closing the account frees its username."""
    DecisionSpec(register_account).given(registered("a0", "u1"), closed("a0", "u1")).when(
        RegisterAccount("a1", "u1")
    ).then_expect(registered("a1", "u1"))


def test_reuse_after_a_username_change() -> None:
    """Changing a username frees the old one and claims the new one."""
    change = DcbEvent(
        UsernameChanged("a0", "u1", "u2"), ["account:a0", "username:u1", "username:u2"]
    )
    spec = DecisionSpec(register_account)
    spec.given(registered("a0", "u1"), change).when(RegisterAccount("a1", "u1")).then_expect(
        registered("a1", "u1")
    )
    # The registration of "u1" is not tagged "u2": the decision cannot (and need not) see it.
    spec.given(change).when(RegisterAccount("a1", "u2")).then_error("claimed")


def test_change_and_close_rules() -> None:
    """Only open accounts change or close, and only to a free name."""
    DecisionSpec(change_username).given(registered("a0", "u1"), registered("a9", "u2")).when(
        ChangeUsername("a0", "u2")
    ).then_error("claimed")
    DecisionSpec(close_account).given(registered("a0", "u1"), closed("a0", "u1")).when(
        CloseAccount("a0")
    ).then_error("not open")
    DecisionSpec(close_account).given(registered("a0", "u1")).when(CloseAccount("a0")).then_expect(
        closed("a0", "u1")
    )


async def test_concurrent_registrations_have_one_winner(open_dcb: DcbOpener) -> None:
    """Ten accounts racing for one username: one registers, nine are refused."""
    codec: Codec[Any] = Codec(account_registry())
    winners: list[str] = []
    refused: list[str] = []

    async def register(n: int) -> None:
        async with open_dcb(codec) as store:
            handler = DecisionHandler(model=register_account, store=store, max_attempts=50)
            try:
                await handler.handle(RegisterAccount(f"a{n}", "popular"))
                winners.append(f"a{n}")
            except DomainError:
                refused.append(f"a{n}")

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for n in range(10):
                nursery.start_soon(register, n)
    assert len(winners) == 1
    assert len(refused) == 9


async def test_username_is_free_again_after_closing(open_dcb: DcbOpener) -> None:
    """Register, close, register again under another account, against a real store."""
    codec: Codec[Any] = Codec(account_registry())
    async with open_dcb(codec) as store:
        register = DecisionHandler(model=register_account, store=store)
        close = DecisionHandler(model=close_account, store=store)
        rename = DecisionHandler(model=change_username, store=store)
        await register.handle(RegisterAccount("a1", "ann"))
        await rename.handle(ChangeUsername("a1", "anna"))
        await register.handle(RegisterAccount("a2", "ann"))
        await close.handle(CloseAccount("a1"))
        result = await register.handle(RegisterAccount("a3", "anna"))
        events, _ = await store.read(Query.of(tags=["username:anna"]))
    assert [type(e.data).__name__ for e in events] == [
        "UsernameChanged",
        "AccountClosed",
        "AccountRegistered",
    ]
    assert result.position == events[-1].position
