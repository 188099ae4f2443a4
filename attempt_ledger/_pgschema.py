"""The PostgreSQL schema: its tables, the append function, how a ledger is keyed, and migrate().

A ledger's ids are stored as bytes (``text`` cannot hold NUL) and it is keyed by a fixed-size
digest of them: an index entry must stay under ~2.7 kB and a NOTIFY payload under 8,000 bytes,
whatever the length of the ids. Version 1 keyed by the ids as ``text``; :func:`migrate`
upgrades it in place.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import psycopg

from ._errors import LedgerError

#: The schema version :func:`migrate` creates or upgrades to.
SCHEMA_VERSION = 2
CHANNEL = "attempt_ledger"
#: SQLSTATEs of a missing or older schema: no such table, function or column.
MISSING_SCHEMA = frozenset({"42P01", "42883", "42703"})

# The key of a ledger, in SQL: sha256(8-byte big-endian length of run_id || run_id || node_id),
# the ids as UTF-8. The length prefix keeps ("ab", "c") and ("a", "bc") apart.
_KEY_SQL = "sha256(int8send(octet_length({r})::bigint) || {r} || {n})"

# Columns in the order an upgraded version-1 table has them, so that both look the same.
_TABLES = [
    """CREATE TABLE attempt_ledger_heads (
        run_id bytea NOT NULL, node_id bytea NOT NULL, last_seq numeric(20, 0) NOT NULL,
        key bytea PRIMARY KEY)""",
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

# An append in one round trip: lock (creating if need be) the head row, check, insert the lines
# built from the client's encoded pieces and the seqs, move the head, notify the key in hex.
_FUNCTION = """CREATE OR REPLACE FUNCTION attempt_ledger_append(
    k bytea, r bytea, n bytea, expected numeric, head bytea, middle bytea, tails bytea[],
    channel text, OUT ok boolean, OUT last numeric) LANGUAGE plpgsql AS $$
DECLARE count integer := cardinality(tails);
BEGIN
    INSERT INTO attempt_ledger_heads (run_id, node_id, last_seq, key) VALUES (r, n, 0, k)
        ON CONFLICT DO NOTHING;
    SELECT h.last_seq INTO last FROM attempt_ledger_heads h WHERE h.key = k FOR UPDATE;
    IF (expected IS NOT NULL AND expected <> last) OR last + count > 18446744073709551615 THEN
        ok := false;
        RETURN;
    END IF;
    INSERT INTO attempt_ledger_receipts (key, seq, line)
        SELECT k, last + i, head || convert_to((last + i)::text, 'UTF8') || middle || tail
        FROM unnest(tails) WITH ORDINALITY AS t(tail, i);
    UPDATE attempt_ledger_heads h SET last_seq = last + count WHERE h.key = k;
    PERFORM pg_notify(channel, encode(k, 'hex'));
    ok := true;
END $$"""


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
    :raises LedgerError: if the database has a newer schema than this library knows.
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
                for statement in _TABLES if version is None else _UPGRADE_FROM_1:
                    conn.execute(statement)
                conn.execute("DELETE FROM attempt_ledger_schema")
                conn.execute("INSERT INTO attempt_ledger_schema VALUES (%s)", (SCHEMA_VERSION,))
            conn.execute(_FUNCTION)
        return SCHEMA_VERSION
    finally:
        if isinstance(conninfo, str):
            conn.close()
