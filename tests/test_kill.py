"""Writers killed with SIGKILL at random moments lose nothing they acknowledged."""

from __future__ import annotations

import multiprocessing
import os
import random
import time
from collections.abc import Iterator
from multiprocessing.context import BaseContext
from pathlib import Path
from typing import Any

import pytest

from attempt_ledger import AttemptLedger, ReceiptEvent, receipts_path
from attempt_ledger._lines import line_seq

from . import _workers

JOIN = 60


@pytest.fixture
def children() -> Iterator[list[Any]]:
    started: list[Any] = []
    yield started
    for process in started:
        if process.is_alive():
            process.kill()
        process.join(timeout=JOIN)


def read_acks(ack_path: Path) -> list[int]:
    if not ack_path.exists():
        return []
    data = ack_path.read_bytes()
    assert len(data) % 8 == 0
    return [int.from_bytes(data[i : i + 8], "little") for i in range(0, len(data), 8)]


def kill_rounds(
    ctx: BaseContext,
    children: list[Any],
    root: Path,
    *,
    rounds: int,
    writers: int,
    max_pause: float,
    big_every: int = 0,
    seed: int = 0,
) -> tuple[list[int], int]:
    """Run rounds of writers, SIGKILL each at a random moment; return acks and kills."""
    rng = random.Random(seed)
    acknowledged: list[int] = []
    kills = 0
    for round_no in range(rounds):
        procs = []
        for w in range(writers):
            ready = ctx.Event()
            ack_path = root.parent / f"ack-{round_no}-{w}"
            p = ctx.Process(  # type: ignore[attr-defined]
                target=_workers.append_and_acknowledge,
                args=(root, w + writers * round_no, ack_path, ready, big_every),
            )
            p.start()
            children.append(p)
            procs.append((p, ready, ack_path))
        for _, ready, _ in procs:
            assert ready.wait(timeout=JOIN)
        for p, _, _ in rng.sample(procs, len(procs)):
            time.sleep(rng.uniform(0, max_pause))  # the random moment of the kill, not a wait
            os.kill(p.pid, 9)
            kills += 1
        for p, _, ack_path in procs:
            p.join(timeout=JOIN)
            assert p.exitcode == -9
            acknowledged.extend(read_acks(ack_path))
    return acknowledged, kills


def check_after_kills(root: Path, acknowledged: list[int]) -> int:
    path = receipts_path(root, "run", "node")
    # Nobody holds the lock any more: an append that may not wait at all goes through.
    summary = AttemptLedger(root, "run", "node", lock_timeout=0).append(
        0, "after", [ReceiptEvent("after")]
    )
    data = path.read_bytes()
    valid = [s for s in map(line_seq, data.split(b"\n")[:-1]) if s is not None]
    assert valid == sorted(set(valid)), "valid seqs must strictly increase in file order"
    # The next append continues the sequence.
    assert summary.seq == valid[-1]
    assert len(valid) == 1 or valid[-2] == summary.seq - 1
    assert summary.seq > max(acknowledged, default=0)
    counts = dict.fromkeys(acknowledged, 0)
    for s in valid:
        if s in counts:
            counts[s] += 1
    assert all(n == 1 for n in counts.values()), "an acknowledged seq is missing or duplicated"
    assert len(acknowledged) == len(set(acknowledged))
    return len(valid)


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_killed_writers_lose_nothing_acknowledged(
    method: str, children: list[Any], tmp_path: Path
) -> None:
    root = tmp_path / "receipts"
    ctx = multiprocessing.get_context(method)
    acknowledged, kills = kill_rounds(
        ctx, children, root, rounds=3, writers=3, max_pause=0.05, seed=hash(method) & 0xFFFF
    )
    assert kills == 9
    assert acknowledged, "the writers never got to append"
    check_after_kills(root, acknowledged)


@pytest.mark.stress
@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_killed_writers_many_rounds(method: str, children: list[Any], tmp_path: Path) -> None:
    root = tmp_path / "receipts"
    ctx = multiprocessing.get_context(method)
    acknowledged, kills = kill_rounds(
        ctx, children, root, rounds=40, writers=4, max_pause=0.1, seed=1
    )
    checked = check_after_kills(root, acknowledged)
    print(f"\n{method}: {kills} kills, {len(acknowledged)} acknowledged, {checked} valid lines")


@pytest.mark.stress
def test_soak_writers_readers_reconcilers_and_kills(children: list[Any], tmp_path: Path) -> None:
    """8 processes for SOAK_SECONDS (default 60): 5 writers (some huge payloads), 2 readers and
    a reconciler, killed and restarted at random; then every acknowledged seq is checked."""
    duration = float(os.environ.get("SOAK_SECONDS", "60"))
    root = tmp_path / "receipts"
    violations = tmp_path / "violations"
    rng = random.Random(7)
    ctx = multiprocessing.get_context("spawn")
    acks: list[Path] = []
    slots: list[tuple[str, Any]] = []

    def start(role: str) -> Any:
        ready = ctx.Event()
        if role == "writer":
            ack_path = tmp_path / f"ack-{len(acks)}"
            acks.append(ack_path)
            target, args = _workers.append_and_acknowledge, (root, len(acks), ack_path, ready, 200)
        elif role == "reader":
            target, args = _workers.read_and_check, (root, violations, ready)
        else:
            target, args = _workers.reconcile_forever, (root, violations, ready)
        process = ctx.Process(target=target, args=args)  # type: ignore[attr-defined]
        process.start()
        children.append(process)
        assert ready.wait(timeout=JOIN)
        return process

    for role in ["writer"] * 5 + ["reader"] * 2 + ["reconciler"]:
        slots.append((role, start(role)))
    kills = 0
    began = time.monotonic()
    while time.monotonic() - began < duration:
        time.sleep(rng.uniform(0, 0.5))  # the random moment of the next kill
        index = rng.randrange(len(slots))
        role, process = slots[index]
        process.kill()
        process.join(timeout=JOIN)
        kills += 1
        slots[index] = (role, start(role))
    for _, process in slots:
        process.kill()
        process.join(timeout=JOIN)
    elapsed = time.monotonic() - began
    acknowledged = [seq for path in acks for seq in read_acks(path)]
    checked = check_after_kills(root, acknowledged)
    assert not violations.exists(), violations.read_text()
    print(
        f"\nsoak: {elapsed:.0f} s, {len(acknowledged) / elapsed:,.0f} acknowledged appends/s, "
        f"{kills} kills, {checked:,} valid records checked, "
        f"{receipts_path(root, 'run', 'node').stat().st_size >> 20} MiB ledger"
    )
