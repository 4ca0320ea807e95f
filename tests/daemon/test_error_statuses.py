"""The HTTP layer alone maps engine errors to statuses, by one lookup along the MRO."""

from __future__ import annotations

import pytest

from engine.cluster import RemoteCommandError, UnknownOutcomeError
from engine.daemon.http import HttpError, status_for
from engine.errors import (
    ConcurrencyError,
    DomainError,
    EskitError,
    NotActiveError,
    NotFoundError,
    NotRunningError,
    RebuildInProgressError,
    RebuildNotActiveError,
    RetriesExhaustedError,
    StreamIdRequiredError,
    UnknownPluginError,
    UnknownProjectionError,
    UnknownQueryError,
    error_codes,
)


class _Overdrawn(DomainError, LookupError):
    """A plugin's rejection that also resembles a lookup."""

    code = "overdrawn"


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (UnknownPluginError("no plugin 'x'"), (404, "unknown_plugin")),
        (UnknownQueryError("no query 'x'"), (404, "unknown_query")),
        (UnknownProjectionError("no projection 'x'"), (404, "not_found")),
        (StreamIdRequiredError("Deposit needs a stream_id"), (400, "stream_id_required")),
        (RebuildInProgressError("being rebuilt"), (409, "rebuild_in_progress")),
        (RebuildNotActiveError("bank.balances", "node-b"), (409, "not_active")),
        (NotActiveError("bank.balances", "node-b"), (409, "not_active")),
        (NotRunningError("not running"), (503, "not_running")),
        (RetriesExhaustedError("s", 1, 2, 3), (409, "retries_exhausted")),
        (UnknownOutcomeError("c", "s", "node-b"), (504, "unknown_outcome")),
        (_Overdrawn("overdrawn"), (422, "overdrawn")),
        (HttpError(405, "method_not_allowed", "use GET"), (405, "method_not_allowed")),
        (EskitError("an engine error the ingress has no status for"), (500, "internal_error")),
        (RuntimeError("a bug"), (500, "internal_error")),
    ],
)
def test_each_engine_error_has_the_status_of_its_most_specific_class(
    error: BaseException, expected: tuple[int, str]
) -> None:
    """The engine raises errors with codes; status_for finds the status of the most
    specific class of the error's MRO in the ingress's table."""
    assert status_for(error) == expected


def test_error_codes_run_from_the_most_specific_to_the_root() -> None:
    """The codes a node forwards name the error, then every kind it is a case of."""
    assert error_codes(_Overdrawn("x")) == ("overdrawn", "domain_rejected", "eskit_error")
    assert error_codes(RebuildNotActiveError("p", None)) == ("not_active", "eskit_error")
    assert error_codes(ValueError("x")) == ()


@pytest.mark.parametrize(
    ("codes", "expected"),
    [
        (("insufficient_funds", "domain_rejected", "eskit_error"), 422),
        (("concurrency_conflict", "eskit_error"), 409),
        (("unknown_plugin", "not_found", "eskit_error"), 404),
        (("storage_full", "eskit_error"), 503),
        ((), 500),
    ],
)
def test_a_remote_error_gets_the_status_of_the_first_code_the_ingress_knows(
    codes: tuple[str, ...], expected: int
) -> None:
    """An error another node raised comes as codes, never a status: the ingress maps the
    first one it knows and keeps the owner's own code in the body."""
    error = RemoteCommandError(codes[0] if codes else "internal_error", "m", "node-b", codes)
    assert status_for(error) == (expected, codes[0] if codes else "internal_error")


def test_the_kinds_of_errors_the_tree_names_are_not_shadowed() -> None:
    """A lookup error that is also a domain rejection stays a rejection (422), and a
    not-found error stays a 404 whatever else it resembles."""
    assert status_for(_Overdrawn("x"))[0] == 422
    assert status_for(NotFoundError("x"))[0] == 404
    assert status_for(ConcurrencyError("s", 1, 2))[0] == 409
