"""The manifest of a hash-chained ledger: its root hash, to be kept somewhere else.

A chain shows that no record was changed, removed or reordered relative to the records after
it; it cannot show that the file was not cut short (a prefix of a valid chain is a valid chain)
or rewritten whole with fresh hashes. A root hash saved elsewhere can: checked later, it must
still be the hash of some record.
"""

from __future__ import annotations

import json
import os
import time

import attrs

from ._chain import check_hash
from ._cli_support import json_text
from ._verify_chain import ReceiptLedgerVerification, verify_receipt_ledger


@attrs.frozen
class ReceiptLedgerManifest:
    """Upstream's manifest fields, then ``valid``.

    :ivar root_hash: the last record's hash; None if the ledger was not valid, or not hashed.
    :ivar generated_at_ms: wall-clock milliseconds when it was made.
    :ivar valid: whether the ledger verified when the manifest was made.
    """

    ledger_path: str
    schema_version: int
    record_count: int
    last_seq: int
    root_hash: str | None
    generated_at_ms: int
    valid: bool

    def to_json(self) -> str:
        """Return the manifest as one JSON object, fields in order.

        A path that is not UTF-8 (its bytes as lone surrogates) is written with ``\\u``
        escapes, so the text can be saved as UTF-8 and read back to the same path.
        """
        return json_text(attrs.asdict(self))

    @classmethod
    def from_json(cls, text: str | bytes) -> ReceiptLedgerManifest:
        """Read a manifest written by :meth:`to_json` (or upstream's, without ``valid``).

        :raises ValueError: if ``text`` is not such an object.
        """
        try:
            obj = json.loads(text)
        except RecursionError:  # nested past the stack: no manifest
            raise ValueError("a manifest is a JSON object, not text nested this deep") from None
        if not isinstance(obj, dict):
            raise ValueError("a manifest is a JSON object")
        obj.setdefault("valid", obj.get("root_hash") is not None)
        fields = {field.name: field.type for field in attrs.fields(cls)}
        for name in fields:
            if name not in obj:
                raise ValueError(f"the manifest has no {name}")
        for name in ("schema_version", "record_count", "last_seq", "generated_at_ms"):
            if type(obj[name]) is not int or obj[name] < 0:
                raise ValueError(f"manifest {name} must be an int >= 0, not {obj[name]!r}")
        if type(obj["ledger_path"]) is not str or type(obj["valid"]) is not bool:
            raise ValueError("manifest ledger_path must be a string and valid a boolean")
        if obj["root_hash"] is not None:
            check_hash(obj["root_hash"], "manifest root_hash")
        return cls(**{name: obj[name] for name in fields})


def receipt_ledger_manifest(path: str | os.PathLike[str]) -> ReceiptLedgerManifest:
    """Verify the ledger at ``path`` and return its manifest, to be saved somewhere else.

    :raises LedgerIOError: if the path cannot be read.
    """
    result = verify_receipt_ledger(path, max_problems=0)
    return ReceiptLedgerManifest(
        ledger_path=os.fsdecode(path),  # a str, for bytes paths too
        schema_version=result.schema_version,
        record_count=result.record_count,
        last_seq=result.last_seq,
        root_hash=result.root_hash,
        generated_at_ms=time.time_ns() // 1_000_000,
        valid=result.valid,
    )


def check_receipt_ledger_manifest(
    manifest: ReceiptLedgerManifest, path: str | os.PathLike[str] | None = None
) -> ReceiptLedgerVerification:
    """Verify a ledger against a manifest saved earlier: it must hold the manifest's root hash.

    Catches what no chain can: truncation to a prefix, and a rewrite with fresh hashes (as
    ``root_hash_not_found``). Records appended since the manifest was made are fine.

    :param manifest: the manifest saved earlier.
    :param path: the ledger; by default the manifest's ``ledger_path``.
    :raises TypeError: if ``manifest`` is not a :class:`ReceiptLedgerManifest`.
    :raises ValueError: if the manifest holds no root hash (its ledger was not a valid hashed
        ledger), so there is nothing to check against.
    :raises LedgerIOError: if the path cannot be read.
    """
    if not isinstance(manifest, ReceiptLedgerManifest):
        kind = type(manifest).__name__
        raise TypeError(f"manifest must be a ReceiptLedgerManifest (see from_json), not {kind}")
    if manifest.root_hash is None:
        raise ValueError("the manifest holds no root hash: its ledger was not valid and hashed")
    target = manifest.ledger_path if path is None else path
    return verify_receipt_ledger(target, expected_root_hash=manifest.root_hash)
