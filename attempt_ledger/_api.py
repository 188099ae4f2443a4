"""The seed's functions, as thin wrappers over :class:`AttemptLedger` and the readers.

Appends through these functions reuse ledger objects from a small cache, so a worker that
writes to the same few ledgers keeps their descriptors open. The cache holds at most
:data:`CACHE_SIZE` ledgers (two descriptors each) and closes the least recently used one when
it is full, so a worker touching thousands of ledgers stays within its descriptor limit.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path

from ._errors import InvalidEvent
from ._ledger import AttemptLedger
from ._paths import receipts_root_for_state_dir
from ._reader import iter_records
from ._reader import read_last_seq as _read_last_seq
from ._reconcile import reconcile
from ._records import AppendSummary, ReceiptDraft, ReceiptEvent, ReceiptRecord, ReconcileSummary

#: Most ledgers the module-level functions keep open at once.
CACHE_SIZE = 64

_cache: OrderedDict[tuple[str, str, str, bool], AttemptLedger] = OrderedDict()
_cache_mutex = threading.Lock()


def _reset_after_fork() -> None:
    global _cache_mutex
    _cache_mutex = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


def _ledger(
    root: str | os.PathLike[str], run_id: str, node_id: str, hash_chain: bool
) -> AttemptLedger:
    key = (os.fspath(root), run_id, node_id, hash_chain)
    evicted = None
    with _cache_mutex:
        ledger = _cache.get(key)
        if ledger is None:
            ledger = _cache[key] = AttemptLedger(root, run_id, node_id, hash_chain=hash_chain)
            if len(_cache) > CACHE_SIZE:
                _, evicted = _cache.popitem(last=False)
        else:
            _cache.move_to_end(key)
    if evicted is not None:
        evicted.close()  # outside the cache mutex: it waits for an append in flight to finish
    return ledger


def clear_cache() -> None:
    """Close every ledger the module-level functions hold open."""
    with _cache_mutex:
        ledgers = list(_cache.values())
        _cache.clear()
    for ledger in ledgers:
        ledger.close()


def append_receipts(
    root: str | os.PathLike[str],
    run_id: str,
    node_id: str,
    attempt: int,
    session_id: str,
    events: Iterable[ReceiptEvent],
    *,
    hash_chain: bool = False,
) -> AppendSummary:
    """Append ``events`` to the ledger of (run, node) under ``root``.

    See :meth:`AttemptLedger.append`; ids that are not ``str`` raise :class:`InvalidEvent`.

    :param root: the receipts root.
    :param run_id: the run's id, stored raw; sanitized only for the path.
    :param node_id: the node's id, likewise.
    :param attempt: as for :meth:`AttemptLedger.append`.
    :param session_id: likewise.
    :param events: likewise.
    :param hash_chain: write schema-2 (hash-chained) records, as ``AttemptLedger(...,
        hash_chain=True)``; a ledger whose last record is hashed is continued as a chain anyway.
    :raises LedgerError: as :meth:`AttemptLedger.append`.
    :raises TypeError: if ``hash_chain`` is not a ``bool``.
    """
    for name, value in (("run_id", run_id), ("node_id", node_id)):
        if not isinstance(value, str):
            raise InvalidEvent(root, f"{name} must be str, not {type(value).__name__}")
    if type(hash_chain) is not bool:
        raise TypeError(f"hash_chain must be a bool, not {hash_chain!r}")
    return _ledger(root, run_id, node_id, hash_chain).append(attempt, session_id, events)


def append_receipt(
    state_dir: str | os.PathLike[str], draft: ReceiptDraft, *, hash_chain: bool = False
) -> AppendSummary:
    """Append one draft under ``state_dir / "automation_attempt_receipts"``.

    As in the seed, ``record_count`` is the number of well-typed records in the whole file after
    the append, which costs a read of the whole file.

    :param state_dir: the directory whose ``automation_attempt_receipts`` is the root.
    :param draft: the event with its ids.
    :param hash_chain: as for :func:`append_receipts`.
    :raises TypeError: if ``draft`` is not a :class:`ReceiptDraft`.
    :raises LedgerError: as :meth:`AttemptLedger.append`.
    """
    if not isinstance(draft, ReceiptDraft):
        raise TypeError(f"draft must be a ReceiptDraft, not {type(draft).__name__}")
    summary = append_receipts(
        receipts_root_for_state_dir(state_dir),
        draft.run_id,
        draft.node_id,
        draft.attempt,
        draft.session_id,
        [ReceiptEvent(draft.event_type, draft.payload)],
        hash_chain=hash_chain,
    )
    return AppendSummary(summary.path, summary.seq, _count_records(summary.path))


def _count_records(path: Path) -> int:
    return sum(1 for _ in iter_records(path))


def read_last_seq(path: str | os.PathLike[str]) -> int:
    """Return the seq of the last valid line of the ledger at ``path``; 0 if missing or empty.

    Reads backwards from the end in blocks, so its cost does not grow with the file.

    :raises LedgerIOError: if the path exists but cannot be read.
    """
    return _read_last_seq(path)


def read_receipt_records(path: str | os.PathLike[str]) -> list[ReceiptRecord]:
    r"""Return the well-typed records of the ledger at ``path``, in file order.

    Malformed lines, blank lines, invalid UTF-8 and a final unterminated fragment that does not
    parse are skipped; a final record that lost only its ``\n`` is returned. A missing file is
    an empty ledger: ``[]``.

    :raises LedgerIOError: if the path exists but cannot be read.
    """
    return list(iter_records(path))


def reconcile_receipts(
    path: str | os.PathLike[str], expected_min_seq: int, max_wait_ms: int, poll_interval_ms: int
) -> ReconcileSummary:
    """Wait until the ledger at ``path`` reaches ``expected_min_seq``, or ``max_wait_ms`` pass.

    ``expected_min_seq`` 0 means 1; the poll interval is at least 1 ms; the ledger is read at
    least once; each sleep is the smaller of the interval and the time left; the deadline and
    ``elapsed_ms`` use the monotonic clock.

    :raises LedgerIOError: if the path exists but cannot be read.
    """
    return reconcile(
        lambda: _read_last_seq(path),
        expected_min_seq,
        max_wait_ms,
        poll_interval_ms,
        watch=Path(os.fspath(path)),
    )
