"""The ledgers the benchmark compares, behind one small interface.

Only ``attempt_ledger`` itself is a correct, multiprocess-safe ledger. ``Floor`` is a lower
bound (it keeps seq in memory, so it is exact only in one process); ``Seed`` is the seed's
algorithm (an in-process lock, the whole file read on every append); the others are what a user
might reach for instead.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import ClassVar

from filelock import FileLock

from attempt_ledger import AttemptLedger, Ledger, ReceiptEvent, append_receipts, read_last_seq
from attempt_ledger._api import clear_cache

RUN, NODE = "bench-run", "bench-node"


def record_line(seq: int, attempt: int, event_type: str, payload: object) -> bytes:
    """The stdlib way to encode one receipt line (what the floor and the others write)."""
    return (
        json.dumps(
            {
                "version": 1,
                "run_id": RUN,
                "node_id": NODE,
                "attempt": attempt,
                "session_id": "bench",
                "seq": seq,
                "ts_ms": time.time_ns() // 1_000_000,
                "event_type": event_type,
                "payload": payload,
            },
            separators=(",", ":"),
            ensure_ascii=False,
        ).encode()
        + b"\n"
    )


class Contender:
    """One ledger implementation, opened on ``root``; ``append`` returns the last seq written."""

    name: ClassVar[str]
    exact_across_processes: ClassVar[bool] = True
    #: Appends per timed run; the seed's cost grows with every append, so it runs few.
    max_calls: ClassVar[int] = 1 << 30
    durable: bool

    def __init__(self, root: Path, *, durable: bool = False) -> None:
        self.root = root
        self.durable = durable

    def append(self, events: list[ReceiptEvent]) -> int:
        raise NotImplementedError

    def last_seq(self) -> int:
        raise NotImplementedError

    def seqs(self) -> list[int]:
        """Every seq stored, in storage order (to check exactness after a contended run)."""
        raise NotImplementedError

    def reset(self) -> None:
        """Start the next timed run from an empty ledger where that matters (the seed)."""

    def close(self) -> None:
        """Release what the contender holds open."""


def _file_seqs(path: Path) -> list[int]:
    from attempt_ledger import read_receipt_records

    return [r.seq for r in read_receipt_records(path)]


class LedgerObject(Contender):
    name = "attempt_ledger (AttemptLedger)"
    hash_chain: ClassVar[bool] = False

    def __init__(self, root: Path, *, durable: bool = False, node: str = NODE) -> None:
        super().__init__(root, durable=durable)
        self.ledger: Ledger = AttemptLedger(
            root, RUN, node, durable=durable, hash_chain=self.hash_chain
        )

    def append(self, events: list[ReceiptEvent]) -> int:
        return self.ledger.append(1, "bench", events).seq

    def last_seq(self) -> int:
        return self.ledger.last_seq()

    def seqs(self) -> list[int]:
        return [record.seq for record in self.ledger.iter_records()]

    def close(self) -> None:
        self.ledger.close()


class ChainedLedgerObject(LedgerObject):
    name = "attempt_ledger, hash_chain=True (schema 2)"
    hash_chain = True


def pg_dsn(durable: bool) -> str:
    """The server ``$ATTEMPT_LEDGER_PG_DSN`` names (scripts/with-postgres starts one, with
    ``fsync=off``); when ``durable``, the ``fsync=on``, ``synchronous_commit=on`` one that
    ``scenarios.durable_postgres`` starts and names in ``$ATTEMPT_LEDGER_PG_DURABLE_DSN``."""
    return os.environ["ATTEMPT_LEDGER_PG_DURABLE_DSN" if durable else "ATTEMPT_LEDGER_PG_DSN"]


class LedgerFsyncInLock(LedgerObject):
    """``AttemptLedger`` in durable mode as it was before group commit: the fsync inside the
    lock (as asyncio's durable append, in its executor thread, still does)."""

    name = "attempt_ledger, fsync inside the lock"

    def append(self, events: list[ReceiptEvent]) -> int:
        from attempt_ledger._codec import encode_batch

        ledger = self.ledger
        assert isinstance(ledger, AttemptLedger)
        batch = encode_batch(ledger.path, RUN, ledger.node_id, 1, "bench", events)
        return ledger._under_lock(batch, None, None).seq


class Postgres(LedgerObject):
    """``PostgresLedger`` on the server of :func:`pg_dsn`; each benchmark directory gets its
    own run id, so runs never share a ledger."""

    name = "attempt_ledger.postgres (PostgresLedger)"

    def __init__(self, root: Path, *, durable: bool = False, node: str = NODE) -> None:
        from attempt_ledger.postgres import PostgresLedger, migrate

        Contender.__init__(self, root, durable=durable)
        dsn = pg_dsn(durable)
        migrate(dsn)
        self.ledger = PostgresLedger(dsn, f"{RUN}-{root.parent.name}-{root.name}", node)
        # Connect now, as the bare INSERT does in its __init__: setting up a connection (a
        # new server process, several ms) is no part of an append, and timed it weighed on
        # a short round of the ledger's only.
        self.ledger.last_seq()


class PostgresInsert(Contender):
    """The PostgreSQL floor: each record a one-row ``INSERT`` of its ``json.dumps`` line into a
    plain table (no key, no index), one autocommit transaction per append, on the server of
    :func:`pg_dsn`; seq kept in memory."""

    name = "bare INSERT (PostgreSQL floor)"
    exact_across_processes = False

    def __init__(self, root: Path, *, durable: bool = False, node: str = NODE) -> None:
        import psycopg

        super().__init__(root, durable=durable)
        self.db = psycopg.connect(pg_dsn(durable), autocommit=True)
        self.db.execute("CREATE TABLE IF NOT EXISTS bench_insert_floor (line bytea NOT NULL)")
        self.cursor = self.db.cursor()  # kept: a cursor per statement costs several µs
        self.seq = 0

    def append(self, events: list[ReceiptEvent]) -> int:
        for event in events:
            self.seq += 1
            line = record_line(self.seq, 1, event.event_type, event.payload)
            self.cursor.execute("INSERT INTO bench_insert_floor (line) VALUES (%s)", (line,))
        return self.seq

    def last_seq(self) -> int:
        return self.seq

    def close(self) -> None:
        self.db.close()


class PostgresInsertPlain(PostgresInsert):
    """The bare INSERT written the plain psycopg way, ``connection.execute`` (a new cursor
    per statement): what the floor costs without keeping a cursor."""

    name = "bare INSERT, a cursor per statement"

    def append(self, events: list[ReceiptEvent]) -> int:
        for event in events:
            self.seq += 1
            line = record_line(self.seq, 1, event.event_type, event.payload)
            self.db.execute("INSERT INTO bench_insert_floor (line) VALUES (%s)", (line,))
        return self.seq


class PostgresInsertPrepared(PostgresInsert):
    """The bare INSERT prepared once and sent through libpq with a binary parameter, as
    ``PostgresLedger`` sends its one-line append: the floor without psycopg's per-call cursor
    work, to tell the server's share of the gap from the client's."""

    name = "bare INSERT, prepared, through libpq"

    def __init__(self, root: Path, *, durable: bool = False, node: str = NODE) -> None:
        super().__init__(root, durable=durable, node=node)
        result = self.db.pgconn.prepare(
            b"bench_insert", b"INSERT INTO bench_insert_floor (line) VALUES ($1)", [17]
        )
        assert result.error_message == b"", result.error_message

    def append(self, events: list[ReceiptEvent]) -> int:
        from psycopg import generators

        db, pgconn = self.db, self.db.pgconn
        for event in events:
            self.seq += 1
            line = record_line(self.seq, 1, event.event_type, event.payload)
            with db.lock:
                pgconn.send_query_prepared(b"bench_insert", [line], [1])
                (result,) = db.wait(generators.execute(pgconn))
            assert result.command_tuples == 1, result.error_message
        return self.seq


class LedgerFunctions(Contender):
    name = "attempt_ledger (append_receipts)"

    def append(self, events: list[ReceiptEvent]) -> int:
        return append_receipts(self.root, RUN, NODE, 1, "bench", events).seq

    def last_seq(self) -> int:
        return read_last_seq(self.root / RUN / f"{NODE}.jsonl")

    def seqs(self) -> list[int]:
        return _file_seqs(self.root / RUN / f"{NODE}.jsonl")

    def close(self) -> None:
        clear_cache()


class Floor(Contender):
    """``flock`` on a held-open sidecar plus one ``O_APPEND`` write; seq kept in memory."""

    name = "floor (flock + write)"
    exact_across_processes = False

    def __init__(self, root: Path, *, durable: bool = False) -> None:
        super().__init__(root, durable=durable)
        directory = root / RUN
        directory.mkdir(parents=True, exist_ok=True)
        self.lock_fd = os.open(directory / f"{NODE}.floor.lock", os.O_RDWR | os.O_CREAT, 0o644)
        self.path = directory / f"{NODE}.floor.jsonl"
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.seq = 0

    def encode(self, events: list[ReceiptEvent]) -> bytes:
        return b"".join(
            record_line(self.seq + i, 1, e.event_type, e.payload) for i, e in enumerate(events, 1)
        )

    def append(self, events: list[ReceiptEvent]) -> int:
        data = self.encode(events)
        fcntl.flock(self.lock_fd, fcntl.LOCK_EX)
        os.write(self.fd, data)
        if self.durable:
            os.fsync(self.fd)
        fcntl.flock(self.lock_fd, fcntl.LOCK_UN)
        self.seq += len(events)
        return self.seq

    def last_seq(self) -> int:
        return self.seq

    def seqs(self) -> list[int]:
        return _file_seqs(self.path)

    def close(self) -> None:
        os.close(self.fd)
        os.close(self.lock_fd)


class FloorSyncAfter(Floor):
    """The floor with its fsync made after the lock's release: the bare group commit that the
    durable ledger does (issue 12's prototype), for its durable N-process rows."""

    name = "floor, fsync after the lock"

    # Floor.append with the fsync moved, not a flag in it: the floor's own hot path, the
    # 1-event target's reference, stays the code every earlier run measured.
    def append(self, events: list[ReceiptEvent]) -> int:
        data = self.encode(events)
        fcntl.flock(self.lock_fd, fcntl.LOCK_EX)
        os.write(self.fd, data)
        fcntl.flock(self.lock_fd, fcntl.LOCK_UN)
        if self.durable:
            os.fsync(self.fd)
        self.seq += len(events)
        return self.seq


class BareFloor(Floor):
    """The floor with the JSON encoding taken out: the line is a template with the seq
    spliced in, so only ``flock`` and ``write`` are left."""

    name = "bare floor (flock + write, pre-encoded)"
    template: tuple[bytes, bytes] | None = None

    def encode(self, events: list[ReceiptEvent]) -> bytes:
        if self.template is None:  # every event of the benchmark is the same
            line = record_line(10**9, 1, events[0].event_type, events[0].payload)
            head, tail = line.split(b"1000000000", 1)
            self.template = (head, tail)
        head, tail = self.template
        return b"".join(b"%s%d%s" % (head, self.seq + i, tail) for i in range(1, len(events) + 1))


class Seed(Contender):
    """The seed's algorithm: a per-path in-process mutex; the whole file read for the max seq;
    the file opened, written and flushed once per record."""

    name = "seed algorithm"
    exact_across_processes = False
    max_calls = 300
    _locks: ClassVar[dict[str, threading.Lock]] = {}

    def __init__(self, root: Path, *, durable: bool = False) -> None:
        super().__init__(root, durable=durable)
        self.path = root / RUN / f"{NODE}.seed.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def last_seq(self) -> int:
        try:
            content = self.path.read_text()
        except (OSError, UnicodeDecodeError):
            return 0
        best = 0
        for line in content.splitlines():
            try:
                seq = json.loads(line).get("seq")
            except (ValueError, AttributeError):
                continue
            if isinstance(seq, int):
                best = max(best, seq)
        return best

    def seqs(self) -> list[int]:
        return _file_seqs(self.path)

    def reset(self) -> None:
        self.path.unlink(missing_ok=True)

    def append(self, events: list[ReceiptEvent]) -> int:
        lock = self._locks.setdefault(str(self.path), threading.Lock())
        with lock:
            seq = self.last_seq()
            for event in events:
                seq += 1
                with self.path.open("ab") as f:
                    f.write(record_line(seq, 1, event.event_type, event.payload))
                    f.flush()
            return seq


class FileLockPerAppend(Contender):
    """``filelock.FileLock`` taken for every append, around a tail read and one write."""

    name = "filelock.FileLock per append"

    def __init__(self, root: Path, *, durable: bool = False) -> None:
        super().__init__(root, durable=durable)
        self.path = root / RUN / f"{NODE}.fl.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.lock = FileLock(str(self.path) + ".lock")

    def last_seq(self) -> int:
        return read_last_seq(self.path)

    def seqs(self) -> list[int]:
        return _file_seqs(self.path)

    def append(self, events: list[ReceiptEvent]) -> int:
        with self.lock:
            seq = read_last_seq(self.path)
            data = b"".join(
                record_line(seq + i, 1, e.event_type, e.payload) for i, e in enumerate(events, 1)
            )
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, data)
                if self.durable:
                    os.fsync(fd)
            finally:
                os.close(fd)
            return seq + len(events)


class SQLiteWAL(Contender):
    """SQLite in WAL mode: ``BEGIN IMMEDIATE``, ``max(seq) + 1``, insert, commit."""

    name = "SQLite WAL"

    def __init__(self, root: Path, *, durable: bool = False) -> None:
        super().__init__(root, durable=durable)
        root.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(root / "ledger.sqlite3", timeout=60, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS receipts (run_id TEXT, node_id TEXT, seq INTEGER, "
            "line BLOB, PRIMARY KEY (run_id, node_id, seq)) WITHOUT ROWID"
        )

    def last_seq(self) -> int:
        row = self.db.execute(
            "SELECT max(seq) FROM receipts WHERE run_id=? AND node_id=?", (RUN, NODE)
        ).fetchone()
        return row[0] or 0

    def seqs(self) -> list[int]:
        query = "SELECT seq FROM receipts WHERE run_id=? AND node_id=? ORDER BY seq"
        return [row[0] for row in self.db.execute(query, (RUN, NODE))]

    def append(self, events: list[ReceiptEvent]) -> int:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            seq = self.last_seq()
            self.db.executemany(
                "INSERT INTO receipts VALUES (?, ?, ?, ?)",
                [
                    (RUN, NODE, seq + i, record_line(seq + i, 1, e.event_type, e.payload))
                    for i, e in enumerate(events, 1)
                ],
            )
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        return seq + len(events)

    def close(self) -> None:
        self.db.close()


CONTENDERS: dict[str, type[Contender]] = {
    "ledger": LedgerObject,
    "ledger_v2": ChainedLedgerObject,
    "functions": LedgerFunctions,
    "floor": Floor,
    "floor_after": FloorSyncAfter,
    "bare": BareFloor,
    "seed": Seed,
    "filelock": FileLockPerAppend,
    "sqlite": SQLiteWAL,
    "postgres": Postgres,
    "pginsert": PostgresInsert,
    "pginsert-plain": PostgresInsertPlain,
    "pginsert-pq": PostgresInsertPrepared,
    "ledger_lockfsync": LedgerFsyncInLock,
}
