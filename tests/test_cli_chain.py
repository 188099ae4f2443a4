"""The command line and hash chains: append --hash-chain, the CHAIN column, verify's chain
problems and --root-hash, manifest; and show's records with seq 0."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from attempt_ledger import AttemptLedger, ReceiptEvent

from .test_cli import one_line_error, run


@pytest.fixture
def chained(root: Path) -> AttemptLedger:
    ledger = AttemptLedger(root, "run/1", "node:a")
    ledger.append(1, "s1", [ReceiptEvent("plain")])
    done = run(
        root,
        "append",
        "run/1",
        "node:a",
        "--attempt",
        "2",
        "--session",
        "s2",
        "--event-type",
        "start",
        "--payload",
        '{"f":0.00001}',
        "--hash-chain",
    )
    assert done.returncode == 0, done
    ledger.append(3, "s3", [ReceiptEvent("after")])  # continues the chain
    return ledger


def test_append_hash_chain_and_the_chain_column(root: Path, chained: AttemptLedger) -> None:
    lines = chained.path.read_bytes().split(b"\n")[:-1]
    assert [line[:12] for line in lines] == [b'{"version":1', b'{"version":2', b'{"version":2']
    assert b'"payload":{"f":0.00001}' in lines[1]  # floats as upstream writes them
    table = run(root, "show", "run/1", "node:a").stdout.splitlines()
    chain_column = table[0].split().index("CHAIN") - 1  # "TIME (UTC)" is two words
    cells = [row.split()[chain_column] for row in table[1:]]
    assert cells[0] == "-"
    manifest = json.loads(run(root, "manifest", "run/1", "node:a").stdout)
    assert manifest["root_hash"].startswith(cells[2])
    assert len(cells[1]) == 12
    tail = run(root, "tail", "-n", "1", "run/1", "node:a").stdout.splitlines()
    assert tail[1].split()[chain_column] == cells[2]


def test_verify_reports_chain_problems_with_line_numbers(
    root: Path, chained: AttemptLedger
) -> None:
    assert run(root, "verify", "run/1", "node:a").returncode == 0
    data = chained.path.read_bytes()
    chained.path.write_bytes(data.replace(b'"event_type":"start"', b'"event_type":"stArt"'))
    done = run(root, "verify", "run/1", "node:a")
    assert done.returncode == 1
    assert f"{chained.path}:2: record-hash-mismatch:" in done.stdout
    assert f"{chained.path}:2: record-hash-mismatch:" in run(root, "verify", "--all").stdout


def test_verify_against_a_saved_root_hash(root: Path, chained: AttemptLedger) -> None:
    manifest = json.loads(run(root, "manifest", "run/1", "node:a").stdout)
    saved = manifest["root_hash"]
    assert manifest["record_count"] == manifest["last_seq"] == 3
    assert run(root, "verify", "run/1", "node:a", "--root-hash", saved).returncode == 0
    chained.append(4, "s4", [ReceiptEvent("later")])  # appends after the saved hash are fine
    assert run(root, "verify", "run/1", "node:a", "--root-hash", saved).returncode == 0
    data = chained.path.read_bytes()
    chained.path.write_bytes(b"".join(data.splitlines(keepends=True)[:2]))  # truncated
    done = run(root, "verify", "run/1", "node:a", "--root-hash", saved)
    assert done.returncode == 1
    assert "root-hash-not-found" in done.stdout


@pytest.mark.parametrize(
    "args",
    [
        ["verify", "run/1", "node:a", "--root-hash", "abc"],
        ["verify", "run/1", "node:a", "--root-hash", "A" * 64],
        ["verify", "--all", "--root-hash", "a" * 64],
        ["manifest", "run/1"],
    ],
)
def test_bad_chain_arguments_are_usage_errors(
    root: Path, chained: AttemptLedger, args: list[str]
) -> None:
    before = chained.path.read_bytes()
    done = run(root, *args)
    assert done.returncode == 2, done
    assert "Traceback" not in done.stderr
    assert chained.path.read_bytes() == before


def test_manifest_of_a_missing_ledger(root: Path) -> None:
    one_line_error(run(root, "manifest", "run/1", "node:a"), 2, "no such ledger")


def test_show_returns_records_with_seq_zero(root: Path) -> None:
    ledger = AttemptLedger(root, "r", "n")
    ledger.path.parent.mkdir(parents=True)
    zero = {
        "version": 1,
        "run_id": "r",
        "node_id": "n",
        "attempt": 0,
        "session_id": "s",
        "seq": 0,
        "ts_ms": 0,
        "event_type": "zero",
        "payload": None,
    }
    ledger.path.write_text(json.dumps(zero) + "\n")
    assert "zero" in run(root, "show", "r", "n").stdout
    assert run(root, "show", "r", "n", "--json").stdout.count("zero") == 1
    assert "zero" not in run(root, "show", "r", "n", "--since-seq", "0").stdout
