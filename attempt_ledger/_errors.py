"""The exceptions the ledger raises: one base class, subclasses that carry their data."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


class LedgerError(Exception):
    """Base class of every error the ledger raises on purpose.

    :ivar path: the file the error concerns (a ledger, its lock file, or a directory on the way).
    :ivar reason: what went wrong, in words.
    """

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {self._describe()}")

    def _describe(self) -> str:
        return self.reason

    def __str__(self) -> str:
        # OSError-derived subclasses would otherwise render their errno fields, not the message.
        return str(self.args[0])

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.path, self.reason)


class InvalidEvent(LedgerError, ValueError):
    """An argument of an append was rejected before anything was written.

    :ivar index: position of the offending event in the batch, or ``None`` when the error is not
        about one event (a bad ``attempt`` or id).
    """

    def __init__(self, path: str | os.PathLike[str], reason: str, index: int | None = None) -> None:
        self.index = index
        super().__init__(path, reason)

    def _describe(self) -> str:
        return self.reason if self.index is None else f"event {self.index}: {self.reason}"

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.path, self.reason, self.index)


class LockTimeout(LedgerError, TimeoutError):
    """The sidecar lock could not be taken within the ledger's ``lock_timeout``.

    :ivar path: the lock file.
    :ivar timeout: the timeout that expired, in seconds.
    """

    def __init__(self, path: str | os.PathLike[str], timeout: float) -> None:
        self.timeout = timeout
        super().__init__(path, f"lock not acquired within {timeout:g} s")

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.path, self.timeout)


class LockReentered(LedgerError, RuntimeError):
    """The thread that holds a ledger's lock tried to take it again, which would wait for ever:
    an append (or ``close``) from a signal handler or a callback while the same thread is inside
    an append of that ledger. Nothing was written.

    :ivar path: the lock file.
    """

    def __init__(self, path: str | os.PathLike[str], reason: str | None = None) -> None:
        super().__init__(
            path,
            reason
            or "this thread already holds the lock (a ledger used again from inside one of its"
            " own appends, by a signal handler say, would wait for itself for ever)",
        )


class SeqExhausted(LedgerError, OverflowError):
    """Appending would take ``seq`` past ``2**64 - 1``; nothing was written.

    :ivar last_seq: the ledger's last seq.
    :ivar count: the number of events the append asked for.
    """

    def __init__(self, path: str | os.PathLike[str], last_seq: int, count: int) -> None:
        self.last_seq = last_seq
        self.count = count
        super().__init__(path, f"seq exhausted: last seq {last_seq}, cannot append {count} more")

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.path, self.last_seq, self.count)


class SeqConflict(LedgerError):
    """``append(..., expected_last_seq=N)`` found another last seq; nothing was written.

    :ivar expected: the last seq the caller expected.
    :ivar actual: the last seq the ledger had under the lock.
    """

    def __init__(self, path: str | os.PathLike[str], expected: int, actual: int) -> None:
        self.expected = expected
        self.actual = actual
        super().__init__(path, f"expected last seq {expected}, found {actual}")

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.path, self.expected, self.actual)


class LedgerIOError(LedgerError, OSError):
    """An operating-system call failed; the original :class:`OSError` is chained as ``__cause__``.

    It is an :class:`OSError` too, with ``errno``, ``strerror`` and ``filename`` set, so code that
    already catches ``OSError`` keeps working.
    """

    def __init__(self, path: str | os.PathLike[str], reason: str, errno: int | None = None) -> None:
        super().__init__(path, reason)
        self.errno = errno
        self.strerror = os.strerror(errno) if errno is not None else reason
        self.filename = str(self.path)

    @classmethod
    def wrap(cls, path: str | os.PathLike[str], action: str, error: OSError) -> LedgerIOError:
        """Describe ``error``, raised while doing ``action`` on ``path``.

        :param path: the file or directory concerned.
        :param action: what was being done, as a verb phrase ("open the ledger").
        :param error: the ``OSError`` raised; its ``errno`` and ``strerror`` name the cause.
        """
        cause = error.strerror or str(error)
        return cls(path, f"cannot {action}: {cause}", error.errno)

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.path, self.reason, self.errno)


class DurabilityUnknown(LedgerError):
    """A durable append wrote its records, but the fsync that was to make them durable failed
    after the lock was released, and the ledger had grown since (another writer appended), so
    they could not be taken back. The records are in the file as seqs ``first_seq`` to
    ``last_seq``: readers see them and the next append numbers on after them; whether they would
    survive a power loss is unknown. Not a :class:`LedgerIOError`, which means the file is as it
    was: appending the same events again would write them twice.

    :ivar first_seq: the seq of the first record the append wrote.
    :ivar last_seq: the seq of its last record.
    :ivar errno: the fsync's ``errno``; the :class:`OSError` is chained as ``__cause__``.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        first_seq: int,
        last_seq: int,
        errno: int | None = None,
        cause: str = "fsync failed",
    ) -> None:
        self.first_seq = first_seq
        self.last_seq = last_seq
        self.errno = errno
        self.cause = cause
        super().__init__(
            path,
            f"records written as seqs {first_seq}..{last_seq}; durability unknown: {cause}",
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.path, self.first_seq, self.last_seq, self.errno, self.cause)
