"""Which statement a PostgreSQL append sends, with which parameters, and what a refusal means;
shared by :class:`~attempt_ledger.postgres.PostgresLedger` and its async twin.

A one-line append is first tried numbered by the client (APPEND_NEXT: the whole line, its seq
guessed as one past the last seq this ledger object saw, or the caller's expected one); the
server takes it only if the head row is still at the seq before, and it costs about a third
less than having the server number the line (fewer parameters, no splicing, no result row).
A refused guess (another writer came in between) falls back to the server-numbered statements;
while guesses keep failing (several writers on one ledger), the next appends skip them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ._chain import chain_head
from ._codec import EncodedBatch
from ._pgschema import APPEND, APPEND_CHAINED, APPEND_ONE
from ._records import U64_MAX

# The longest run of appends that skip the guess after guesses failed in a row.
_MAX_SKIP = 64


class AppendStatements:
    """The statements of a ledger's appends (``_key``: the ledger's key; ``_chained``: whether
    it is known to hold a hash chain; ``path``: its name)."""

    path: Path
    _key: bytes
    _chained: bool

    def __init__(self) -> None:
        # One past the last seq seen by this object's appends (a hint: stale is harmless), and
        # how many appends skip the guess, and for how many the next failure makes them skip.
        self._next: int | None = None
        self._skip = self._backoff = 0

    def _guess(self, batch: EncodedBatch, expected: int | None) -> int | None:
        """The seq to try APPEND_NEXT with for ``batch``, or ``None`` if not worth a try: a
        batch of several lines, a chain, no seq to guess, or guesses failing of late."""
        if len(batch.tails) != 1 or self._chained:
            return None
        if expected is not None:
            seq = expected + 1  # exact: the statement is refused if it is not the last seq
        elif self._skip > 0:  # (threads sharing the object may take it below 0: harmless)
            self._skip -= 1
            return None
        elif self._next is None:
            return None
        else:
            seq = self._next
        return None if seq > U64_MAX else seq  # past it: the server-numbered statement says so

    def _guessed(self, seq: int | None, expected: int | None) -> None:
        """Note that a guess took ``seq`` (``None``: it was refused); a refused guess of the
        caller's ``expected`` seq says nothing about other writers."""
        if seq is not None:
            self._next, self._skip, self._backoff = seq + 1, 0, 0
        elif expected is None:
            self._skip = self._backoff = min(self._backoff * 2 + 1, _MAX_SKIP)

    def _numbered(self, last_seq: int) -> None:
        """Note that the server numbered an append up to ``last_seq``."""
        self._next = last_seq + 1

    def _statement(
        self, batch: EncodedBatch, middle: bytes, expected_last_seq: int | None
    ) -> tuple[str, dict[str, Any]]:
        """The server-numbered append statement for ``batch`` and its parameters."""
        count = len(batch.tails)
        params: dict[str, Any] = {"key": self._key, "expected": expected_last_seq}
        if self._chained:
            params.update(head=chain_head(batch.head), count=count, middle=middle)
            params["tails"] = b"\n".join(tail[:-2] for tail in batch.tails)
            return APPEND_CHAINED, params
        params["head"] = batch.head
        if count == 1:
            params["rest"] = middle + batch.tails[0][:-1]
            return APPEND_ONE, params
        params.update(count=count, middle=middle)  # one value, cheaper to send than an array
        params["tails"] = b"".join(batch.tails)[:-1]
        return APPEND, params

    def _refused(self, found: Any, expected: int | None, count: int) -> int | None:
        """Given the head row's ``(last_seq, last_hash)`` (``None`` if there is none) after the
        append statement moved nothing: the last seq that refuses the batch, or ``None`` if it
        is worth another try: the ledger had no head row (the caller creates it), its last
        record is hashed (the chain is continued from now on), or its last seq has just reached
        the expected one (which takes others' commits, and seqs only grow, so the batch is soon
        appended or refused).
        """
        last_seq = 0 if found is None else int(found[0])
        if (expected is not None and expected != last_seq) or last_seq + count > 2**64 - 1:
            return last_seq
        if found is not None and found[1] is not None:
            self._chained = True
        return None
