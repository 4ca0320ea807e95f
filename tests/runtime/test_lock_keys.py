"""How the distributed lock registries name keys: stable across versions and nodes,
distinct for distinct keys, and always valid for the server."""

from __future__ import annotations

import re

from engine.drivers.nats import MAX_TOKEN_LENGTH
from engine.locks.nats import lock_subject_token
from engine.locks.postgres import lock_id
from engine.testing.lock_contract import HOSTILE_LOCK_KEYS

#: A KV key that is one subject token: no ".", no wildcard, no space.
_KV_TOKEN = re.compile(r"[A-Za-z0-9_=-]+")


def test_nats_subject_tokens_are_single_valid_tokens_and_distinct() -> None:
    """Every hostile key maps to its own token made of KV-safe characters only, short
    enough for a subject; long keys become a digest."""
    tokens = [lock_subject_token(key) for key in HOSTILE_LOCK_KEYS]
    assert len(set(tokens)) == len(tokens)
    for token in tokens:
        assert _KV_TOKEN.fullmatch(token), token
        assert len(token) <= MAX_TOKEN_LENGTH
    assert lock_subject_token("runner/balances") == "cnVubmVyL2JhbGFuY2Vz"
    assert lock_subject_token("x" * 1000) == "=RPg1RJSlugO6F5Ko0-nFNMR6kYGYD956P0SwbvKufH8"
    assert lock_subject_token("") == "="


def test_pg_lock_ids_are_stable_signed_64_bit_and_scoped_by_schema() -> None:
    """A key's advisory lock id never changes between releases (nodes of two versions
    must agree), fits PostgreSQL's bigint, and differs between schemas."""
    assert lock_id("eskit", "runner/balances") == 2755913729139582041
    ids = {lock_id("eskit", key) for key in HOSTILE_LOCK_KEYS}
    assert len(ids) == len(HOSTILE_LOCK_KEYS)
    assert all(-(2**63) <= ident < 2**63 for ident in ids)
    assert lock_id("a", "k") != lock_id("b", "k")
