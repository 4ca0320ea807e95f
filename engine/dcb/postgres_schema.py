"""The PostgreSQL DCB store's tables, server-side append function, migrations and reads.

The DCB tables live in the same schema as the event store's (``eskit`` by default) under
their own names (``dcb_events``, ``dcb_tags``, ``dcb_schema_migrations``), so one schema
can hold both. Every name is quoted, so any schema name works.

Tags are indexed in a B-tree table ``dcb_tags (tag, position)``. Measured against a GIN
index on ``tags`` (``python -m benchmarks.dcb_pg_tag_index``: course-subscription
decisions = read + conditional append, logs of 0 to 3M events, on a shared 2-core VM),
B-tree ran at 0.7x to 2.0x the decisions/s of GIN, with no trend as the log grew,
once each used its best query shape. The difference is in the failure mode: GIN's row
estimate for ``@>`` is a constant guess (0.5% of the table), and with it the natural
``position IN (...)`` read became a parallel sequential scan (at 200k events 46 vs 690
decisions/s, 47 vs 1121 reads/s, with the same query shape for both). The B-tree gives the planner real per-tag statistics and serves
``tag = t AND position > after`` as one index range scan, so it is kept.
"""

from __future__ import annotations

import functools
from functools import partial

import attrs
from psycopg import sql

from engine.dcb.base import Query
from engine.drivers.postgres import PgConnection
from engine.stores.pg_support import (
    advisory_key,
    channel_name,
    check_schema_name,
    compose,
    migrate_schema,
    plpgsql_function,
)

__all__ = [
    "MIGRATIONS",
    "PROBE_LIMIT",
    "STATUS_CONFLICT",
    "STATUS_DUPLICATE",
    "STATUS_OK",
    "STATUS_REPLAY",
    "DcbQueries",
    "migrate",
    "probe_sql",
    "read_sql",
]

#: Per-append results of the append function.
STATUS_OK = 0
STATUS_CONFLICT = 1
STATUS_REPLAY = 2
STATUS_DUPLICATE = 3

COLUMNS = "position, type, schema_version, data, metadata, tags, event_id, recorded_at"


def _key(purpose: str, schema: str) -> int:
    return advisory_key("eskit:dcb", purpose, schema)


_q = compose


@attrs.frozen
class DcbQueries:
    """The fixed SQL of one schema, composed once."""

    schema: str
    channel: str
    append_lock: int
    migrate_lock: int
    append: bytes
    head: bytes
    stored_ids: bytes

    @classmethod
    def for_schema(cls, schema: str) -> DcbQueries:
        """The queries for ``schema`` (cached).

        Raises:
            ValueError: The name is empty, has a NUL, or is longer than 63 bytes.
        """
        return _queries_for(schema)


@functools.lru_cache(maxsize=64)
def _queries_for(schema: str) -> DcbQueries:
    check_schema_name(schema)
    return DcbQueries(
        schema=schema,
        channel=channel_name("eskit_dcb_", schema),
        append_lock=_key("append", schema),
        migrate_lock=_key("migrate", schema),
        append=_q(
            "SELECT o_status, o_position FROM {s}.dcb_append("
            "%b::int[], %b::bool[], %b::bool[], %b::bigint[], %b::int[], %b::int[], "
            "%b::timestamptz[], %b::int[], %b::int[], %b::text[], %b::int[], %b::int[], "
            "%b::text[], %b::text[], %b::int[], %b::bytea[], %b::bytea[], %b::uuid[], "
            "%b::int[], %b::int[], %b::text[])",
            schema,
        ),
        head=_q("SELECT coalesce(max(position), 0) FROM {s}.dcb_events", schema),
        stored_ids=_q(
            "SELECT event_id FROM {s}.dcb_events WHERE event_id = ANY(%b::uuid[])", schema
        ),
    )


# One query item inside the append function: does an event matching it exist after
# ``after``? The first tag drives a range scan of dcb_tags; the event row is visited only
# to check further tags or the types.
_APPEND_FUNCTION_BODY = """
DECLARE
    n int := coalesce(array_length(req_count, 1), 0);
    r int;
    it int;
    e_lo int := 0;
    cnt int;
    known int;
    known_pos bigint;
    hit bigint;
    pos bigint;
    st int;
    after_pos bigint;
    tys text[];
    tgs text[];
    last_pos bigint;
BEGIN
    PERFORM pg_advisory_xact_lock({lock});
    FOR r IN 1 .. n LOOP
        cnt := req_count[r];
        st := 0;
        pos := NULL;
        SELECT count(*), max(x.position) INTO known, known_pos
            FROM {s}.dcb_events AS x WHERE x.event_id = ANY(ev_id[e_lo + 1 : e_lo + cnt]);
        IF known = cnt THEN
            st := 2;
            pos := known_pos;
        ELSIF known > 0 THEN
            st := 3;
        ELSIF req_has_cond[r] THEN
            after_pos := coalesce(req_after[r], 0);
            hit := NULL;
            IF req_all[r] THEN
                SELECT x.position INTO hit FROM {s}.dcb_events AS x
                    WHERE x.position > after_pos ORDER BY x.position LIMIT 1;
            ELSE
                FOR it IN req_item_lo[r] + 1 .. req_item_lo[r] + req_item_n[r] LOOP
                    tys := it_types[it_ty_off[it] + 1 : it_ty_off[it] + it_ty_n[it]];
                    tgs := it_tags[it_tg_off[it] + 1 : it_tg_off[it] + it_tg_n[it]];
                    IF it_tg_n[it] = 0 THEN
                        SELECT x.position INTO hit FROM {s}.dcb_events AS x
                            WHERE x.type = ANY(tys) AND x.position > after_pos LIMIT 1;
                    ELSIF it_tg_n[it] = 1 AND it_ty_n[it] = 0 THEN
                        SELECT d.position INTO hit FROM {s}.dcb_tags AS d
                            WHERE d.tag = tgs[1] AND d.position > after_pos LIMIT 1;
                    ELSE
                        SELECT d.position INTO hit FROM {s}.dcb_tags AS d
                            JOIN {s}.dcb_events AS x ON x.position = d.position
                            WHERE d.tag = tgs[1] AND d.position > after_pos
                              AND x.tags @> tgs
                              AND (it_ty_n[it] = 0 OR x.type = ANY(tys))
                            LIMIT 1;
                    END IF;
                    EXIT WHEN hit IS NOT NULL;
                END LOOP;
            END IF;
            IF hit IS NOT NULL THEN
                st := 1;
                pos := hit;
            END IF;
        END IF;
        IF st = 0 THEN
            -- unnest yields the events in array order and the identity column numbers
            -- them in that order.
            WITH ins AS (
                INSERT INTO {s}.dcb_events
                    (type, schema_version, data, metadata, tags, event_id, recorded_at)
                SELECT u.t, u.sv, u.d, u.m, ev_tags[u.o + 1 : u.o + u.k], u.id, req_recorded_at[r]
                FROM unnest(ev_type[e_lo + 1 : e_lo + cnt], ev_schema[e_lo + 1 : e_lo + cnt],
                            ev_data[e_lo + 1 : e_lo + cnt], ev_meta[e_lo + 1 : e_lo + cnt],
                            ev_id[e_lo + 1 : e_lo + cnt], ev_tag_off[e_lo + 1 : e_lo + cnt],
                            ev_tag_n[e_lo + 1 : e_lo + cnt])
                    WITH ORDINALITY AS u(t, sv, d, m, id, o, k, ord)
                ORDER BY u.ord
                RETURNING position, tags
            ), tagged AS (
                INSERT INTO {s}.dcb_tags (tag, position)
                SELECT unnest(ins.tags), ins.position FROM ins
            )
            SELECT max(ins.position) INTO pos FROM ins;
            last_pos := pos;
        END IF;
        e_lo := e_lo + cnt;
        o_status := st;
        o_position := pos;
        RETURN NEXT;
    END LOOP;
    IF last_pos IS NOT NULL THEN
        PERFORM pg_notify({channel}, last_pos::text);
    END IF;
END
"""


def _append_function(q: DcbQueries) -> str:
    signature = (
        "dcb_append("
        "req_count int[], req_has_cond bool[], req_all bool[], req_after bigint[], "
        "req_item_lo int[], req_item_n int[], req_recorded_at timestamptz[], "
        "it_ty_off int[], it_ty_n int[], it_types text[], "
        "it_tg_off int[], it_tg_n int[], it_tags text[], "
        "ev_type text[], ev_schema int[], ev_data bytea[], ev_meta bytea[], ev_id uuid[], "
        "ev_tag_off int[], ev_tag_n int[], ev_tags text[]) "
        "RETURNS TABLE (o_status int, o_position bigint) "
    )
    return plpgsql_function(
        signature, _APPEND_FUNCTION_BODY, schema=q.schema, lock=q.append_lock, channel=q.channel
    )


def _migration_1(q: DcbQueries) -> list[str]:
    tables = [
        """CREATE TABLE {s}.dcb_events (
            position bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            type text COLLATE "C" NOT NULL,
            schema_version integer NOT NULL,
            data bytea NOT NULL,
            metadata bytea NOT NULL,
            tags text[] COLLATE "C" NOT NULL,
            event_id uuid NOT NULL,
            recorded_at timestamptz NOT NULL,
            CONSTRAINT dcb_events_event_id UNIQUE (event_id)
        )""",
        "CREATE INDEX dcb_events_by_type ON {s}.dcb_events (type, position)",
        """CREATE TABLE {s}.dcb_tags (
            tag text COLLATE "C" NOT NULL,
            position bigint NOT NULL,
            PRIMARY KEY (tag, position)
        )""",
    ]
    return [*(_q(t, q.schema).decode() for t in tables), _append_function(q)]


#: The migrations, in order. Never edit a released one; append a new one.
MIGRATIONS = (_migration_1,)


def migrate(q: DcbQueries, conn: PgConnection) -> int:
    """Create the schema if missing and apply the missing DCB migrations (blocking; runs
    in a driver thread). Returns the DCB tables' version.

    Raises:
        EskitError: The DCB tables were migrated by a newer eskit.
    """
    return migrate_schema(
        conn,
        schema=q.schema,
        lock=q.migrate_lock,
        table="dcb_schema_migrations",
        migrations=[partial(migration, q) for migration in MIGRATIONS],
        too_new=lambda current: (
            f"the DCB tables of schema {q.schema!r} are at version {current}, newer "
            f"than this eskit knows ({len(MIGRATIONS)}): upgrade eskit"
        ),
    )


@functools.lru_cache(maxsize=256)
def _read_sql(schema: str, shape: tuple[tuple[bool, int], ...] | None, limited: bool) -> bytes:
    s = sql.Identifier(schema)
    if shape is None:
        positions = sql.SQL("SELECT position FROM {s}.dcb_events WHERE position > %(after)s")
        parts = [positions.format(s=s)]
    else:
        parts = []
        for index, (has_types, tag_count) in enumerate(shape):
            types = sql.Placeholder(f"y{index}")
            first = sql.Placeholder(f"g{index}")
            tags = sql.Placeholder(f"t{index}")
            if tag_count == 0:
                part = sql.SQL(
                    "SELECT position FROM {s}.dcb_events"
                    " WHERE type = ANY({types}::text[]) AND position > %(after)s"
                ).format(s=s, types=types)
            elif tag_count == 1 and not has_types:
                part = sql.SQL(
                    "SELECT position FROM {s}.dcb_tags WHERE tag = {first} AND position > %(after)s"
                ).format(s=s, first=first)
            else:
                check = sql.SQL(" AND e.tags @> {tags}::text[]").format(tags=tags)
                if has_types:
                    check += sql.SQL(" AND e.type = ANY({types}::text[])").format(types=types)
                part = sql.SQL(
                    "SELECT d.position FROM {s}.dcb_tags d JOIN {s}.dcb_events e"
                    " ON e.position = d.position"
                    " WHERE d.tag = {first} AND d.position > %(after)s{check}"
                ).format(s=s, first=first, check=check)
            parts.append(part)
    union = sql.SQL(" UNION ").join(parts)
    limit = sql.SQL(" LIMIT %(limit)s") if limited else sql.SQL("")
    # Head and events in one statement: one snapshot, so head is consistent with them.
    statement = sql.SQL(
        "SELECT h.head, m.* FROM (SELECT coalesce(max(position), 0) AS head"
        " FROM {s}.dcb_events) AS h LEFT JOIN LATERAL ("
        "SELECT " + COLUMNS + " FROM {s}.dcb_events WHERE position IN ({union})"
        " ORDER BY position{limit}) AS m ON true ORDER BY m.position"
    ).format(s=s, union=union, limit=limit)
    return statement.as_bytes(None)


#: How many index entries a tag's selectivity probe counts at most.
PROBE_LIMIT = 1000


@functools.lru_cache(maxsize=64)
def probe_sql(schema: str) -> bytes:
    """Count each tag's entries after a position, up to :data:`PROBE_LIMIT`: the rarest
    tag of an item drives its scan (a generic plan cannot tell a tag that every event
    carries from a rare one)."""
    return _q(
        "SELECT t.tag, (SELECT count(*) FROM (SELECT 1 FROM {s}.dcb_tags AS d"
        " WHERE d.tag = t.tag AND d.position > %s LIMIT %s) AS x)"
        " FROM unnest(%s::text[]) AS t(tag)",
        schema,
    )


def read_sql(
    schema: str,
    query: Query | None,
    after: int,
    limit: int | None,
    counts: dict[str, int] | None = None,
) -> tuple[bytes, dict[str, object]]:
    """The statement (cached per query shape) and parameters of a read.

    Each row is ``head`` followed by the event columns; a read that matches nothing
    returns one row of ``head`` and NULLs. ``counts`` (from :func:`probe_sql`) picks the
    rarest tag of each item as the one whose index range is scanned.
    """
    params: dict[str, object] = {"after": after, "limit": limit}
    if query is None or query.matches_all:
        return _read_sql(schema, None, limit is not None), params
    shape = []
    for index, item in enumerate(query.items):
        shape.append((bool(item.types), len(item.tags)))
        params[f"y{index}"] = list(item.types)
        params[f"g{index}"] = (
            min(item.tags, key=lambda tag: (counts or {}).get(tag, 0)) if item.tags else None
        )
        params[f"t{index}"] = list(item.tags)
    return _read_sql(schema, tuple(shape), limit is not None), params
