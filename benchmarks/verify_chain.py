"""``python -m benchmarks.verify_chain``: verify a large v2 ledger; MB/s and peak RSS.

Writes a hash-chained ledger of ``--size-mb`` MiB with the library's v2 encoder (varied
payloads: nested objects, floats, non-ASCII text; lines of about 600 bytes), unless it exists,
then runs ``verify_receipt_ledger`` on it in a fresh child process and reports the child's rate and
peak resident memory. ``--naive`` also times two naive loops for comparison: ``json.loads`` +
``hashlib.sha256`` over the line's bytes, and the same hashing a re-serialisation (as upstream).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from attempt_ledger import ReceiptEvent
from attempt_ledger._chain import render_chained
from attempt_ledger._codec import encode_batch

_CHILD = """
import json, sys, time
from attempt_ledger._verify_chain import verify_receipt_ledger
start, cpu = time.perf_counter(), time.process_time()
result = verify_receipt_ledger(sys.argv[1])
elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
print(json.dumps({"seconds": elapsed, "cpu": cpu, "valid": result.valid}))
"""

_NAIVE = """
import hashlib, json, sys, time
start, cpu = time.perf_counter(), time.process_time()
prev = None
ok = True
with open(sys.argv[1], "rb") as f:
    for raw in f:
        obj = json.loads(raw)
        ok &= hashlib.sha256(raw[:-83] + b"}").hexdigest() == obj["record_hash"]
        ok &= obj["prev_hash"] == prev
        prev = obj["record_hash"]
elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
print(json.dumps({"seconds": elapsed, "cpu": cpu, "valid": ok}))
"""

# The naive loop as upstream verifies: the hash over a re-serialisation of what was parsed.
_NAIVE_RESERIALISING = _NAIVE.replace(
    'raw[:-83] + b"}"',
    'json.dumps({k: v for k, v in obj.items() if k != "record_hash"}, separators=(",", ":"), '
    "ensure_ascii=False).encode()",
)

WORDS = ["attempt", "validator", "résumé", "ok", "timeout", "tool", "fetch", "λ", "sources", "日本"]


def _event(rng: random.Random) -> ReceiptEvent:
    note = " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 30)))
    payload = {
        "status": rng.choice(["completed", "failed", "running"]),
        "tokens": rng.randint(0, 10**6),
        "score": rng.random(),
        "latency_s": rng.expovariate(10.0),
        "validator_summary": {"checks": rng.randint(0, 50), "outcome": rng.choice(["passed", "x"])},
        "tags": [rng.choice(WORDS) for _ in range(rng.randint(0, 4))],
        "note": note,
    }
    return ReceiptEvent(rng.choice(["attempt_started", "tool_invoked", "attempt_summary"]), payload)


def write_ledger(path: Path, size: int, seed: int = 1) -> None:
    """Write a valid v2 ledger of at least ``size`` bytes at ``path``."""
    rng = random.Random(seed)
    batches = [
        encode_batch(path, "run/bench", "node:a", k, f"s{k}", [_event(rng) for _ in range(50)])
        for k in range(40)
    ]
    seq, prev, written = 1, None, 0
    with path.open("wb") as f:
        while written < size:
            batch = batches[seq % len(batches)]
            data, prev = render_chained(batch, seq, 1_700_000_000_000 + seq, prev)
            f.write(data)
            written += len(data)
            seq += len(batch.tails)


def _run(code: str, path: Path) -> tuple[dict[str, float], int]:
    """Run ``code`` on ``path`` in a fresh interpreter: its JSON line, and its peak RSS in KiB."""
    child = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE)
    assert child.stdout is not None
    with child.stdout:
        out = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode:
        raise SystemExit(f"the child failed with {child.returncode}")
    return json.loads(out), usage.ru_maxrss


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.verify_chain", description=__doc__)
    parser.add_argument("--size-mb", type=int, default=1024, help="ledger size in MiB")
    parser.add_argument("--path", type=Path, help="ledger to use (written if missing)")
    parser.add_argument("--naive", action="store_true", help="also time the naive loop")
    args = parser.parse_args(argv)
    path = args.path or Path(tempfile.gettempdir()) / f"verify-chain-{args.size_mb}mb.jsonl"
    if not path.exists():
        start = time.perf_counter()
        write_ledger(path, args.size_mb << 20)
        print(f"wrote {path} in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    size = os.path.getsize(path)
    runs = [("verify_receipt_ledger", _CHILD)]
    if args.naive:
        runs += [("naive loop", _NAIVE), ("naive loop, re-serialising", _NAIVE_RESERIALISING)]
    for name, code in runs:
        result, peak_kib = _run(code, path)
        mb = size / 1e6
        print(
            f"{name}: {mb:.0f} MB in {result['seconds']:.2f} s = {mb / result['seconds']:.0f} MB/s "
            f"({mb / result['cpu']:.0f} MB/s of CPU time), peak RSS {peak_kib / 1024:.0f} MiB, "
            f"valid={result['valid']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
