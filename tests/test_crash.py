"""Every crash point of an append: each prefix of the bytes it writes, as a crash can leave it."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from attempt_ledger import AttemptLedger, ReceiptEvent, read_last_seq, read_receipt_records
from attempt_ledger._lines import line_seq

from .strategies import junk_lines, text

# Small events: the crash points are in the line structure, and every byte is one more point.
small_batches = st.lists(
    st.builds(ReceiptEvent, st.sampled_from(["a", " b", "é"]), st.one_of(st.none(), text)),
    min_size=1,
    max_size=3,
)


def naive_lines(data: bytes) -> list[bytes]:
    """The lines by a plain split: the final fragment is one when it parses as a valid line."""
    lines = data.split(b"\n")
    return lines if line_seq(lines[-1]) is not None else lines[:-1]


def naive_records(data: bytes) -> list[int]:
    """The seqs of the well-typed lines, by a plain forward split."""
    out = []
    for line in naive_lines(data):
        seq = line_seq(line)
        if seq is not None and b'"version"' in line:
            out.append(seq)
    return out


def naive_last_seq(data: bytes) -> int:
    for line in reversed(naive_lines(data)):
        seq = line_seq(line)
        if seq is not None:
            return seq
    return 0


ledger_histories = st.lists(
    st.one_of(small_batches.map(lambda b: ("append", b)), junk_lines.map(lambda j: ("junk", j))),
    max_size=4,
)


@settings(max_examples=20)
@given(
    history=ledger_histories,
    batch=small_batches,
    torn=st.sampled_from([b"", b'{"seq":9', b"\xff"]),
)
def test_every_crash_point_of_an_append(
    history: list[tuple[str, object]], batch: list[ReceiptEvent], torn: bytes
) -> None:
    work = Path(tempfile.mkdtemp())
    try:
        ledger = AttemptLedger(work, "run", "node")
        for kind, item in history:
            if kind == "append":
                ledger.append(1, "s", item)  # type: ignore[arg-type]
            else:
                ledger.path.parent.mkdir(parents=True, exist_ok=True)
                with ledger.path.open("ab") as f:
                    f.write(item)  # type: ignore[arg-type]
        ledger.path.parent.mkdir(parents=True, exist_ok=True)
        with ledger.path.open("ab") as f:
            f.write(torn)  # a crash of an earlier writer may have torn the last line
        before = ledger.path.read_bytes()
        committed = [r.seq for r in read_receipt_records(ledger.path)]
        ledger.append(2, "crash", batch)
        written = ledger.path.read_bytes()[len(before) :]
        ledger.close()
        for k in range(len(written) + 1):
            for tail in (b"", b"\0" * (len(written) - k)):
                _check_crash_point(ledger.path, before + written[:k] + tail, committed)
    finally:
        shutil.rmtree(work)


def _check_crash_point(path: Path, data: bytes, committed: list[int]) -> None:
    path.write_bytes(data)
    records = read_receipt_records(path)
    # What survived: the committed records, plus whole lines of the interrupted batch.
    assert [r.seq for r in records] == naive_records(data)
    assert [r.seq for r in records][: len(committed)] == committed
    assert all(r.session_id == "crash" for r in records[len(committed) :])
    expected = naive_last_seq(data) + 1
    assert read_last_seq(path) == expected - 1  # readers agree with the append
    ledger = AttemptLedger(path.parent.parent, "run", "node")
    summary = ledger.append(3, "after", [ReceiptEvent("next")])
    ledger.close()
    assert summary.seq == expected
    after = path.read_bytes()
    assert after.startswith(data)
    assert after.endswith(b"\n")
    last_line = after.split(b"\n")[-2]
    assert line_seq(last_line) == expected
    valid = [s for s in map(line_seq, after.split(b"\n")[:-1]) if s is not None]
    assert len(valid) == len(set(valid)), "a valid seq appears twice"
