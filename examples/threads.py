"""Threads sharing one ledger object: every append gets its own seq, none is lost.

python examples/threads.py [--threads 4] [--appends 50]
"""

from __future__ import annotations

import argparse
import tempfile
import threading

from attempt_ledger import AttemptLedger, ReceiptEvent


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--appends", type=int, default=50)
    parser.add_argument("--root", default=None, help="ledger root (default: a temporary dir)")
    args = parser.parse_args(argv)

    ledger = AttemptLedger(args.root or tempfile.mkdtemp(), "thread-run", "node")
    start = threading.Barrier(args.threads)

    def work(thread: int) -> None:
        start.wait(timeout=60)  # all threads begin together, to contend for the lock
        for i in range(args.appends):
            ledger.append(1, f"thread-{thread}", [ReceiptEvent("step", {"i": i})])

    threads = [threading.Thread(target=work, args=(t,)) for t in range(args.threads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
        assert not thread.is_alive()

    total = args.threads * args.appends
    assert [record.seq for record in ledger.records()] == list(range(1, total + 1))
    ledger.close()
    print(f"{args.threads} threads appended {total} records, seqs 1..{total}")


if __name__ == "__main__":
    main()
