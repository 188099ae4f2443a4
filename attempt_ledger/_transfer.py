"""Moving ledgers between files and PostgreSQL, line for line (same seqs, same bytes)."""

from __future__ import annotations

import os
from pathlib import Path

import psycopg

from ._chain import record_hash_of
from ._errors import LedgerError
from ._handles import write_all
from ._ledger import AttemptLedger
from ._pgschema import id_bytes, id_text, ledger_key, ledger_name
from ._reader import iter_decoded, open_ledger


def copy_to_postgres(path: str | os.PathLike[str], conninfo: str) -> tuple[str, str, int]:
    """Copy a file ledger into the database: same seqs, same line bytes.

    Only well-typed records are copied (``verify`` reports the rest). The database ledger must
    be empty, and every record in the file must carry the same raw ids.

    :returns: ``(run_id, node_id, records copied)``; ``("", "", 0)`` for a file without records.
    :raises LedgerError: if there is no such file, the file holds records of several ledgers (a
        path collision) or the database ledger already has records; the database is then
        unchanged.
    """
    fd = open_ledger(path)
    if fd is None:
        raise LedgerError(path, "no such ledger")
    os.close(fd)
    rows: list[tuple[str, str, int, bytes]] = []
    for record, line, _ in iter_decoded(path):
        if record is not None and line is not None:
            rows.append((record.run_id, record.node_id, record.seq, line))
    ids = {(run_id, node_id) for run_id, node_id, _, _ in rows}
    if len(ids) > 1:
        raise LedgerError(path, f"records of {len(ids)} ledgers share this file: {sorted(ids)}")
    if not rows:
        return "", "", 0
    run_id, node_id = ids.pop()
    key = ledger_key(run_id, node_id)
    with psycopg.connect(conninfo) as conn, conn.transaction():
        conn.execute(
            "INSERT INTO attempt_ledger_heads (run_id, node_id, last_seq, key)"
            " VALUES (%s, %s, 0, %s) ON CONFLICT DO NOTHING",
            (id_bytes(run_id), id_bytes(node_id), key),
        )
        row = conn.execute(
            "SELECT last_seq FROM attempt_ledger_heads WHERE key = %s FOR UPDATE", (key,)
        ).fetchone()
        if row is not None and row[0]:
            raise LedgerError(path, f"the database already has records for {run_id!r}/{node_id!r}")
        with conn.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO attempt_ledger_receipts (key, seq, line) VALUES (%s, %s, %s)",
                [(key, seq, line) for _, _, seq, line in rows],
            )
        last = max(rows, key=lambda row: row[2])
        last_hash = record_hash_of(last[3])  # a chain the next append continues
        conn.execute(
            "UPDATE attempt_ledger_heads SET last_seq = %s, last_hash = %s WHERE key = %s",
            (last[2], None if last_hash is None else bytes.fromhex(last_hash), key),
        )
    return run_id, node_id, len(rows)


def copy_from_postgres(
    conninfo: str, run_id: str, node_id: str, root: str | os.PathLike[str]
) -> Path:
    """Write a database ledger out as a file ledger under ``root``, line for line.

    Written under the file ledger's lock, so no appender interleaves.

    :returns: the file written.
    :raises LedgerError: if the database has no such ledger, or the file ledger exists and is
        not empty; nothing is then written.
    """
    key = ledger_key(run_id, node_id)
    with psycopg.connect(conninfo) as conn:
        row = conn.execute("SELECT last_seq FROM attempt_ledger_heads WHERE key = %s", (key,))
        if not any(last_seq for (last_seq,) in row):
            raise LedgerError(ledger_name(run_id, node_id), "no such ledger in the database")
        target = AttemptLedger(root, run_id, node_id)
        target._lock.acquire()  # creates the run directory too
        try:
            fd = target._ledger_fd()  # a regular file, never through a symlink
            if os.fstat(fd).st_size:
                raise LedgerError(target.path, "the file ledger is not empty")
            query = "SELECT line FROM attempt_ledger_receipts WHERE key = %s ORDER BY seq"
            for (line,) in conn.execute(query, (key,)):
                write_all(fd, bytes(line) + b"\n")
        finally:
            target._lock.release()
            target.close()
    return target.path


def ledger_ids(conninfo: str) -> list[tuple[str, str]]:
    """Every (run_id, node_id) the database holds records of, sorted by code point.

    :raises psycopg.Error: if the database cannot be reached or read.
    """
    with psycopg.connect(conninfo) as conn:
        rows = conn.execute(
            "SELECT run_id, node_id FROM attempt_ledger_heads WHERE last_seq > 0 ORDER BY 1, 2"
        )
        return [(id_text(run_id), id_text(node_id)) for run_id, node_id in rows]
