"""The PostgreSQL store's SQL side: tables, the server-side append function,
migrations, queries, and the blocking units of work that the store hands to the driver's
worker threads (one call each, so one thread hop per operation).

Everything is created in one schema whose name is always quoted, so any name works.
``schema_migrations`` records which of :data:`MIGRATIONS` ran; opening a store applies
the missing ones under an advisory lock, so concurrent openers do not race.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, TypeVar

import attrs
import psycopg
from psycopg import errors as pg_errors

from engine.codec import Codec
from engine.drivers.postgres import PgConnection
from engine.errors import EskitError
from engine.events import Event, ExpectedVersion
from engine.stores.encoding import EncodedNewEvent, decode_row
from engine.stores.pg_support import (
    advisory_key,
    channel_name,
    check_schema_name,
    compose,
    connection_lost,
    execute,
    fetch_one,
    migrate_schema,
    plpgsql_function,
    write_each_on_failure,
)

__all__ = [
    "EXPECTED_ANY",
    "EXPECTED_STREAM_EXISTS",
    "MIGRATIONS",
    "STATUS_CONFLICT",
    "STATUS_KEY_CONFLICT",
    "STATUS_OK",
    "STATUS_REPLAY",
    "AppendArgs",
    "AppendRow",
    "Queries",
    "call_append",
    "connection_lost",
    "execute",
    "expected_code",
    "fetch_events",
    "fetch_idempotent",
    "fetch_one",
    "migrate",
    "save_checkpoint",
    "write_group",
]

E = TypeVar("E")

#: ``expected`` codes of the append function; exact versions are themselves (>= 0).
EXPECTED_ANY = -1
EXPECTED_STREAM_EXISTS = -3

#: Per-append results of the append function.
STATUS_OK = 0
STATUS_CONFLICT = 1
STATUS_REPLAY = 2
STATUS_KEY_CONFLICT = 3


def expected_code(expected: int | ExpectedVersion) -> int:
    """Encode an expected version for the append function.

    Raises:
        ValueError: A negative exact version.
        TypeError: Neither an ``int`` nor an :class:`ExpectedVersion`.
    """
    if isinstance(expected, ExpectedVersion):
        if expected is ExpectedVersion.ANY:
            return EXPECTED_ANY
        if expected is ExpectedVersion.STREAM_EXISTS:
            return EXPECTED_STREAM_EXISTS
        return 0
    if isinstance(expected, int) and not isinstance(expected, bool):
        if expected < 0:
            raise ValueError(f"expected_version must be >= 0, got {expected}")
        return expected
    raise TypeError(f"expected_version must be an int or an ExpectedVersion, got {expected!r}")


def _key(purpose: str, schema: str) -> int:
    return advisory_key("eskit", purpose, schema)


_q = compose


_COLUMNS = (
    "position, stream_id, version, type, schema_version, data, metadata, event_id, recorded_at"
)


@attrs.frozen
class Queries:
    """The SQL of one schema, composed once."""

    schema: str
    channel: str
    append_lock: int
    migrate_lock: int
    append: bytes
    load: bytes
    read_all: bytes
    head: bytes
    stream_version: bytes
    find_key: bytes
    load_checkpoint: bytes
    insert_checkpoint: bytes
    update_checkpoint: bytes
    save_snapshot: bytes
    load_snapshot: bytes

    @classmethod
    def for_schema(cls, schema: str) -> Queries:
        """The queries for ``schema`` (cached).

        Raises:
            ValueError: The name is empty, has a NUL, or is longer than PostgreSQL's 63
                bytes (PostgreSQL would silently truncate it).
        """
        return _queries_for(schema)


@functools.lru_cache(maxsize=64)
def _queries_for(schema: str) -> Queries:
    check_schema_name(schema)
    channel = channel_name("eskit_", schema)
    return Queries(
        schema=schema,
        channel=channel,
        append_lock=_key("append", schema),
        migrate_lock=_key("migrate", schema),
        append=_q(
            "SELECT o_status, o_version, o_other, o_positions FROM {s}.append_events("
            "%b::text[], %b::bigint[], %b::text[], %b::int[], %b::timestamptz[], "
            "%b::int[], %b::int[], %b::text[], %b::int[], %b::bytea[], %b::bytea[], %b::uuid[])",
            schema,
        ),
        load=_q(
            f"SELECT {_COLUMNS} FROM {{s}}.events WHERE stream_id = %s AND version > %s "
            "ORDER BY version LIMIT %s",
            schema,
        ),
        read_all=_q(
            f"SELECT {_COLUMNS} FROM {{s}}.events WHERE position > %s ORDER BY position LIMIT %s",
            schema,
        ),
        head=_q("SELECT coalesce(max(position), 0) FROM {s}.events", schema),
        stream_version=_q(
            "SELECT coalesce(max(version), 0) FROM {s}.events WHERE stream_id = %s", schema
        ),
        find_key=_q(
            "SELECT stream_id, first_version, event_count FROM {s}.idempotency_keys WHERE key = %s",
            schema,
        ),
        load_checkpoint=_q("SELECT position FROM {s}.checkpoints WHERE name = %s", schema),
        insert_checkpoint=_q(
            "INSERT INTO {s}.checkpoints (name, position) VALUES (%s, %s) "
            "ON CONFLICT (name) DO NOTHING RETURNING position",
            schema,
        ),
        update_checkpoint=_q(
            "UPDATE {s}.checkpoints SET position = %s, updated_at = now() "
            "WHERE name = %s AND position = %s RETURNING position",
            schema,
        ),
        save_snapshot=_q(
            "INSERT INTO {s}.snapshots AS cur (stream_id, version, schema_version, state) "
            "VALUES (%s, %s, %s, %b) ON CONFLICT (stream_id) DO UPDATE SET "
            "version = excluded.version, schema_version = excluded.schema_version, "
            "state = excluded.state, saved_at = now() "
            "WHERE cur.version <= excluded.version",
            schema,
        ),
        load_snapshot=_q(
            "SELECT version, schema_version, state FROM {s}.snapshots WHERE stream_id = %s",
            schema,
        ),
    )


# The append function. It runs with the append lock held for the rest of its
# transaction; everything it reads (versions, keys) is therefore stable until commit.
# Versions of streams touched earlier in the same call are tracked in arrays, so that
# several appends to one stream in one group see each other.
_APPEND_FUNCTION_BODY = """
DECLARE
    n int := coalesce(array_length(req_stream, 1), 0);
    st int[] := array_fill(0, ARRAY[n]);
    base bigint[] := array_fill(0::bigint, ARRAY[n]);
    oth text[] := array_fill(NULL::text, ARRAY[n]);
    seen_stream text[] := ARRAY[]::text[];
    seen_version bigint[] := ARRAY[]::bigint[];
    all_positions bigint[];
    r int;
    idx int;
    cur bigint;
    want bigint;
    k record;
    offs int := 0;
BEGIN
    PERFORM pg_advisory_xact_lock({lock});
    FOR r IN 1 .. n LOOP
        IF req_key[r] IS NOT NULL THEN
            SELECT ik.stream_id, ik.first_version, ik.event_count INTO k
                FROM {s}.idempotency_keys AS ik WHERE ik.key = req_key[r];
            IF FOUND THEN
                IF k.stream_id = req_stream[r] THEN
                    st[r] := 2;
                    base[r] := k.first_version - 1;
                ELSE
                    st[r] := 3;
                    oth[r] := k.stream_id;
                END IF;
                CONTINUE;
            END IF;
        END IF;
        idx := array_position(seen_stream, req_stream[r]);
        IF idx IS NULL THEN
            SELECT coalesce(max(e.version), 0) INTO cur
                FROM {s}.events AS e WHERE e.stream_id = req_stream[r];
            seen_stream := seen_stream || req_stream[r];
            seen_version := seen_version || cur;
            idx := array_length(seen_stream, 1);
        ELSE
            cur := seen_version[idx];
        END IF;
        want := req_expected[r];
        base[r] := cur;
        IF want = -1 OR (want = -3 AND cur > 0) OR want = cur THEN
            seen_version[idx] := cur + req_count[r];
            IF req_key[r] IS NOT NULL THEN
                INSERT INTO {s}.idempotency_keys (key, stream_id, first_version, event_count)
                    VALUES (req_key[r], req_stream[r], cur + 1, req_count[r]);
            END IF;
        ELSE
            st[r] := 1;
        END IF;
    END LOOP;
    -- unnest yields the events in array order and the identity column numbers them in
    -- that order, so sorted positions line up with the events of the accepted appends.
    WITH inserted AS (
        INSERT INTO {s}.events
            (stream_id, version, type, schema_version, data, metadata, event_id, recorded_at)
        SELECT req_stream[u.r], base[u.r] + u.seq, u.t, u.sv, u.d, u.m, u.id,
               req_recorded_at[u.r]
        FROM unnest(ev_req, ev_seq, ev_type, ev_schema, ev_data, ev_meta, ev_id)
            AS u(r, seq, t, sv, d, m, id)
        WHERE st[u.r] = 0
        RETURNING position
    )
    SELECT array_agg(inserted.position ORDER BY inserted.position) INTO all_positions
        FROM inserted;
    IF all_positions IS NOT NULL THEN
        PERFORM pg_notify({channel}, all_positions[array_length(all_positions, 1)]::text);
    END IF;
    FOR r IN 1 .. n LOOP
        o_status := st[r];
        o_version := base[r];
        o_other := oth[r];
        o_positions := NULL;
        IF st[r] = 0 THEN
            o_positions := coalesce(all_positions[offs + 1 : offs + req_count[r]],
                                    ARRAY[]::bigint[]);
            offs := offs + req_count[r];
        ELSIF st[r] = 2 THEN
            o_other := NULL;
        END IF;
        RETURN NEXT;
    END LOOP;
END
"""


def _append_function(q: Queries) -> str:
    signature = (
        "append_events("
        "req_stream text[], req_expected bigint[], req_key text[], req_count int[], "
        "req_recorded_at timestamptz[], ev_req int[], ev_seq int[], ev_type text[], "
        "ev_schema int[], ev_data bytea[], ev_meta bytea[], ev_id uuid[]) "
        "RETURNS TABLE (o_status int, o_version bigint, o_other text, o_positions bigint[]) "
    )
    return plpgsql_function(
        signature, _APPEND_FUNCTION_BODY, schema=q.schema, lock=q.append_lock, channel=q.channel
    )


def _migration_1(q: Queries) -> list[str]:
    tables = [
        """CREATE TABLE {s}.events (
            position bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            stream_id text COLLATE "C" NOT NULL,
            version integer NOT NULL,
            type text NOT NULL,
            schema_version integer NOT NULL,
            data bytea NOT NULL,
            metadata bytea NOT NULL,
            event_id uuid NOT NULL,
            recorded_at timestamptz NOT NULL,
            CONSTRAINT events_stream_version UNIQUE (stream_id, version)
        )""",
        """CREATE TABLE {s}.idempotency_keys (
            key text COLLATE "C" PRIMARY KEY,
            stream_id text COLLATE "C" NOT NULL,
            first_version integer NOT NULL,
            event_count integer NOT NULL
        )""",
        """CREATE TABLE {s}.snapshots (
            stream_id text COLLATE "C" PRIMARY KEY,
            version integer NOT NULL,
            schema_version integer NOT NULL,
            state bytea NOT NULL,
            saved_at timestamptz NOT NULL DEFAULT now()
        )""",
        """CREATE TABLE {s}.checkpoints (
            name text COLLATE "C" PRIMARY KEY,
            position bigint NOT NULL CHECK (position >= 0),
            updated_at timestamptz NOT NULL DEFAULT now()
        )""",
    ]
    composed = [_q(t, q.schema).decode() for t in tables]
    return [*composed, _append_function(q)]


#: The migrations, in order: each returns the statements for one schema. Never edit a
#: released one; append a new one.
MIGRATIONS: tuple[Callable[[Queries], list[str]], ...] = (_migration_1,)


def migrate(q: Queries, conn: PgConnection) -> int:
    """Create the schema if missing and apply the missing migrations (blocking; runs in
    a driver thread). Returns the schema's version.

    Raises:
        EskitError: The schema was migrated by a newer eskit.
    """
    return migrate_schema(
        conn,
        schema=q.schema,
        lock=q.migrate_lock,
        table="schema_migrations",
        migrations=[partial(migration, q) for migration in MIGRATIONS],
        too_new=lambda current: (
            f"schema {q.schema!r} is at version {current}, newer than this eskit "
            f"knows ({len(MIGRATIONS)}): upgrade eskit"
        ),
    )


# -- units of work (blocking; each runs in one driver thread) ---------------------------

#: One row of ``append_events``: status, version, other, positions.
AppendRow = tuple[int, int, str | None, list[int] | None]


@attrs.frozen
class AppendArgs:
    """One append as the append function takes it."""

    stream_id: str
    code: int
    key: str | None
    encoded: Sequence[EncodedNewEvent]
    recorded_at: dt.datetime


def call_append(q: Queries, conn: PgConnection, group: Sequence[AppendArgs]) -> list[AppendRow]:
    """Call ``append_events`` once for ``group``, with binary array parameters.

    Returns:
        One row per append, in order: status, version before the append (the actual
        version on conflict), the other stream on a key conflict, and the positions.

    Raises:
        psycopg.Error: The call failed as a whole (nothing of the group was written).
    """
    ev_req: list[int] = []
    ev_seq: list[int] = []
    ev_type: list[str] = []
    ev_schema: list[int] = []
    ev_data: list[bytes] = []
    ev_meta: list[bytes] = []
    ev_id: list[Any] = []
    for index, request in enumerate(group, start=1):
        for seq, event in enumerate(request.encoded, start=1):
            ev_req.append(index)
            ev_seq.append(seq)
            ev_type.append(event.type)
            ev_schema.append(event.schema_version)
            ev_data.append(event.data)
            ev_meta.append(event.metadata)
            ev_id.append(event.event_id)
    params = (
        [r.stream_id for r in group],
        [r.code for r in group],
        [r.key for r in group],
        [len(r.encoded) for r in group],
        [r.recorded_at for r in group],
        ev_req,
        ev_seq,
        ev_type,
        ev_schema,
        ev_data,
        ev_meta,
        ev_id,
    )
    rows: list[AppendRow] = conn.execute(q.append, params, binary=True).fetchall()
    if len(rows) != len(group):
        raise EskitError(f"append_events returned {len(rows)} rows for {len(group)} appends")
    return rows


def write_group(
    q: Queries, group: Sequence[AppendArgs], conn: PgConnection
) -> list[AppendRow | BaseException]:
    """One group commit (runs in a worker thread; see
    :func:`~engine.stores.pg_support.write_each_on_failure`)."""

    def alone(request: AppendArgs, exc: psycopg.Error) -> AppendRow | BaseException:
        if isinstance(exc, pg_errors.UniqueViolation):
            # A writer that bypassed the append lock took the version first.
            actual = conn.execute(q.stream_version, [request.stream_id]).fetchone()
            return (STATUS_CONFLICT, actual[0] if actual else 0, None, None)
        return exc

    return write_each_on_failure(partial(call_append, q, conn), group, alone=alone)


def fetch_events(
    codec: Codec[E], query: bytes, params: Sequence[Any], conn: PgConnection
) -> list[Event[E]]:
    """Run an event query (columns in ``read_all``'s order) and decode the rows."""
    rows = conn.execute(query, params, binary=True).fetchall()
    return [
        decode_row(codec, stream_id, version, position, name, schema, data, meta, eid, at)
        for position, stream_id, version, name, schema, data, meta, eid, at in rows
    ]


def fetch_idempotent(
    codec: Codec[E], q: Queries, key: str, conn: PgConnection
) -> list[Event[E]] | None:
    """The events the append with idempotency ``key`` stored, or ``None``."""
    found = conn.execute(q.find_key, [key]).fetchone()
    if found is None:
        return None
    stream_id, first_version, count = found
    if count == 0:
        return []
    return fetch_events(codec, q.load, [stream_id, first_version - 1, count], conn)


def save_checkpoint(
    q: Queries, name: str, position: int, expected: int | None, conn: PgConnection
) -> tuple[bool, int | None]:
    """Compare and set in one statement; returns (saved, actual when not saved)."""
    if position >= 0:
        if expected is None:
            saved = conn.execute(q.insert_checkpoint, [name, position]).fetchone()
        else:
            saved = conn.execute(q.update_checkpoint, [position, name, expected]).fetchone()
        if saved is not None:
            return True, position
    row = conn.execute(q.load_checkpoint, [name]).fetchone()
    actual = None if row is None else int(row[0])
    # A negative position over the right expected value is "ok" here; the caller then
    # refuses it, in the same order as the memory store.
    return (position < 0 and actual == expected), actual
