"""dcb.events example: opt-in token (a one-time password confirms a sign-up, once).

The sign-up is tagged with the email address and the OTP; confirming reads exactly those
events, so the token is usable once, only with its own email address, and only within
its validity window, without a table of pending tokens.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import attrs
import trio

from engine.codec import Codec, EventRegistry
from engine.dcb.base import DcbEvent, Query
from engine.dcb.handler import DecisionHandler, DecisionModel, DecisionProjection
from engine.errors import DomainError
from engine.testing.dcb import DecisionSpec
from tests.dcb.conftest import DcbOpener

OTP_VALIDITY = dt.timedelta(minutes=60)
T0 = dt.datetime(2025, 1, 1, 12, 0, tzinfo=dt.UTC)


@attrs.frozen
class SignUpInitiated:
    email: str
    otp: str
    name: str
    initiated_at: dt.datetime


@attrs.frozen
class SignUpConfirmed:
    email: str
    otp: str
    name: str


@attrs.frozen
class InitiateSignUp:
    email: str
    otp: str
    name: str
    now: dt.datetime


@attrs.frozen
class ConfirmSignUp:
    email: str
    otp: str
    now: dt.datetime


@attrs.frozen
class Pending:
    name: str
    initiated_at: dt.datetime
    confirmed: bool = False


def signup_registry() -> EventRegistry:
    registry = EventRegistry()
    registry.register(SignUpInitiated)
    registry.register(SignUpConfirmed)
    return registry


def email_confirmed(email: str) -> DecisionProjection[bool, Any]:
    return DecisionProjection(
        query=Query.of(types=["SignUpConfirmed"], tags=[f"email:{email}"]),
        initial_state=lambda: False,
        evolve=lambda confirmed, event: True,
    )


def pending_sign_up(email: str, otp: str) -> DecisionProjection[Pending | None, Any]:
    def evolve(pending: Pending | None, event: Any) -> Pending | None:
        if isinstance(event, SignUpInitiated):
            return Pending(event.name, event.initiated_at)
        if pending is not None:
            return attrs.evolve(pending, confirmed=True)
        return pending

    return DecisionProjection(
        query=Query.of(
            types=["SignUpInitiated", "SignUpConfirmed"], tags=[f"email:{email}", f"otp:{otp}"]
        ),
        initial_state=lambda: None,
        evolve=evolve,
    )


def _initiate(confirmed: bool, command: InitiateSignUp) -> list[DcbEvent[Any]]:
    if confirmed:
        raise DomainError(f"{command.email} is already signed up")
    return [initiated(command.email, command.otp, command.name, command.now)]


initiate_sign_up: DecisionModel[bool, InitiateSignUp, Any] = DecisionModel(
    projection=lambda command: email_confirmed(command.email), decide=_initiate
)


def _confirm(pending: Pending | None, command: ConfirmSignUp) -> list[DcbEvent[Any]]:
    if pending is None:
        raise DomainError("No pending sign-up for this OTP / email address")
    if pending.confirmed:
        raise DomainError("OTP was already used")
    if command.now - pending.initiated_at > OTP_VALIDITY:
        raise DomainError("OTP expired")
    return [confirmed(command.email, command.otp, pending.name)]


confirm_sign_up: DecisionModel[Pending | None, ConfirmSignUp, Any] = DecisionModel(
    projection=lambda command: pending_sign_up(command.email, command.otp), decide=_confirm
)


def initiated(email: str, otp: str, name: str, at: dt.datetime = T0) -> DcbEvent[Any]:
    return DcbEvent(SignUpInitiated(email, otp, name, at), [f"email:{email}", f"otp:{otp}"])


def confirmed(email: str, otp: str, name: str) -> DcbEvent[Any]:
    return DcbEvent(SignUpConfirmed(email, otp, name), [f"email:{email}", f"otp:{otp}"])


def test_confirm_a_pending_sign_up() -> None:
    """A valid OTP confirms its email address's sign-up."""
    DecisionSpec(confirm_sign_up).given(initiated("ann@x", "111", "Ann")).when(
        ConfirmSignUp("ann@x", "111", T0 + dt.timedelta(minutes=5))
    ).then_expect(confirmed("ann@x", "111", "Ann"))


def test_confirm_refusals() -> None:
    """A wrong OTP, a used OTP and an expired OTP are refused."""
    spec = DecisionSpec(confirm_sign_up)
    later = T0 + dt.timedelta(minutes=5)
    spec.given().when(ConfirmSignUp("ann@x", "999", later)).then_error("No pending sign-up")
    spec.given(initiated("ann@x", "111", "Ann"), confirmed("ann@x", "111", "Ann")).when(
        ConfirmSignUp("ann@x", "111", later)
    ).then_error("already used")
    spec.given(initiated("ann@x", "111", "Ann")).when(
        ConfirmSignUp("ann@x", "111", T0 + OTP_VALIDITY + dt.timedelta(seconds=1))
    ).then_error("expired")


def test_initiate_rules() -> None:
    """A sign-up starts unless the address is confirmed already."""
    spec = DecisionSpec(initiate_sign_up)
    spec.given().when(InitiateSignUp("ann@x", "111", "Ann", T0)).then_expect(
        initiated("ann@x", "111", "Ann")
    )
    spec.given(confirmed("ann@x", "111", "Ann")).when(
        InitiateSignUp("ann@x", "222", "Ann", T0)
    ).then_error("already signed up")


async def test_a_token_confirms_once_under_concurrency(open_dcb: DcbOpener) -> None:
    """Six concurrent confirmations of one OTP: one succeeds, five see it used."""
    codec: Codec[Any] = Codec(signup_registry())
    results: list[str] = []

    async def confirm() -> None:
        async with open_dcb(codec) as store:
            handler = DecisionHandler(model=confirm_sign_up, store=store, max_attempts=50)
            try:
                await handler.handle(ConfirmSignUp("ann@x", "111", T0 + dt.timedelta(minutes=1)))
                results.append("confirmed")
            except DomainError as exc:
                results.append(str(exc))

    async with open_dcb(codec) as store:
        await DecisionHandler(model=initiate_sign_up, store=store).handle(
            InitiateSignUp("ann@x", "111", "Ann", T0)
        )
        await DecisionHandler(model=initiate_sign_up, store=store).handle(
            InitiateSignUp("bob@x", "111", "Bob", T0)
        )
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for _ in range(6):
                nursery.start_soon(confirm)
    assert sorted(results) == ["OTP was already used"] * 5 + ["confirmed"]
    async with open_dcb(codec) as store:
        events, _ = await store.read(Query.of(types=["SignUpConfirmed"]))
    assert [e.data.email for e in events] == ["ann@x"]
