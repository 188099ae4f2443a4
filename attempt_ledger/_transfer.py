"""Moving ledgers between files and PostgreSQL, line for line (same seqs, same bytes)."""

from __future__ import annotations

import os
from pathlib import Path

import psycopg

from ._errors import LedgerError
from ._ledger import AttemptLedger
from ._reader import iter_decoded


def copy_to_postgres(path: str | os.PathLike[str], conninfo: str) -> tuple[str, str, int]:
    """Copy a file ledger into the database: same seqs, same line bytes.

    Only well-typed records are copied (``verify`` reports the rest). The database ledger must
    be empty, and every record in the file must carry the same raw ids.

    :returns: ``(run_id, node_id, records copied)``; ``("", "", 0)`` for a file without records.
    :raises LedgerError: if the file holds records of several ledgers (a path collision) or the
        database ledger already has records; the database is then unchanged.
    """
    rows: list[tuple[str, str, int, bytes]] = []
    for record, line, _ in iter_decoded(path):
        if record is not None and line is not None:
            rows.append((record.run_id, record.node_id, record.seq, line))
    ids = {(run_id, node_id) for run_id, node_id, _, _ in rows}
    if len(ids) > 1:
        raise LedgerError(path, f"records of {len(ids)} ledgers share this file: {sorted(ids)}")
    if not rows:
        return "", "", 0
    key = ids.pop()
    with psycopg.connect(conninfo) as conn, conn.transaction():
        conn.execute(
            "INSERT INTO attempt_ledger_heads VALUES (%s, %s, 0) ON CONFLICT DO NOTHING", key
        )
        row = conn.execute(
            "SELECT last_seq FROM attempt_ledger_heads"
            " WHERE run_id = %s AND node_id = %s FOR UPDATE",
            key,
        ).fetchone()
        if row is not None and row[0]:
            raise LedgerError(path, f"the database already has records for {key[0]!r}/{key[1]!r}")
        with conn.cursor() as cursor:
            cursor.executemany("INSERT INTO attempt_ledger_receipts VALUES (%s, %s, %s, %s)", rows)
        conn.execute(
            "UPDATE attempt_ledger_heads SET last_seq = %s WHERE run_id = %s AND node_id = %s",
            (max(seq for _, _, seq, _ in rows), *key),
        )
    return key[0], key[1], len(rows)


def copy_from_postgres(
    conninfo: str, run_id: str, node_id: str, root: str | os.PathLike[str]
) -> Path:
    """Write a database ledger out as a file ledger under ``root``, line for line.

    Written under the file ledger's lock, so no appender interleaves.

    :returns: the file written.
    :raises LedgerError: if the file ledger exists and is not empty; it is then unchanged.
    """
    target = AttemptLedger(root, run_id, node_id)
    target._lock.acquire()  # creates the run directory too
    try:
        if target.path.exists() and target.path.stat().st_size:
            raise LedgerError(target.path, "the file ledger is not empty")
        query = (
            "SELECT line FROM attempt_ledger_receipts"
            " WHERE run_id = %s AND node_id = %s ORDER BY seq"
        )
        with psycopg.connect(conninfo) as conn, open(target.path, "ab") as out:
            for (line,) in conn.execute(query, (run_id, node_id)):
                out.write(bytes(line) + b"\n")
    finally:
        target._lock.release()
        target.close()
    return target.path


def ledger_ids(conninfo: str) -> list[tuple[str, str]]:
    """Every (run_id, node_id) the database holds, sorted.

    :raises psycopg.Error: if the database cannot be reached or read.
    """
    with psycopg.connect(conninfo) as conn:
        rows = conn.execute("SELECT run_id, node_id FROM attempt_ledger_heads ORDER BY 1, 2")
        return [(run_id, node_id) for run_id, node_id in rows]
