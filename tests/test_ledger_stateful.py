"""The ledger against a small pure model, through random appends, foreign junk and reads."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import attrs
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from attempt_ledger import AttemptLedger, ReceiptEvent, ReceiptRecord, encode_record

from .strategies import attempts, ids, payloads

FOREIGN = ReceiptRecord(1, "other", "node", 0, "x", 3, 5, "foreign", {"k": 1})

# (bytes of a complete line without its "\n", its seq if valid, the record it holds if any).
# Classified by hand, so the model does not borrow the implementation's judgement.
JUNK: list[tuple[bytes, int | None, ReceiptRecord | None]] = [
    (b"not-json", None, None),
    (b"", None, None),
    (b"   ", None, None),
    (b'{"no_seq":1}', None, None),
    (b'{"seq":"7"}', None, None),
    (b'{"seq":7.0}', None, None),
    (b'{"seq":true}', None, None),
    (b'{"seq":7}', 7, None),
    (b'{"seq":0}', 0, None),
    (b"\xff\xfe", None, None),
    (b'{"seq":5,"x":"\xff"}', None, None),
    (b"\x00\x00\x00\x00", None, None),
    (encode_record(FOREIGN)[:-1], 3, FOREIGN),
]
# Unterminated fragments a crash or a foreign writer can leave at the end: those that parse on
# their own count as lines (a record that lost only its newline), the others do not.
FRAGMENTS: list[tuple[bytes, int | None, ReceiptRecord | None]] = [
    (b'{"seq":1', None, None),
    (b'{"version":1,"run_id"', None, None),
    (b"\xff", None, None),
    (b'{"seq":42}', 42, None),
    (encode_record(FOREIGN)[:-1], 3, FOREIGN),
]


@attrs.define
class Line:
    seq: int | None
    record: ReceiptRecord | None


class LedgerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp())
        self.ledger = AttemptLedger(self.dir, "run", "node")
        self.lines: list[Line] = []
        self.fragment: Line | None = None

    def teardown(self) -> None:
        self.ledger.close()
        shutil.rmtree(self.dir)

    def model_lines(self) -> list[Line]:
        return self.lines if self.fragment is None else [*self.lines, self.fragment]

    def model_last_seq(self) -> int:
        return next((line.seq for line in reversed(self.model_lines()) if line.seq is not None), 0)

    def write_raw(self, data: bytes) -> None:
        self.ledger.path.parent.mkdir(parents=True, exist_ok=True)
        with self.ledger.path.open("ab") as f:
            f.write(data)

    @rule(
        attempt=attempts,
        session_id=ids,
        events=st.lists(
            st.builds(ReceiptEvent, st.sampled_from(["a", " b "]), payloads), max_size=4
        ),
    )
    def append(self, attempt: int, session_id: str, events: list[ReceiptEvent]) -> None:
        summary = self.ledger.append(attempt, session_id, events)
        if events and self.fragment is not None:  # the append seals it into a line
            self.lines.append(self.fragment)
            self.fragment = None
        first = self.model_last_seq() + 1
        for seq, event in enumerate(events, first):
            record = ReceiptRecord(
                1,
                "run",
                "node",
                attempt,
                session_id,
                seq,
                0,
                event.event_type.strip(),
                event.payload,
            )
            self.lines.append(Line(seq, record))
        assert summary.seq == self.model_last_seq()
        assert summary.record_count == len(events)

    @precondition(lambda self: self.fragment is None)
    @rule(junk=st.lists(st.sampled_from(JUNK), min_size=1, max_size=3))
    def inject_junk(self, junk: list[tuple[bytes, int | None, ReceiptRecord | None]]) -> None:
        self.write_raw(b"".join(data + b"\n" for data, _, _ in junk))
        self.lines.extend(Line(seq, record) for _, seq, record in junk)

    @precondition(lambda self: self.fragment is None)
    @rule(fragment=st.sampled_from(FRAGMENTS))
    def tear(self, fragment: tuple[bytes, int | None, ReceiptRecord | None]) -> None:
        self.write_raw(fragment[0])
        self.fragment = Line(fragment[1], fragment[2])

    @rule()
    def reopen(self) -> None:
        self.ledger.close()

    @invariant()
    def reads_match_the_model(self) -> None:
        assert self.ledger.last_seq() == self.model_last_seq()
        expected = [line.record for line in self.model_lines() if line.record is not None]
        got = [
            attrs.evolve(r, ts_ms=0 if r.event_type != "foreign" else 5)
            for r in self.ledger.records()
        ]
        assert got == expected


LedgerMachine.TestCase.settings = settings(max_examples=40, stateful_step_count=25, deadline=None)
test_ledger_against_model = LedgerMachine.TestCase
