"""A multiprocess-safe, append-only ledger of attempt receipts: one JSONL file per (run, node)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from ._api import (
    CACHE_SIZE,
    append_receipt,
    append_receipts,
    clear_cache,
    read_last_seq,
    read_receipt_records,
    reconcile_receipts,
)
from ._chain import encode_chained_record
from ._codec import encode_record
from ._errors import (
    DurabilityUnknown,
    InvalidEvent,
    LedgerError,
    LedgerIOError,
    LockReentered,
    LockTimeout,
    SeqConflict,
    SeqExhausted,
)
from ._ledger import AttemptLedger
from ._manifest import ReceiptLedgerManifest, check_receipt_ledger_manifest, receipt_ledger_manifest
from ._paths import (
    ROOT_ENV,
    iter_ledgers,
    receipt_path_for_state_dir,
    receipts_path,
    receipts_root,
    receipts_root_for_state_dir,
    sanitize_segment,
)
from ._protocol import AsyncLedger, Ledger
from ._records import (
    RECEIPT_SCHEMA_VERSION,
    RECEIPT_SCHEMA_VERSION_V2,
    AppendSummary,
    JSONValue,
    ReceiptDraft,
    ReceiptEvent,
    ReceiptRecord,
    ReconcileSummary,
)
from ._remove import Removal, remove_ledger, remove_ledger_file, remove_run, remove_run_dir
from ._verify_chain import ChainProblem, ReceiptLedgerVerification, verify_receipt_ledger

try:
    __version__ = version("attempt_ledger")
except PackageNotFoundError:  # pragma: no cover - running from a source tree that is not installed
    __version__ = "0+unknown"

__all__ = [
    "CACHE_SIZE",
    "RECEIPT_SCHEMA_VERSION",
    "RECEIPT_SCHEMA_VERSION_V2",
    "ROOT_ENV",
    "AppendSummary",
    "AsyncLedger",
    "AttemptLedger",
    "ChainProblem",
    "DurabilityUnknown",
    "InvalidEvent",
    "JSONValue",
    "Ledger",
    "LedgerError",
    "LedgerIOError",
    "LockReentered",
    "LockTimeout",
    "ReceiptDraft",
    "ReceiptEvent",
    "ReceiptLedgerManifest",
    "ReceiptLedgerVerification",
    "ReceiptRecord",
    "ReconcileSummary",
    "Removal",
    "SeqConflict",
    "SeqExhausted",
    "__version__",
    "append_receipt",
    "append_receipts",
    "check_receipt_ledger_manifest",
    "clear_cache",
    "encode_chained_record",
    "encode_record",
    "iter_ledgers",
    "read_last_seq",
    "read_receipt_records",
    "receipt_ledger_manifest",
    "receipt_path_for_state_dir",
    "receipts_path",
    "receipts_root",
    "receipts_root_for_state_dir",
    "reconcile_receipts",
    "remove_ledger",
    "remove_ledger_file",
    "remove_run",
    "remove_run_dir",
    "sanitize_segment",
    "verify_receipt_ledger",
]
