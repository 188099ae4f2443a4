"""Verify a hash-chained ledger and save its root hash; later, check the ledger against it.

The root hash is the hash of the last record; it commits to every record before it. Keep it
somewhere the ledger's writers cannot change (here: a file beside the example's output), and
any later edit of an earlier record fails the check, while appends pass.

    python examples/verify_chain.py [--records 10]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from attempt_ledger import (
    AttemptLedger,
    ReceiptEvent,
    check_receipt_ledger_manifest,
    receipt_ledger_manifest,
    verify_receipt_ledger,
)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=10)
    parser.add_argument("--root", default=None, help="ledger root (default: a temporary dir)")
    args = parser.parse_args(argv)
    root = Path(args.root or tempfile.mkdtemp())

    ledger = AttemptLedger(root, "chained-run", "deploy", hash_chain=True)
    for i in range(args.records):
        ledger.append(1, "w1", [ReceiptEvent("step", {"i": i})])

    result = verify_receipt_ledger(ledger.path)
    assert result.valid, result
    assert result.hashed_record_count == args.records, result
    manifest = receipt_ledger_manifest(ledger.path)
    saved = root / "deploy.root-hash.json"
    saved.write_text(json.dumps({"root_hash": manifest.root_hash}), encoding="utf-8")

    ledger.append(1, "w1", [ReceiptEvent("attempt_summary", {"ok": True})])  # appends are fine
    root_hash = json.loads(saved.read_text(encoding="utf-8"))["root_hash"]
    assert verify_receipt_ledger(ledger.path, expected_root_hash=root_hash).valid
    assert check_receipt_ledger_manifest(manifest, ledger.path).valid

    # Tamper with the first record: the chain breaks at line 1, and the saved hash says so too.
    data = ledger.path.read_bytes()
    ledger.path.write_bytes(data.replace(b'"i":0', b'"i":7', 1))
    broken = verify_receipt_ledger(ledger.path, expected_root_hash=root_hash)
    assert not broken.valid
    assert broken.violation is not None
    assert broken.problems[0].line == 1, broken.problems
    print(f"clean ledger verified; tampered one refused: {broken.violation.kind} at line 1")
    ledger.close()


if __name__ == "__main__":
    main()
