"""Schema v2: the encoder against upstream's vectors, the verifier, the manifest."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import attrs
import pytest

from attempt_ledger import (
    RECEIPT_SCHEMA_VERSION,
    RECEIPT_SCHEMA_VERSION_V2,
    LedgerIOError,
    ReceiptEvent,
    ReceiptLedgerManifest,
    ReceiptRecord,
    check_receipt_ledger_manifest,
    encode_chained_record,
    encode_record,
    receipt_ledger_manifest,
    verify_receipt_ledger,
)
from attempt_ledger._chain import (
    chain_head,
    hash_preimage,
    record_hash_of,
    render_chained,
)
from attempt_ledger._codec import encode_batch
from attempt_ledger._lines import decode_record

from ._chain_model import (
    LINES,
    NODE,
    RUN,
    VECTORS,
    chain,
    fatal,
    kinds,
    model_append,
    rehash,
    verify_bytes,
)

# -- the vectors ----------------------------------------------------------------------------------


def test_constants() -> None:
    assert (RECEIPT_SCHEMA_VERSION, RECEIPT_SCHEMA_VERSION_V2) == (1, 2)


def test_every_vector_line_is_reproduced_byte_for_byte() -> None:
    assert encode_record(decode_record(LINES[0])) + b"" == LINES[0] + b"\n"  # type: ignore[arg-type]
    for item in VECTORS["lines"][1:]:
        line = item["line"].encode()
        fields = json.loads(line)
        record = decode_record(line)
        assert record is not None
        encoded, digest = encode_chained_record(record, fields["prev_hash"])
        assert encoded == line + b"\n"
        assert digest == fields["record_hash"] == record_hash_of(line)
        assert hash_preimage(line) == item["preimage"].encode()
        assert hashlib.sha256(item["preimage"].encode()).hexdigest() == digest


def test_vector_batches_render_as_the_append_path_renders_them() -> None:
    # Two upstream batches: seqs 2..8 (attempt 2) and 9..14 (attempt 4294967295), one ts each.
    data = LINES[0] + b"\n"
    for first, last in ((2, 8), (9, 14)):
        records = [decode_record(line) for line in LINES[first - 1 : last]]
        assert all(records)
        r0 = records[0]
        assert r0 is not None
        events = [ReceiptEvent(r.event_type, r.payload) for r in records if r is not None]
        batch = encode_batch(Path("x"), RUN, NODE, r0.attempt, r0.session_id, events)
        prev = record_hash_of(data.split(b"\n")[-2])
        rendered, digest = render_chained(batch, first, r0.ts_ms, prev)
        assert rendered == b"".join(line + b"\n" for line in LINES[first - 1 : last])
        assert digest == json.loads(LINES[last - 1])["record_hash"]
        data += rendered
    assert data == b"".join(line + b"\n" for line in LINES)


def test_vectors_verify_as_upstream(tmp_path: Path) -> None:
    result = verify_bytes(tmp_path, b"".join(line + b"\n" for line in LINES))
    upstream = VECTORS["verify"]
    for name, value in upstream.items():
        assert getattr(result, name) == value, name
    assert result.problems == ()


def test_render_checks_prev_hash() -> None:
    batch = encode_batch(Path("x"), "r", "n", 1, "s", [ReceiptEvent("e")])
    for bad in ("A" * 64, "a" * 63, "g" * 64, 7, b"a" * 64, "a" * 64 + "\n", " " + "a" * 63):
        with pytest.raises(ValueError, match="prev_hash"):
            render_chained(batch, 1, 2, bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="empty"):
        render_chained(encode_batch(Path("x"), "r", "n", 1, "s", []), 1, 2, None)
    with pytest.raises(ValueError, match="encode_head"):
        chain_head(b'{"version":2,')
    with pytest.raises(ValueError, match="version"):
        encode_chained_record(ReceiptRecord(1, "r", "n", 1, "s", 1, 2, "e", None), None)


def test_record_hash_of_reads_only_the_last_members() -> None:
    assert record_hash_of(LINES[0]) is None
    fake = b'{"seq":1,"p":",\\"prev_hash\\":null,\\"record_hash\\":\\"' + b"a" * 64 + b'\\"}"}'
    assert json.loads(fake)
    assert record_hash_of(fake) is None
    nested = b'{"seq":1,"p":{"prev_hash":null,"record_hash":"' + b"a" * 64 + b'"}}'
    assert record_hash_of(nested) is None
    line, digest = encode_chained_record(
        ReceiptRecord(2, "r", "n", 1, "s", 1, 2, "e", ',"prev_hash":null,"record_hash":"'), None
    )
    assert record_hash_of(line[:-1]) == digest


# -- verification: same verdict as upstream where upstream is right -----------------------------


def test_empty_missing_and_v1_ledgers(tmp_path: Path) -> None:
    missing = verify_receipt_ledger(tmp_path / "nope.jsonl")
    assert (missing.valid, missing.schema_version, kinds(missing)) == (False, 0, ["missing"])
    empty = verify_bytes(tmp_path, b"")
    assert (empty.valid, empty.schema_version, empty.record_count) == (True, 1, 0)
    v1 = verify_bytes(tmp_path, LINES[0] + b"\n")
    assert (v1.valid, v1.schema_version, v1.root_hash, v1.record_count) == (True, 1, None, 1)


def test_seq_gap_and_replay_as_upstream(tmp_path: Path) -> None:
    lines = chain(4).split(b"\n")[:-1]
    gap = verify_bytes(tmp_path, b"\n".join([lines[0], lines[2], lines[3]]) + b"\n")
    violation = gap.violation
    assert (violation.kind, violation.seq, violation.expected, violation.line) == (
        "seq_gap",
        3,
        2,
        2,
    )
    assert "chain_break" in kinds(gap)  # reported too, though the seq problem comes first
    replay = verify_bytes(tmp_path, b"\n".join([*lines, lines[1]]) + b"\n")
    violation = replay.violation
    assert (violation.kind, violation.seq, violation.expected) == ("seq_replay", 2, 2)


def test_hash_mismatch_and_chain_break(tmp_path: Path) -> None:
    lines = chain(3).split(b"\n")[:-1]
    edited = lines[1].replace(b'"i":1', b'"i":9')
    result = verify_bytes(tmp_path, b"\n".join([lines[0], edited, lines[2]]) + b"\n")
    assert fatal(result) == ["record_hash_mismatch"]  # the next link holds: one problem
    assert result.violation.expected == hashlib.sha256(hash_preimage(edited)).hexdigest()
    # Rehashed by the tamperer: the next record's link breaks instead.
    record = decode_record(edited)
    assert record is not None
    rehashed = encode_chained_record(record, record_hash_of(lines[0]))[0][:-1]
    result = verify_bytes(tmp_path, b"\n".join([lines[0], rehashed, lines[2]]) + b"\n")
    assert fatal(result) == ["chain_break"]
    assert result.violation.expected == record_hash_of(rehashed)


# -- verification: stricter where upstream is blind --------------------------------------------


def _drop_hashes(line: bytes) -> bytes:
    return re.sub(rb',"prev_hash":[^,]*,"record_hash":"[0-9a-f]{64}"', b"", line)


@pytest.mark.parametrize(
    ("change", "kind"),
    [
        (lambda line: re.sub(rb',"record_hash":"[0-9a-f]{64}"', b"", line), "bad_hash_fields"),
        (lambda line: _drop_hashes(line).replace(b'"i":2', b'"i":7'), "missing_record_hash"),
        (lambda line: re.sub(rb'"[0-9a-f]{64}"}$', b"null}", line), "bad_hash_fields"),
        (
            lambda line: rehash(line.replace(b'"version":2', b'"version":2,"version":2')),
            "duplicate_key",
        ),
        (lambda line: rehash(line.replace(b'"version":2', b'"version":3')), "wrong_version"),
        (lambda line: line.replace(b"\xc3\xa9", b"\\u00e9"), "record_hash_mismatch"),
        (lambda line: line + b" ", "bad_hash_fields"),
    ],
)
def test_changes_upstream_misses_on_the_last_line(
    tmp_path: Path, change: object, kind: str
) -> None:
    lines = chain(3).split(b"\n")[:-1]
    changed = change(lines[2])  # type: ignore[operator]
    assert changed != lines[2]
    result = verify_bytes(tmp_path, b"\n".join([*lines[:2], changed]) + b"\n")
    assert not result.valid
    assert kind in fatal(result)


def test_first_hashed_record_must_chain_from_nothing(tmp_path: Path) -> None:
    elsewhere = hashlib.sha256(b"archived").hexdigest()
    record = decode_record(chain(1).split(b"\n")[0])
    assert record is not None
    line, _ = encode_chained_record(record, elsewhere)
    result = verify_bytes(tmp_path, line)
    assert fatal(result) == ["dangling_prev_hash"]
    # Unless the caller names the hash it continues from (an archived ledger's root).
    assert verify_bytes(tmp_path, line, chain_from=elsewhere).valid


def test_schema1_writer_inside_a_chain_is_one_problem_not_a_permanent_break(tmp_path: Path) -> None:
    data = chain(2)
    data += encode_record(ReceiptRecord(1, RUN, NODE, 1, "old", 3, 5, "e", None))
    data = model_append(data, [ReceiptEvent("again")])  # the last line is unhashed: null
    assert b'"prev_hash":null' in data.split(b"\n")[-2]
    result = verify_bytes(tmp_path, data)
    assert fatal(result) == ["unhashed_after_hashed"]
    assert result.violation.line == 3


def test_rewrite_and_truncation_need_a_root_hash(tmp_path: Path) -> None:
    data = chain(5)
    root = record_hash_of(data.split(b"\n")[-2])
    assert root is not None
    prefix = b"".join(line + b"\n" for line in data.split(b"\n")[:3])
    rewritten = chain(5, per_batch=1)
    assert rewritten != data
    for other in (prefix, rewritten, b""):
        assert verify_bytes(tmp_path, other).valid
        result = verify_bytes(tmp_path, other, expected_root_hash=root)
        assert fatal(result) == ["root_hash_not_found"]
    assert verify_bytes(tmp_path, data, expected_root_hash=root).valid
    grown = chain(2, data)
    assert verify_bytes(tmp_path, grown, expected_root_hash=root).valid


def test_floats_upstream_misreads_verify(tmp_path: Path) -> None:
    data = model_append(b"", [ReceiptEvent("e", {"x": 0.9856906946328695, "y": 1e-7})])
    assert b'{"x":0.9856906946328695,"y":1e-7}' in data
    assert verify_bytes(tmp_path, data).valid


def test_lines_split_on_newline_only(tmp_path: Path) -> None:
    payload = {"s": "a\u2028b\u2029c\x85d\x1ce\x1df\x1eg\x0bh\x0ci\rj"}
    data = model_append(b"", [ReceiptEvent("e\u2028", payload)] * 2)
    assert len(data.split(b"\n")) == 3
    result = verify_bytes(tmp_path, data)
    assert (result.valid, result.record_count) == (True, 2)


# -- junk, torn fragments and crashes -------------------------------------------------------------


def test_sealed_torn_fragment_is_a_notice_not_a_chain_break(tmp_path: Path) -> None:
    data = chain(2)
    torn = chain(1, data)[len(data) : -20]  # a crash cut the next line short
    data = model_append(data + torn, [ReceiptEvent("next")])  # seals it, chains past it
    result = verify_bytes(tmp_path, data)
    assert result.valid
    assert [(p.line, p.kind, p.fatal) for p in result.problems] == [(3, "skipped_line", False)]


def test_an_unsealed_end_is_invalid_unless_it_is_a_whole_record(tmp_path: Path) -> None:
    data = chain(2)
    torn = verify_bytes(tmp_path, data[:-5])
    assert fatal(torn) == ["torn_tail"]
    # A record that lost only its newline parses on its own: it counts, as for every reader.
    lost_newline = verify_bytes(tmp_path, data[:-1])
    assert lost_newline.valid
    assert lost_newline.record_count == 2
    assert lost_newline.root_hash == verify_bytes(tmp_path, data).root_hash
    junk = verify_bytes(tmp_path, data + b"not json\n\n")
    assert fatal(junk) == ["trailing_junk"]
    assert junk.violation.line == 3


def test_non_utf8_junk_between_records_is_skipped(tmp_path: Path) -> None:
    data = model_append(chain(1) + b"\xff\xfe junk\n", [ReceiptEvent("e")])
    result = verify_bytes(tmp_path, data)
    assert result.valid
    assert kinds(result) == ["skipped_line"]


# -- arguments, odd files ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"expected_root_hash": "A" * 64},
        {"expected_root_hash": b"a" * 64},
        {"expected_root_hash": 5},
        {"chain_from": "a" * 65},
        {"max_problems": -1},
        {"max_problems": 1.5},
    ],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        verify_receipt_ledger(tmp_path / "x.jsonl", **kwargs)  # type: ignore[arg-type]


def test_fifo_directory_and_symlink(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.jsonl"
    os.mkfifo(fifo)
    with pytest.raises(LedgerIOError, match="not a regular file"):
        verify_receipt_ledger(fifo)  # must not wait for a writer
    with pytest.raises(LedgerIOError, match=str(tmp_path)):
        verify_receipt_ledger(tmp_path)
    target = tmp_path / "real.jsonl"
    target.write_bytes(chain(2))
    link = tmp_path / "link.jsonl"
    link.symlink_to(target)
    assert verify_receipt_ledger(target).valid
    with pytest.raises(LedgerIOError, match="symbolic link"):  # as every reader: not followed
        verify_receipt_ledger(link)


def test_problems_are_capped_and_counted(tmp_path: Path) -> None:
    data = b"junk\n" * 50 + chain(1)
    result = verify_bytes(tmp_path, data)
    assert result.valid
    assert (len(result.problems), result.problem_count) == (50, 50)
    path = tmp_path / "ledger.jsonl"
    capped = verify_receipt_ledger(path, max_problems=3)
    assert (len(capped.problems), capped.problem_count) == (3, 50)
    assert str(capped.problems[0]) == "line 1: skipped_line: not a JSON object with an integer seq"


# -- the manifest -------------------------------------------------------------------------------


def test_manifest_and_checking_against_it(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    data = chain(4)
    path.write_bytes(data)
    manifest = receipt_ledger_manifest(path)
    assert (manifest.ledger_path, manifest.schema_version, manifest.record_count) == (
        str(path),
        2,
        4,
    )
    assert (manifest.last_seq, manifest.valid) == (4, True)
    assert manifest.root_hash == record_hash_of(data.split(b"\n")[-2])
    assert manifest.generated_at_ms > 1_700_000_000_000
    saved = manifest.to_json()
    assert list(json.loads(saved))[:6] == [
        "ledger_path",
        "schema_version",
        "record_count",
        "last_seq",
        "root_hash",
        "generated_at_ms",
    ]
    again = ReceiptLedgerManifest.from_json(saved)
    assert again == manifest
    assert check_receipt_ledger_manifest(again).valid
    path.write_bytes(chain(2, data))  # appended since: fine
    assert check_receipt_ledger_manifest(again).valid
    for changed in (data[: data.index(b"\n") + 1], chain(4, per_batch=2)):
        path.write_bytes(changed)  # truncated, or rewritten whole
        result = check_receipt_ledger_manifest(again)
        assert result.violation is not None
        assert result.violation.kind == "root_hash_not_found"


def test_manifest_of_unhashed_or_invalid_ledgers(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    path.write_bytes(chain(1))
    upstream = json.loads(receipt_ledger_manifest(path).to_json())
    del upstream["valid"]  # upstream's manifest has no such field
    assert ReceiptLedgerManifest.from_json(json.dumps(upstream)).valid
    path.write_bytes(LINES[0] + b"\n")
    manifest = receipt_ledger_manifest(path)
    assert (manifest.schema_version, manifest.root_hash, manifest.valid) == (1, None, True)
    with pytest.raises(ValueError, match="no root hash"):
        check_receipt_ledger_manifest(manifest)
    path.write_bytes(chain(2)[:-5])
    assert receipt_ledger_manifest(path).root_hash is None
    missing = receipt_ledger_manifest(tmp_path / "missing.jsonl")
    assert (missing.schema_version, missing.valid) == (0, False)
    for bad in (
        "[]",
        "{}",
        json.dumps({**upstream, "last_seq": -1}),
        json.dumps({**upstream, "root_hash": "x"}),
    ):
        with pytest.raises(ValueError, match="manifest"):
            ReceiptLedgerManifest.from_json(bad)


def test_verify_benchmark_smoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks import verify_chain

    assert verify_chain.main(["--size-mb", "1", "--path", str(tmp_path / "b.jsonl")]) == 0
    out = capsys.readouterr().out
    assert "verify_receipt_ledger: 1 MB" in out
    assert "valid=True" in out


def test_a_hashed_line_nested_deeper_than_upstream_reads_is_not_a_record(tmp_path: Path) -> None:
    # The verifier's fast path must not accept what the reading rule refuses.
    from attempt_ledger._records import MAX_PAYLOAD_DEPTH

    deep: object = 0
    for _ in range(MAX_PAYLOAD_DEPTH):
        deep = [deep]
    ok = ReceiptRecord(2, "r", "n", 1, "s", 1, 5, "e", deep)
    line, _ = encode_chained_record(ok, None)
    too_deep = line.replace(b'"payload":', b'"payload":[', 1).replace(
        b',"prev_hash"', b'],"prev_hash"', 1
    )
    # Re-hash the deeper line so that only its depth is wrong.
    body = too_deep[: too_deep.index(b',"record_hash"')]
    rehashed = (
        body + b',"record_hash":"' + hashlib.sha256(body + b"}").hexdigest().encode() + b'"}\n'
    )
    path = tmp_path / "deep.jsonl"
    path.write_bytes(line)
    assert verify_receipt_ledger(path).valid
    path.write_bytes(rehashed)
    result = verify_receipt_ledger(path)
    assert result.record_count == 0
    assert not result.valid


def test_manifest_functions_refuse_wrong_types_and_deep_text(tmp_path: Path) -> None:
    # from_json raised RecursionError (documented: ValueError); a dict or a path given as the
    # manifest raised AttributeError.
    with pytest.raises(ValueError, match="manifest"):
        ReceiptLedgerManifest.from_json("[" * 100_000)
    path = tmp_path / "ledger.jsonl"
    path.write_bytes(chain(1))
    saved = json.loads(receipt_ledger_manifest(path).to_json())
    for wrong in (None, saved, str(path)):
        with pytest.raises(TypeError, match="ReceiptLedgerManifest"):
            check_receipt_ledger_manifest(wrong)  # type: ignore[arg-type]


def test_an_append_in_flight_when_verify_opens_the_file_is_not_a_torn_tail(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Verify takes the file's size, then reads. A writer's line half written at that moment (a
    # line across a page boundary is visible in part) was reported as a torn tail, so a healthy
    # ledger being appended to verified invalid and its manifest had no root hash.
    import attempt_ledger._verify_chain as verify_chain

    path = tmp_path / "ledger.jsonl"
    data = chain(2)
    full = chain(1, data)
    half = len(data) + (len(full) - len(data)) // 2
    path.write_bytes(full[:half])  # the writer is half way through the third line
    reading = verify_chain.iter_lines

    def writer_finishes_first(fd: int) -> object:
        with path.open("ab") as f:  # after verify took the size, before it reads
            f.write(full[half:])
        return reading(fd)

    monkeypatch.setattr(verify_chain, "iter_lines", writer_finishes_first)
    result = verify_receipt_ledger(path)
    assert result.valid, result.problems
    assert result.record_count == 2  # what the file held when it was opened
    assert result.root_hash == verify_bytes(tmp_path, data).root_hash
    # A tail torn by a crash, with nothing after it, is still one.
    monkeypatch.setattr(verify_chain, "iter_lines", reading)
    path.write_bytes(full[:half])
    assert fatal(verify_receipt_ledger(path)) == ["torn_tail"]


def test_a_manifest_of_any_path_can_be_saved_and_read_back(tmp_path: Path) -> None:
    # to_json kept a path that is not UTF-8 as lone surrogates (the text could not be written
    # to a UTF-8 file), and a bytes path as bytes (to_json raised TypeError).
    path = tmp_path / os.fsdecode(b"ledger-\xff.jsonl")
    path.write_bytes(chain(2))
    for given in (path, os.fsencode(path)):
        manifest = receipt_ledger_manifest(given)
        saved = tmp_path / "manifest.json"
        saved.write_text(manifest.to_json(), encoding="utf-8")
        again = ReceiptLedgerManifest.from_json(saved.read_bytes())
        assert again == attrs.evolve(manifest, ledger_path=str(path))
        assert os.fsencode(again.ledger_path) == os.fsencode(path)
        assert check_receipt_ledger_manifest(again).valid
