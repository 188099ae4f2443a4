"""Bounded resources: descriptors across many ledgers, memory across big files."""

from __future__ import annotations

import multiprocessing
import os
import resource
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from attempt_ledger import CACHE_SIZE, AttemptLedger, ReceiptEvent, append_receipts, read_last_seq
from benchmarks.scenarios import fill


def _many_ledgers(root: Path, count: int, results: Any) -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
    try:
        baseline = len(os.listdir("/proc/self/fd"))
        for i in range(count):
            append_receipts(root, f"run-{i % 100}", f"node-{i}", 1, "s", [ReceiptEvent("e")])
        results.put(("ok", len(os.listdir("/proc/self/fd")) - baseline))
    except BaseException as error:
        results.put(("raised", repr(error)))


def test_module_functions_keep_a_bounded_number_of_descriptors(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    results = ctx.Queue()
    # Under a limit of 256 descriptors: unbounded caching would fail after ~125 ledgers.
    child = ctx.Process(target=_many_ledgers, args=(tmp_path, 20_000, results))  # type: ignore[attr-defined]
    child.start()
    try:
        kind, value = results.get(timeout=300)
    finally:
        child.join(timeout=60)
    assert kind == "ok", value
    assert value <= 2 * CACHE_SIZE


def check_streaming_memory(tmp_path: Path, size: int) -> None:
    ledger = AttemptLedger(tmp_path, "run", "node")
    last = fill(ledger.path, size)
    tracemalloc.start()
    try:
        count = seen = 0
        for record in ledger.iter_records():
            count += 1
            seen = record.seq
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == last == seen
    assert peak < 4 << 20, f"streaming {size >> 20} MiB peaked at {peak >> 20} MiB"


def check_garbage_scan_memory(tmp_path: Path, size: int) -> None:
    path = tmp_path / "ledger.jsonl"
    junk = [
        b"x" * 300 + b"\n",
        b"\0" * 4000,
        b'{"no_seq": "' + b"y" * 200 + b'"}\n',
        bytes(range(256)) + b"\n",
    ]
    block = b"".join(junk) * 64
    with path.open("wb") as f:
        f.write(b'{"seq":7}\n')
        while f.tell() < size:
            f.write(block)
        f.write(b"\n")
    tracemalloc.start()
    try:
        assert read_last_seq(path) == 7
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, f"scanning {size >> 20} MiB of garbage peaked at {peak >> 20} MiB"


def test_iter_records_streams_in_flat_memory(tmp_path: Path) -> None:
    check_streaming_memory(tmp_path, 16 << 20)


def test_tail_scan_over_garbage_in_flat_memory(tmp_path: Path) -> None:
    check_garbage_scan_memory(tmp_path, 32 << 20)


@pytest.mark.stress
def test_iter_records_streams_a_gigabyte(tmp_path: Path) -> None:
    check_streaming_memory(tmp_path, 1 << 30)


@pytest.mark.stress
def test_tail_scan_over_500_megabytes_of_garbage(tmp_path: Path) -> None:
    check_garbage_scan_memory(tmp_path, 500 << 20)
