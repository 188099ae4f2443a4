"""Hash chains on PostgreSQL: the same lines as the file ledger, byte for byte; the same
continuation rule; verification; copies that keep chains; the upgrade to schema 4."""

from __future__ import annotations

import multiprocessing
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings

from attempt_ledger import AttemptLedger, ReceiptEvent, verify_receipt_ledger

from .strategies import chain_histories

psycopg = pytest.importorskip("psycopg")
from attempt_ledger.postgres import (  # noqa: E402
    SCHEMA_VERSION,
    PostgresLedger,
    copy_from_postgres,
    copy_to_postgres,
    migrate,
)

from .test_postgres import fresh_dsn  # noqa: E402, F401 - a fixture

EV = [ReceiptEvent("e", {"f": 0.00001, "s": "é\n\\"})]
JOIN = 60


@pytest.fixture
def dsn(pg_dsn: str) -> str:
    return pg_dsn


def _stored(dsn: str, ledger: PostgresLedger) -> bytes:
    return b"".join(line + b"\n" for line in ledger._iter_lines(0))


@settings(max_examples=15)
@given(history=chain_histories.map(lambda h: [step for step in h if step[0] != "junk"]))
def test_lines_are_the_file_ledgers_byte_for_byte(
    pg_dsn: str, tmp_path_factory: pytest.TempPathFactory, history: list
) -> None:
    run_id = uuid.uuid4().hex
    root = tmp_path_factory.mktemp("files")
    real = time.time_ns
    time.time_ns = lambda: 1_700_000_000_000 * 1_000_000  # one ts_ms for both backends
    try:
        for kind, batch in history:
            chained = kind == "v2"
            with PostgresLedger(pg_dsn, run_id, "n", hash_chain=chained) as pg:
                pg.append(1, "s", batch)
            AttemptLedger(root, run_id, "n", hash_chain=chained).append(1, "s", batch)
    finally:
        time.time_ns = real
    file_ledger = AttemptLedger(root, run_id, "n")
    with PostgresLedger(pg_dsn, run_id, "n") as pg:
        expected = file_ledger.path.read_bytes() if history else b""
        assert _stored(pg_dsn, pg) == expected
        result = pg.verify()
    assert result.valid == verify_receipt_ledger(file_ledger.path).valid if history else True


def test_a_chain_is_continued_whatever_the_option_and_verifies(dsn: str) -> None:
    run_id = uuid.uuid4().hex
    with PostgresLedger(dsn, run_id, "n") as plain:
        plain.append(1, "s", EV)  # schema 1
        with PostgresLedger(dsn, run_id, "n", hash_chain=True) as chained:
            chained.append(1, "s", EV * 3)
        plain.append(2, "s", EV)  # continues the chain: this object learns it on refusal
        plain.append(3, "s", EV * 2)
        lines = list(plain._iter_lines(0))
        result = plain.verify()
    assert [line[:12] for line in lines] == [b'{"version":1'] + [b'{"version":2'] * 6
    assert (result.valid, result.record_count, result.hashed_record_count) == (True, 7, 6)
    with PostgresLedger(dsn, run_id, "n") as again:
        assert again.verify(expected_root_hash=result.root_hash).valid


def test_verify_finds_a_changed_line(dsn: str) -> None:
    run_id = uuid.uuid4().hex
    with PostgresLedger(dsn, run_id, "n", hash_chain=True) as ledger:
        ledger.append(1, "s", EV * 3)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(
                "UPDATE attempt_ledger_receipts"
                " SET line = convert_to(replace(convert_from(line, 'UTF8'), 'é', 'e'), 'UTF8')"
                " WHERE key = %s AND seq = 2",
                (ledger._key,),
            )
        result = ledger.verify()
        assert not result.valid
        assert result.violation is not None
        assert (result.violation.seq, result.violation.kind) == (2, "record_hash_mismatch")
        with pytest.raises(ValueError, match="expected_root_hash"):
            ledger.verify(expected_root_hash="nope")


def _append_chained(dsn: str, run_id: str, worker: int, count: int, out: Any) -> None:
    with PostgresLedger(dsn, run_id, "n", hash_chain=worker % 2 == 0) as ledger:
        seqs = [ledger.append(worker, "w", EV * (1 + i % 3)).seq for i in range(count)]
    out.put(seqs)


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_processes_keep_one_chain(dsn: str, method: str) -> None:
    ctx = multiprocessing.get_context(method)
    run_id = uuid.uuid4().hex
    out = ctx.Queue()
    children = [
        ctx.Process(target=_append_chained, args=(dsn, run_id, w, 25, out)) for w in range(4)
    ]
    for child in children:
        child.start()
    try:
        for _ in children:
            out.get(timeout=JOIN)
    finally:
        for child in children:
            child.join(timeout=JOIN)
            if child.is_alive():
                child.kill()
    assert all(child.exitcode == 0 for child in children)
    with PostgresLedger(dsn, run_id, "n") as ledger:
        result = ledger.verify()
        seqs = [record.seq for record in ledger.records()]
    assert result.valid, result.problems
    assert seqs == list(range(1, len(seqs) + 1))


def test_copies_keep_chains_and_appends_continue_them(dsn: str, tmp_path: Path) -> None:
    run_id = uuid.uuid4().hex
    source = AttemptLedger(tmp_path / "a", run_id, "n", hash_chain=True)
    source.append(1, "s", EV * 2)
    assert copy_to_postgres(source.path, dsn) == (run_id, "n", 2)
    with PostgresLedger(dsn, run_id, "n") as pg:  # not asking: the chain is continued
        pg.append(2, "s", EV)
        assert pg.verify().hashed_record_count == 3
    back = copy_from_postgres(dsn, run_id, "n", tmp_path / "b")
    assert back.read_bytes().startswith(source.path.read_bytes())
    result = verify_receipt_ledger(back)
    assert (result.valid, result.hashed_record_count) == (True, 3)


def test_migrate_to_4_restores_the_last_hash(fresh_dsn: str) -> None:  # noqa: F811
    migrate(fresh_dsn)
    with PostgresLedger(fresh_dsn, "r", "n", hash_chain=True) as ledger:
        ledger.append(1, "s", EV * 2)
    with psycopg.connect(fresh_dsn, autocommit=True) as conn:  # back to what version 3 had
        conn.execute("ALTER TABLE attempt_ledger_heads DROP COLUMN last_hash")
        conn.execute("UPDATE attempt_ledger_schema SET version = 3")
    assert migrate(fresh_dsn) == SCHEMA_VERSION == 4
    with PostgresLedger(fresh_dsn, "r", "n") as ledger:
        ledger.append(2, "s", EV)  # continues the chain from the restored hash
        result = ledger.verify()
    assert (result.valid, result.hashed_record_count) == (True, 3)


@pytest.mark.parametrize("value", [1, "yes", None])
def test_hash_chain_must_be_a_bool(dsn: str, value: object) -> None:
    with pytest.raises(TypeError, match="hash_chain"):
        PostgresLedger(dsn, "r", "n", hash_chain=value)  # type: ignore[arg-type]
