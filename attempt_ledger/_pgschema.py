"""The PostgreSQL schema: its tables, the append statement, how a ledger is keyed, and migrate().

A ledger's ids are stored as bytes (``text`` cannot hold NUL) and it is keyed by a fixed-size
digest of them: an index entry must stay under ~2.7 kB and a NOTIFY payload under 8,000 bytes,
whatever the length of the ids. Version 1 keyed by the ids as ``text``; version 2 appended
through a server function that notified every commit; :func:`migrate` upgrades both in place.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import psycopg

from ._errors import LedgerError

#: The schema version :func:`migrate` creates or upgrades to.
SCHEMA_VERSION = 4
CHANNEL = "attempt_ledger"
#: SQLSTATEs of a missing or older schema: no such table, function or column.
MISSING_SCHEMA = frozenset({"42P01", "42883", "42703"})

# The key of a ledger, in SQL: sha256(8-byte big-endian length of run_id || run_id || node_id),
# the ids as UTF-8. The length prefix keeps ("ab", "c") and ("a", "bc") apart.
_KEY_SQL = "sha256(int8send(octet_length({r})::bigint) || {r} || {n})"

# Columns in the order an upgraded older table has them, so that both look the same.
# ``listeners``: the backend pids of the connections waiting for this ledger's commits (see
# LISTENING); an append notifies only when there is one. ``last_hash``: the record_hash of the
# last record if it is hashed (schema 2), which the next append chains from; else NULL.
_TABLES = [
    """CREATE TABLE attempt_ledger_heads (
        run_id bytea NOT NULL, node_id bytea NOT NULL, last_seq numeric(20, 0) NOT NULL,
        key bytea PRIMARY KEY, listeners integer[] NOT NULL DEFAULT '{}', last_hash bytea)""",
    """CREATE TABLE attempt_ledger_receipts (
        seq numeric(20, 0) NOT NULL, line bytea NOT NULL, key bytea NOT NULL,
        PRIMARY KEY (key, seq))""",
]

_UPGRADE_FROM_1 = [
    """ALTER TABLE attempt_ledger_heads
        ALTER COLUMN run_id TYPE bytea USING convert_to(run_id, 'UTF8'),
        ALTER COLUMN node_id TYPE bytea USING convert_to(node_id, 'UTF8'),
        ADD COLUMN key bytea""",
    f"UPDATE attempt_ledger_heads SET key = {_KEY_SQL.format(r='run_id', n='node_id')}",
    """ALTER TABLE attempt_ledger_heads DROP CONSTRAINT attempt_ledger_heads_pkey,
        ALTER COLUMN key SET NOT NULL, ADD PRIMARY KEY (key)""",
    "ALTER TABLE attempt_ledger_receipts ADD COLUMN key bytea",
    "UPDATE attempt_ledger_receipts SET key = "
    + _KEY_SQL.format(r="convert_to(run_id, 'UTF8')", n="convert_to(node_id, 'UTF8')"),
    """ALTER TABLE attempt_ledger_receipts DROP CONSTRAINT attempt_ledger_receipts_pkey,
        DROP COLUMN run_id, DROP COLUMN node_id, ALTER COLUMN key SET NOT NULL,
        ADD PRIMARY KEY (key, seq)""",
    "DROP FUNCTION attempt_ledger_append(text, text, numeric, bytea, bytea, bytea[], text)",
]

# Version 2 ran every append through a PL/pgSQL function that always notified; version 3
# appends with one statement (APPEND) and notifies only ledgers someone listens to.
_UPGRADE_FROM_2 = [
    "ALTER TABLE attempt_ledger_heads ADD COLUMN listeners integer[] NOT NULL DEFAULT '{}'",
    "DROP FUNCTION IF EXISTS attempt_ledger_append("
    "bytea, bytea, bytea, numeric, bytea, bytea, bytea[], text)",
]

# Version 4 keeps the last record's hash on the head row, for hash chains (schema-2 records).
_UPGRADE_FROM_3 = [
    "ALTER TABLE attempt_ledger_heads ADD COLUMN last_hash bytea",
    """UPDATE attempt_ledger_heads h SET last_hash = (
        SELECT decode(substring(convert_from(r.line, 'UTF8')
            FROM ',"record_hash":"([0-9a-f]{64})"}$'), 'hex')
        FROM attempt_ledger_receipts r WHERE r.key = h.key ORDER BY r.seq DESC LIMIT 1)""",
]

# An append in one statement, so one round trip and no server function: move the ledger's
# head row by the batch size (the UPDATE waits for the row's lock, then re-checks its
# conditions on the latest version, so seqs are exact), insert the lines built from the
# client's pieces, and notify the key in hex if anyone listens to this ledger. No row comes
# back if the head row does not exist yet, or the expected last seq or the seq range refuses
# the batch: see its callers.
_APPEND = """WITH h AS (
    UPDATE attempt_ledger_heads h SET last_seq = h.last_seq + {count}
    WHERE h.key = %(key)s AND (%(expected)s::numeric IS NULL OR h.last_seq = %(expected)s)
        AND h.last_seq <= 18446744073709551615 - {count} AND h.last_hash IS NULL
    RETURNING h.last_seq - {count} AS last, cardinality(h.listeners) AS listening),
lines AS (
    INSERT INTO attempt_ledger_receipts (key, seq, line)
    SELECT %(key)s, h.last + t.i, %(head)s || convert_to((h.last + t.i)::text, 'UTF8') || t.rest
    FROM h, {lines} AS t)
SELECT h.last, CASE WHEN h.listening > 0 THEN pg_notify('{channel}', encode(%(key)s, 'hex')) END
FROM h"""

#: The append of one line (most are): parameters key, expected (the expected last seq, or
#: None), head, rest (what follows the seq).
APPEND_ONE = _APPEND.format(
    count="1", lines="(SELECT %(rest)s::bytea AS rest, 1 AS i)", channel=CHANNEL
)

#: The append of one whole line numbered by the client, taken only if the ledger's last seq
#: is the one before and its last record is not hashed: parameters $1 key, $2 seq, $3 line;
#: prepared by the client as APPEND_NEXT_NAME with APPEND_NEXT_TYPES. The head row's RETURNING
#: notifies (it is computed for the row it moves). Nothing comes back: the INSERT's row count
#: says whether the line was taken (see _pgappend).
APPEND_NEXT = f"""WITH h AS (
    UPDATE attempt_ledger_heads h SET last_seq = $2
    WHERE h.key = $1 AND h.last_seq = $2 - 1 AND h.last_hash IS NULL
    RETURNING CASE WHEN cardinality(h.listeners) > 0
        THEN pg_notify('{CHANNEL}', encode(h.key, 'hex')) END)
INSERT INTO attempt_ledger_receipts (key, seq, line) SELECT $1, $2, $3 FROM h"""
# Named by its text, so that another statement (or another version's) is never taken for it.
_NEXT_DIGEST = hashlib.sha256(APPEND_NEXT.encode()).hexdigest()[:16]
APPEND_NEXT_NAME = f"attempt_ledger_{_NEXT_DIGEST}".encode()
APPEND_NEXT_TYPES = (17, 1700, 17)  # bytea, numeric, bytea

#: The append of several lines: parameters key, expected, head, count, middle (what follows
#: the seq up to the tail), tails (joined by newlines, which no encoded line contains; the
#: 'escape' encoding splits them keeping every other byte as it is). Splitting costs a
#: one-line batch ~3 µs of server time here, a third of the UPDATE's: hence APPEND_ONE.
APPEND = _APPEND.format(
    count="%(count)s::integer",
    lines="""(SELECT %(middle)s::bytea || decode(s.tail, 'escape') AS rest, s.i
        FROM string_to_table(encode(%(tails)s::bytea, 'escape'), E'\\n') WITH ORDINALITY
        AS s(tail, i))""",
    channel=CHANNEL,
)

#: The append of schema-2 records, chained from the head row's last hash (or from nothing):
#: parameters key, expected, head (the schema-2 head), count, middle, tails (each without its
#: closing brace, joined by newlines). Under the head row's lock it numbers the lines, hashes
#: each one's bytes up to its prev_hash member (plus the closing brace) in turn, inserts them
#: and moves the head's seq and hash; what it writes is byte for byte what the file ledger
#: writes. No row comes back when refused, as for APPEND.
APPEND_CHAINED = f"""WITH RECURSIVE h AS (
    SELECT h.last_seq, h.last_hash, cardinality(h.listeners) AS listening
    FROM attempt_ledger_heads h
    WHERE h.key = %(key)s AND (%(expected)s::numeric IS NULL OR h.last_seq = %(expected)s)
        AND h.last_seq <= 18446744073709551615 - %(count)s::integer
    FOR UPDATE),
pieces AS (
    SELECT %(middle)s::bytea || decode(s.tail, 'escape') AS rest, s.i
    FROM string_to_table(encode(%(tails)s::bytea, 'escape'), E'\\n') WITH ORDINALITY
        AS s(tail, i)),
chain AS (
    SELECT p.i, h.last_seq + 1 AS seq, x.pre, sha256(x.pre || convert_to('}}', 'UTF8')) AS hash
    FROM h, pieces p, LATERAL (SELECT %(head)s::bytea || convert_to((h.last_seq + 1)::text,
        'UTF8') || p.rest || convert_to(',"prev_hash":' || coalesce(
            '"' || encode(h.last_hash, 'hex') || '"', 'null'), 'UTF8') AS pre) x
    WHERE p.i = 1
  UNION ALL
    SELECT p.i, c.seq + 1, x.pre, sha256(x.pre || convert_to('}}', 'UTF8'))
    FROM chain c JOIN pieces p ON p.i = c.i + 1, LATERAL (SELECT %(head)s::bytea
        || convert_to((c.seq + 1)::text, 'UTF8') || p.rest
        || convert_to(',"prev_hash":"' || encode(c.hash, 'hex') || '"', 'UTF8') AS pre) x),
lines AS (
    INSERT INTO attempt_ledger_receipts (key, seq, line)
    SELECT %(key)s, c.seq, c.pre || convert_to(',"record_hash":"' || encode(c.hash, 'hex')
        || '"}}', 'UTF8')
    FROM chain c),
moved AS (
    UPDATE attempt_ledger_heads AS head SET last_seq = h.last_seq + %(count)s::integer,
        last_hash = (SELECT c.hash FROM chain c ORDER BY c.i DESC LIMIT 1)
    FROM h WHERE head.key = %(key)s)
SELECT h.last_seq, CASE WHEN h.listening > 0 THEN pg_notify('{CHANNEL}', encode(%(key)s, 'hex'))
    END
FROM h"""

#: A ledger's last seq and last hash (key).
HEAD_STATE = "SELECT last_seq, last_hash FROM attempt_ledger_heads WHERE key = %s"

#: Create a ledger's head row if it has none: key, run_id, node_id.
CREATE_HEAD = """INSERT INTO attempt_ledger_heads (run_id, node_id, last_seq, key)
    VALUES (%(r)s, %(n)s, 0, %(k)s) ON CONFLICT DO NOTHING"""

#: Register the connection as listening to a ledger (key, run_id, node_id), dropping the
#: registrations of backends that are gone. It takes the head row's lock, so an append either
#: committed before it (the listener's first read sees it) or sees the registration (and
#: notifies).
LISTENING = """INSERT INTO attempt_ledger_heads AS h (run_id, node_id, last_seq, key, listeners)
    VALUES (%(r)s, %(n)s, 0, %(k)s, ARRAY[pg_backend_pid()])
    ON CONFLICT (key) DO UPDATE SET listeners = array_append(
        ARRAY(SELECT l.pid FROM unnest(h.listeners) AS l(pid)
            WHERE l.pid IN (SELECT a.pid FROM pg_stat_activity a) AND l.pid <> pg_backend_pid()),
        pg_backend_pid())"""

#: Unregister the connection from a ledger (key).
NOT_LISTENING = """UPDATE attempt_ledger_heads
    SET listeners = array_remove(listeners, pg_backend_pid()) WHERE key = %s"""


def id_bytes(text: str) -> bytes:
    """An id as stored: UTF-8, a lone surrogate kept (no append can write one, so such an id
    matches nothing, but reading it is no error)."""
    return text.encode("utf-8", "surrogatepass")


def id_text(data: bytes) -> str:
    """The id :func:`id_bytes` stored."""
    return data.decode("utf-8", "surrogatepass")


def ledger_name(run_id: str, node_id: str) -> Path:
    """How errors name a database ledger: ``postgres:/<run_id>/<node_id>``."""
    return Path("postgres:") / run_id / node_id


def ledger_key(run_id: str, node_id: str) -> bytes:
    """The 32-byte key of a ledger: what the tables are indexed by; its hex is what a commit
    notifies on :data:`CHANNEL`."""
    run, node = id_bytes(run_id), id_bytes(node_id)
    return hashlib.sha256(len(run).to_bytes(8, "big") + run + node).digest()


def migrate(conninfo: str | psycopg.Connection[Any]) -> int:
    """Create the schema, or upgrade an older one in place keeping its data; idempotent, safe
    to run concurrently. Clients of an older version cannot use an upgraded database.

    :returns: the schema version now in place.
    :raises TypeError: if ``conninfo`` is neither a string nor a ``psycopg.Connection``.
    :raises LedgerError: if the database has a newer schema than this library knows, or one
        that never existed.
    :raises psycopg.Error: if the database refuses.
    """
    if not isinstance(conninfo, (str, psycopg.Connection)):
        kind = type(conninfo).__name__
        raise TypeError(f"conninfo must be a connection string or a psycopg.Connection, not {kind}")
    conn = psycopg.connect(conninfo) if isinstance(conninfo, str) else conninfo
    try:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(hashtext('attempt_ledger_migrate'))")
            conn.execute(
                "CREATE TABLE IF NOT EXISTS attempt_ledger_schema (version integer NOT NULL)"
            )
            row = conn.execute("SELECT max(version) FROM attempt_ledger_schema").fetchone()
            version = None if row is None else row[0]
            if version is not None and version > SCHEMA_VERSION:
                raise LedgerError(
                    Path("postgres:"),
                    f"the database has schema version {version}; this library knows up to"
                    f" {SCHEMA_VERSION}",
                )
            if version != SCHEMA_VERSION:
                steps = {
                    None: _TABLES,
                    1: _UPGRADE_FROM_1 + _UPGRADE_FROM_2 + _UPGRADE_FROM_3,
                    2: _UPGRADE_FROM_2 + _UPGRADE_FROM_3,
                    3: _UPGRADE_FROM_3,
                }
                if version not in steps:
                    raise LedgerError(Path("postgres:"), f"unknown schema version {version}")
                for statement in steps[version]:
                    conn.execute(statement)
                conn.execute("DELETE FROM attempt_ledger_schema")
                conn.execute("INSERT INTO attempt_ledger_schema VALUES (%s)", (SCHEMA_VERSION,))
        return SCHEMA_VERSION
    finally:
        if isinstance(conninfo, str):
            conn.close()
