"""Verifying a hash-chained ledger (schema 2) in one streaming pass.

The verdict is upstream's (``verify_receipt_ledger``) on every ledger upstream judges correctly,
and stricter where upstream is blind. Lines are read in file order, split on ``\\n`` only, and
memory stays bounded by the longest line (the problem list is capped by ``max_problems``).

- A *record* is a line that is a well-typed receipt (as :func:`decode_record` reads it) with no
  duplicate top-level key. Seqs of records must run 1, 2, 3, ... in file order: ``seq_gap``
  (``expected`` is the missing seq) and ``seq_replay`` (a seq at or below one already seen:
  repeated, or out of file order; ``expected`` is that seq, upstream's ``seen_seq``).
- A *hashed* record ends with ``,"prev_hash":null|"<hex>","record_hash":"<hex>"}``; its hash is
  recomputed over the line's own bytes without that last member (``record_hash_mismatch``,
  ``expected`` the recomputed hash), never over a re-serialisation. Its ``prev_hash`` must be
  the previous hashed record's ``record_hash`` as written (``chain_break``); the first hashed
  record's must be null, or the ``chain_from`` hash given (``dangling_prev_hash``).
- Our own kinds, where upstream is blind: ``unhashed_after_hashed`` (a record without hashes
  after a hashed one: the chain was broken by a schema-1 writer), ``missing_record_hash`` (a
  version-2 record without hashes), ``bad_hash_fields`` (``record_hash``/``prev_hash`` null,
  malformed, or not the last two members), ``wrong_version`` (a hashed record whose version is
  not 2, an unhashed one whose version is not 1), ``duplicate_key``, ``torn_tail`` (bytes after
  the last newline), ``trailing_junk`` (the file does not end with a record) and
  ``root_hash_not_found`` (``expected_root_hash`` is no record's hash: the ledger was truncated
  or rewritten since it was saved). After a record whose own hashes cannot be used, or an
  unhashed one after hashed ones, the next hashed record's link is not judged again: one
  incident, one problem.
- A line that is not a record (foreign junk, or a torn fragment sealed by the next append) is a
  ``skipped_line`` notice, not fatal: the chain runs across it, from the record before it to the
  record after it, and a record removed or damaged there breaks it. Lines that are not UTF-8 are
  such lines too (upstream rejects the whole file). After the last record, though, such lines
  are fatal (``trailing_junk``), as is an unterminated tail: a damaged last record looks just
  like them, and only a record after them shows the chain intact. A crash leaves them until
  the next append seals the fragment and chains past it.
- The first hashed record must chain from nothing (null): a ledger whose first hashed record
  points elsewhere was cut from the front, unless the caller says where it continues from.
- Schema-1 records carry no hashes: their seqs are checked, their bytes are not.

``valid`` is False when any fatal problem is found. ``violation`` is the first seq problem if any
(upstream checks seqs first), else the first fatal problem in file order.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator

import attrs

from ._chain import DAMAGED, DUPLICATE, HASHED, SKIPPED, FastJudge, check_hash, judge_line
from ._errors import LedgerIOError
from ._reader import iter_lines, open_ledger
from ._records import RECEIPT_SCHEMA_VERSION, RECEIPT_SCHEMA_VERSION_V2


@attrs.frozen
class ChainProblem:
    """One finding of :func:`verify_receipt_ledger`.

    :ivar line: 1-based line number, or None for the file as a whole.
    :ivar kind: what is wrong (see the module's rules).
    :ivar seq: the record's seq, when the line is a record.
    :ivar expected: what was expected: a hash, a seq, a version, or None.
    :ivar fatal: False for notices (a skipped line) that leave the ledger valid.
    """

    line: int | None
    kind: str
    detail: str
    seq: int | None = None
    expected: str | int | None = None
    fatal: bool = True

    def __str__(self) -> str:
        where = "file" if self.line is None else f"line {self.line}"
        return f"{where}: {self.kind}: {self.detail}"


@attrs.frozen
class ReceiptLedgerVerification:
    """The result of :func:`verify_receipt_ledger`: upstream's fields, then ours.

    :ivar root_hash: the last record's ``record_hash`` when the ledger is valid and hashed.
    :ivar schema_version: 2 if any record is hashed, else 1; 0 for a missing file.
    :ivar violation: the first problem that makes the ledger invalid (see the module's rules).
    :ivar problems: every problem in file order, up to ``max_problems``.
    :ivar problem_count: how many problems were found, listed or not.
    :ivar last_seq: the highest seq of a record, 0 if none.
    """

    valid: bool
    record_count: int
    hashed_record_count: int
    root_hash: str | None
    schema_version: int
    violation: ChainProblem | None
    problems: tuple[ChainProblem, ...]
    problem_count: int
    last_seq: int


class _Chain:
    """The state of the pass: counts, the chain's last hash, and the problems found."""

    def __init__(self, chain_from: str | None, expected_root: str | None, cap: int) -> None:
        self.chain_from = chain_from
        self.expected_root = expected_root
        self.found_root = expected_root is None
        self.cap = cap
        self.problems: list[ChainProblem] = []
        self.problem_count = 0
        self.first_seq_problem: ChainProblem | None = None
        self.first_fatal: ChainProblem | None = None
        self.records = self.hashed_records = self.highest = 0
        self.any_hashed = False  # a hashed record (even a damaged one) has been seen
        self.link_known = True  # whether the next hashed record's prev_hash can be judged
        self.last_hash: str | None = None
        self.root: str | None = None  # the last record's hash, None if it is unhashed
        self.trailing: int | None = None  # the first line after the last record, if any

    def add(self, problem: ChainProblem) -> None:
        self.problem_count += 1
        if len(self.problems) < self.cap:
            self.problems.append(problem)
        if not problem.fatal:
            return
        if problem.kind in ("seq_gap", "seq_replay"):
            if self.first_seq_problem is None:
                self.first_seq_problem = problem
        elif self.first_fatal is None:
            self.first_fatal = problem

    def line(
        self,
        number: int,
        kind: int,
        seq: int,
        prev: str | None,
        stored: str | None,
        computed: str | None,
        issue: tuple[str, str, object] | None,
    ) -> None:
        if kind >= SKIPPED:
            assert issue is not None
            self.add(ChainProblem(number, issue[0], issue[1], fatal=kind == DUPLICATE))
            if self.trailing is None:
                self.trailing = number
            return
        self.records += 1
        self.trailing = None
        expected_seq = self.highest + 1
        if seq > expected_seq:
            self.add(
                ChainProblem(
                    number, "seq_gap", f"seq {seq}: expected {expected_seq}", seq, expected_seq
                )
            )
        elif seq < expected_seq:
            detail = f"seq {seq} after {self.highest} (repeated, or out of file order)"
            self.add(ChainProblem(number, "seq_replay", detail, seq, seq))
        self.highest = max(self.highest, seq)
        if issue is not None:
            expected = issue[2] if isinstance(issue[2], int) else None
            self.add(ChainProblem(number, issue[0], issue[1], seq, expected))
        if kind == HASHED:
            self._hashed(number, seq, prev, stored, computed)
        elif kind == DAMAGED:
            self.any_hashed, self.link_known, self.root = True, False, None
        else:
            if self.any_hashed:
                detail = "a record without hashes after hashed ones: the chain is broken here"
                self.add(ChainProblem(number, "unhashed_after_hashed", detail, seq))
                self.link_known = False
            self.root = None

    def _hashed(
        self, number: int, seq: int, prev: str | None, stored: str | None, computed: str | None
    ) -> None:
        self.hashed_records += 1
        if computed != stored:
            detail = f"record_hash {stored} but the line hashes to {computed}"
            self.add(ChainProblem(number, "record_hash_mismatch", detail, seq, computed))
        if not self.any_hashed:
            if prev is not None and prev != self.chain_from:
                detail = f"the first hashed record chains from {prev}, which is not in this ledger"
                self.add(ChainProblem(number, "dangling_prev_hash", detail, seq, self.chain_from))
        elif self.link_known and prev != self.last_hash:
            detail = f"prev_hash {prev}, but the previous hashed record is {self.last_hash}"
            self.add(ChainProblem(number, "chain_break", detail, seq, self.last_hash))
        self.any_hashed = self.link_known = True
        self.last_hash = self.root = stored
        if stored == self.expected_root:
            self.found_root = True

    def finish(self, lines: int, torn: int) -> ReceiptLedgerVerification:
        if self.trailing is not None:
            detail = f"lines {self.trailing}..{lines} after the last record are not records"
            self.add(ChainProblem(self.trailing, "trailing_junk", detail))
        if torn:
            detail = f"{torn} bytes after the last newline (a crash, or an append in flight)"
            self.add(ChainProblem(lines + 1, "torn_tail", detail))
        if not self.found_root:
            detail = (
                f"no record has the expected root hash {self.expected_root}: truncated or rewritten"
            )
            self.add(ChainProblem(None, "root_hash_not_found", detail, None, self.expected_root))
        violation = self.first_seq_problem or self.first_fatal
        return ReceiptLedgerVerification(
            valid=violation is None,
            record_count=self.records,
            hashed_record_count=self.hashed_records,
            root_hash=self.root if violation is None else None,
            schema_version=RECEIPT_SCHEMA_VERSION_V2 if self.any_hashed else RECEIPT_SCHEMA_VERSION,
            violation=violation,
            problems=tuple(self.problems),
            problem_count=self.problem_count,
            last_seq=self.highest,
        )


def verify_receipt_ledger(
    path: str | os.PathLike[str],
    *,
    expected_root_hash: str | None = None,
    chain_from: str | None = None,
    max_problems: int = 1000,
) -> ReceiptLedgerVerification:
    """Verify the ledger at ``path``: seqs, every line's hash over its own bytes, the chain.

    Streams the file once; memory is bounded by its longest line. Verifies the whole lines the
    file held when it was opened: an append in flight then, whole by the time it is read, is
    left out, not taken for a ``torn_tail``.

    :param path: the ledger file.
    :param expected_root_hash: a root hash saved earlier (see :func:`receipt_ledger_manifest`):
        some record must have it, or the ledger was truncated before it or rewritten since.
        Records appended after it are fine.
    :param chain_from: the ``record_hash`` the first hashed record may chain from (a ledger
        continued from an archived one); without it that ``prev_hash`` must be null.
    :param max_problems: how many problems to list (all are counted).
    :returns: upstream's verdict and fields, plus every problem. A missing file is invalid with
        ``schema_version`` 0, as upstream's.
    :raises ValueError: if a hash argument is not 64 lowercase hex digits or ``max_problems``
        is negative.
    :raises LedgerIOError: if the path cannot be read (a directory, a FIFO, no permission).
    """
    chain = _new_chain(expected_root_hash, chain_from, max_problems)
    fd = open_ledger(path)
    if fd is None:
        chain.add(ChainProblem(None, "missing", "no such file"))
        result = chain.finish(0, 0)
        return attrs.evolve(result, valid=False, schema_version=0)
    end = size = 0

    def snapshot() -> Iterator[bytes | None]:
        nonlocal end, size
        for line, line_end in iter_lines(fd):
            if line_end > size:
                # Appended after the file was opened. Bytes of it already there then were an
                # append in flight, now a whole line: not a torn tail.
                size = end
                break
            end = line_end
            yield line

    try:
        size = os.fstat(fd).st_size  # the snapshot verified: later appends are not read
        number = _check(chain, snapshot())
        size = min(size, os.fstat(fd).st_size)  # rolled back meanwhile: those bytes are gone
    except OSError as error:
        raise LedgerIOError.wrap(path, "read the ledger", error) from error
    finally:
        os.close(fd)
    return chain.finish(number, max(0, size - end))


def verify_lines(
    lines: Iterable[bytes],
    *,
    expected_root_hash: str | None = None,
    chain_from: str | None = None,
    max_problems: int = 1000,
) -> ReceiptLedgerVerification:
    """Verify a ledger given as its lines (without newlines), in order, as
    :func:`verify_receipt_ledger` verifies a file: for ledgers kept elsewhere (PostgreSQL).

    :raises ValueError: as :func:`verify_receipt_ledger`.
    """
    chain = _new_chain(expected_root_hash, chain_from, max_problems)
    return chain.finish(_check(chain, lines), 0)


def _new_chain(expected_root_hash: str | None, chain_from: str | None, max_problems: int) -> _Chain:
    for name, value in (("expected_root_hash", expected_root_hash), ("chain_from", chain_from)):
        if value is not None:
            check_hash(value, name)
    if type(max_problems) is not int or max_problems < 0:
        raise ValueError(f"max_problems must be an int >= 0, not {max_problems!r}")
    return _Chain(chain_from, expected_root_hash, max_problems)


def _check(chain: _Chain, lines: Iterable[bytes | None]) -> int:
    """Judge ``lines`` in order into ``chain``; return how many there were."""
    number = 0
    fast = FastJudge()
    for line in lines:
        number += 1
        judged = None if line is None else fast.judge(line)
        if judged is None:
            chain.line(number, *judge_line(line))
            continue
        seq, prev, stored = judged[1], judged[2], judged[3]
        if (
            seq == chain.highest + 1
            and prev == chain.last_hash
            and chain.link_known
            and chain.any_hashed
            and stored != chain.expected_root
        ):  # the common case, in one test: the next record of an intact chain
            chain.records += 1
            chain.hashed_records += 1
            chain.highest = seq
            chain.last_hash = chain.root = stored
            chain.trailing = None
        else:
            chain.line(number, *judged)
    return number
