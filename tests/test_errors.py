from __future__ import annotations

import errno
import pickle
from pathlib import Path

import pytest

from attempt_ledger import (
    InvalidEvent,
    LedgerError,
    LedgerIOError,
    LockReentered,
    LockTimeout,
    SeqConflict,
    SeqExhausted,
)

P = Path("/x/run/node.jsonl")

ERRORS = [
    (LedgerError(P, "broken"), Exception),
    (InvalidEvent(P, "bad payload", 3), ValueError),
    (InvalidEvent(P, "bad attempt"), ValueError),
    (LockTimeout(P.with_name("node.jsonl.lock"), 1.5), TimeoutError),
    (SeqExhausted(P, 2**64 - 1, 2), OverflowError),
    (SeqConflict(P, 3, 5), Exception),
    (LockReentered(P.with_name("node.jsonl.lock")), RuntimeError),
    (LedgerIOError(P, "cannot open the ledger: No space left on device", errno.ENOSPC), OSError),
]


@pytest.mark.parametrize(("error", "builtin"), ERRORS)
def test_errors_are_ledger_errors_and_fitting_builtins(error: LedgerError, builtin: type) -> None:
    assert isinstance(error, LedgerError)
    assert isinstance(error, builtin)
    assert str(error).startswith(str(error.path) + ": ")


@pytest.mark.parametrize(("error", "builtin"), ERRORS)
def test_errors_pickle_with_their_fields(error: LedgerError, builtin: type) -> None:
    clone = pickle.loads(pickle.dumps(error))
    assert type(clone) is type(error)
    assert vars(clone) == vars(error)
    assert str(clone) == str(error)
    assert clone.args == error.args


def test_io_error_carries_os_error_fields() -> None:
    cause = OSError(errno.EACCES, "Permission denied")
    error = LedgerIOError.wrap(P, "open the ledger", cause)
    assert error.errno == errno.EACCES
    assert error.filename == str(P)
    assert str(error) == f"{P}: cannot open the ledger: Permission denied"
    assert isinstance(error, PermissionError) is False  # a plain OSError, errno tells the kind


def test_structured_fields() -> None:
    timeout = LockTimeout(P, 0.25)
    assert timeout.timeout == 0.25
    assert "0.25 s" in str(timeout)
    exhausted = SeqExhausted(P, 10, 3)
    assert (exhausted.last_seq, exhausted.count) == (10, 3)
    assert InvalidEvent(P, "x", 2).index == 2
