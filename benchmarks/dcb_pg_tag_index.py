"""Which tag index keeps PostgreSQL DCB decisions fast as the log grows: GIN or B-tree?

Run: ``python -m benchmarks.dcb_pg_tag_index [--dsn DSN] [--sizes 0,200000,1000000]``.
Without ``--dsn`` it starts the test suite's embedded PostgreSQL (fsync off). Raw
psycopg on one connection, no Trio: this compares index layouts only. Not a test.

Two layouts of the same ``dcb_events`` table (``tags text[]`` on every row):

* ``gin``: a GIN index on ``tags``; an item is ``tags @> item_tags AND position > after``.
* ``btree``: a tag table ``dcb_tags (tag, position)`` with a B-tree primary key; an item
  range-scans its first tag after ``after`` and checks the other tags on the event row.

The log is prefilled with course subscriptions: event n is tagged
``course:<n % 100000>``, ``student:<n % 200000>`` and ``tenant:1`` (a hot tag every event
carries). One measured *decision* is what the DCB handler does for "subscribe student S
to course C":

* ``read``: the events of the query ``[course:C] OR [student:S]`` over the whole log;
* ``append``: a server-side function (as the store uses, so plans are cached and may be
  generic) that takes an advisory lock, checks the same query after the read's head and
  inserts the event (and, for ``btree``, its tag rows).

``hot`` runs the same decision with the query ``[tenant:1, course:C]`` (the driving tag
of a B-tree probe is the first in sorted order, ``course:C``; GIN must intersect the
posting list of ``tenant:1``, which holds every event).
"""

from __future__ import annotations

import argparse
import contextlib
import secrets
import time
import uuid

import psycopg

_TABLE = (
    "CREATE TABLE {s}.dcb_events (position bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
    ' type text COLLATE "C" NOT NULL, data bytea NOT NULL,'
    ' tags text[] COLLATE "C" NOT NULL, event_id uuid NOT NULL UNIQUE)'
)
DDL = {
    "gin": [
        _TABLE,
        "CREATE INDEX ON {s}.dcb_events USING gin (tags)",
        "CREATE INDEX ON {s}.dcb_events (type, position)",
    ],
    "btree": [
        _TABLE,
        "CREATE INDEX ON {s}.dcb_events (type, position)",
        'CREATE TABLE {s}.dcb_tags (tag text COLLATE "C" NOT NULL, position bigint NOT NULL,'
        " PRIMARY KEY (tag, position))",
    ],
}

# One item: the positions after p_after of events carrying every tag of p_tags.
ITEM = {
    "gin": "SELECT e.position FROM {s}.dcb_events e WHERE e.tags @> {tags} AND e.position > {after}",
    # The event row is only visited to check the second and further tags.
    "btree": "SELECT d.position FROM {s}.dcb_tags d WHERE d.tag = ({tags})[1]"
    " AND d.position > {after} AND (cardinality({tags}) = 1 OR EXISTS (SELECT 1 FROM"
    " {s}.dcb_events e WHERE e.position = d.position AND e.tags @> {tags}))",
}

# Each layout's read in the shape its planner handles best: GIN's row estimates for
# ``@>`` are a constant guess (0.5% of the table), which turns ``position IN (...)`` into
# a hash join over a sequential scan, so its read ORs the containment tests on one table.
READ = {
    "gin": "SELECT position, type, data, tags, event_id FROM {s}.dcb_events"
    " WHERE tags @> %(one)s::text[] OR tags @> %(two)s::text[] ORDER BY position",
    "btree": "SELECT position, type, data, tags, event_id FROM {s}.dcb_events WHERE position IN"
    " ({one} UNION {two}) ORDER BY position",
}

FUNCTION = """
CREATE FUNCTION {s}.append_one(p_one text[], p_two text[], p_after bigint, p_tags text[],
                               p_id uuid) RETURNS bigint LANGUAGE plpgsql AS $f$
DECLARE
    hit bigint;
    pos bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(42);
    {check}
    IF hit IS NOT NULL THEN
        RETURN -hit;
    END IF;
    INSERT INTO {s}.dcb_events (type, data, tags, event_id)
        VALUES ('Subscribed', '\\x00', p_tags, p_id) RETURNING position INTO pos;
    {tag_insert}
    RETURN pos;
END
$f$
"""

PREFILL_EVENTS = (
    "INSERT INTO {s}.dcb_events (type, data, tags, event_id)"
    " SELECT 'Subscribed', '\\x00', ARRAY['course:' || (n %% 100000),"
    " 'student:' || (n %% 200000), 'tenant:1'], gen_random_uuid()"
    " FROM generate_series(1, %s) AS n"
)
PREFILL_TAGS = (
    "INSERT INTO {s}.dcb_tags (tag, position) SELECT unnest(tags), position FROM {s}.dcb_events"
)


def _setup(conn: psycopg.Connection[tuple[object, ...]], layout: str, s: str, size: int) -> None:
    conn.execute(f"CREATE SCHEMA {s}")
    for statement in DDL[layout]:
        conn.execute(statement.format(s=s))
    if size:
        conn.execute(PREFILL_EVENTS.format(s=s), [size])
        if layout == "btree":
            conn.execute(PREFILL_TAGS.format(s=s))
    conn.execute(f"VACUUM ANALYZE {s}.dcb_events")
    if layout == "btree":
        conn.execute(f"VACUUM ANALYZE {s}.dcb_tags")
    if layout == "gin":
        check = (
            f"SELECT e.position INTO hit FROM {s}.dcb_events e WHERE"
            " (e.tags @> p_one OR e.tags @> p_two) AND e.position > p_after LIMIT 1;"
        )
    else:
        one = ITEM[layout].format(s=s, tags="p_one", after="p_after")
        two = ITEM[layout].format(s=s, tags="p_two", after="p_after")
        check = f"SELECT x.position INTO hit FROM ({one} UNION ALL {two}) AS x LIMIT 1;"
    tag_insert = (
        f"INSERT INTO {s}.dcb_tags (tag, position) SELECT unnest(p_tags), pos;"
        if layout == "btree"
        else ""
    )
    conn.execute(FUNCTION.format(s=s, check=check, tag_insert=tag_insert))


def run(dsn: str, layout: str, size: int, decisions: int, hot: bool) -> tuple[float, float]:
    """(decisions per second, reads per second) on a log of ``size`` events."""
    schema = f"bench_{secrets.token_hex(4)}"
    s = f'"{schema}"'
    with psycopg.connect(dsn, autocommit=True) as conn:
        try:
            _setup(conn, layout, s, size)
            read = READ[layout].format(
                s=s,
                one=ITEM[layout].format(s=s, tags="%(one)s::text[]", after="0"),
                two=ITEM[layout].format(s=s, tags="%(two)s::text[]", after="0"),
            )
            append = f"SELECT {s}.append_one(%s, %s, %s, %s, %s)"
            read_time = 0.0
            start = time.perf_counter()
            for i in range(decisions):
                n = size + i * 7919
                course, student = f"course:{n % 100000}", f"student:{n % 200000}"
                one = sorted(["tenant:1", course]) if hot else [course]
                two = [student]
                began = time.perf_counter()
                rows = conn.execute(read, {"one": one, "two": two}).fetchall()
                head_row = conn.execute(f"SELECT max(position) FROM {s}.dcb_events").fetchone()
                read_time += time.perf_counter() - began
                head = head_row[0] if head_row and head_row[0] is not None else 0
                assert len(rows) <= size
                tags = sorted([course, student, "tenant:1"])
                result = conn.execute(append, [one, two, head, tags, uuid.uuid4()]).fetchone()
                assert result is not None
                assert result[0] > 0
            elapsed = time.perf_counter() - start
            return decisions / elapsed, decisions / read_time
        finally:
            conn.execute(f"DROP SCHEMA IF EXISTS {s} CASCADE")


def main() -> None:
    """Print decisions per second (read + conditional append) per layout and log size."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--dsn")
    parser.add_argument("--sizes", default="0,200000,1000000")
    parser.add_argument("--decisions", type=int, default=2000)
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        dsn = args.dsn
        if dsn is None:
            from tests.servers import run_postgres

            dsn = stack.enter_context(run_postgres()).dsn
        print(
            f"{'events':>9} {'query':>6} {'gin dec/s':>10} {'btree dec/s':>12} {'ratio':>6}"
            f" {'gin read/s':>11} {'btree read/s':>13}"
        )
        for size in (int(x) for x in args.sizes.split(",")):
            for hot in (False, True):
                gin, gin_reads = run(dsn, "gin", size, args.decisions, hot)
                btree, btree_reads = run(dsn, "btree", size, args.decisions, hot)
                label = "hot" if hot else "plain"
                print(
                    f"{size:>9} {label:>6} {gin:>10.0f} {btree:>12.0f} {btree / gin:>6.1f}"
                    f" {gin_reads:>11.0f} {btree_reads:>13.0f}"
                )


if __name__ == "__main__":
    main()
