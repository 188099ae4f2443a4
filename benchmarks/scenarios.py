"""The measurements. Each returns plain dicts; ``report`` turns them into tables and plots."""

from __future__ import annotations

import multiprocessing
import os
import queue
import random
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from attempt_ledger import ReceiptEvent, read_last_seq
from attempt_ledger._codec import encode_record
from attempt_ledger._records import ReceiptRecord

from .contenders import CONTENDERS, NODE, RUN, LedgerObject

PAYLOAD = {"note": "x" * 188}  # 200 bytes of JSON
JOIN = 120


def events(count: int) -> list[ReceiptEvent]:
    return [ReceiptEvent("attempt_summary", PAYLOAD)] * count


def stats(samples_ns: list[int]) -> dict[str, float]:
    """Median, p90, p99 and max of latencies, in microseconds."""
    ordered = sorted(samples_ns)

    def pick(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1000

    return {"median": pick(0.5), "p90": pick(0.9), "p99": pick(0.99), "max": ordered[-1] / 1000}


@contextmanager
def scratch() -> Iterator[Path]:
    directory = Path(tempfile.mkdtemp(prefix="attempt-ledger-bench-"))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def time_calls(call: Callable[[], object], count: int) -> list[int]:
    clock = time.perf_counter_ns
    samples = []
    for _ in range(count):
        start = clock()
        call()
        samples.append(clock() - start)
    return samples


# -- 1. one process -------------------------------------------------------------------------------


def single_process(
    names: list[str], batch: int, calls: int, repeats: int, *, durable: bool = False
) -> dict[str, Any]:
    """Per-call latency of ``batch``-event appends.

    The contenders take turns in short rounds, in a new random order each round, so that a
    machine whose speed drifts (a shared VM) slows them alike; ``ratio`` is the median over
    rounds of each contender's round median divided by the floor's in the same round.
    """
    samples: dict[str, list[int]] = {name: [] for name in names}
    medians: dict[str, list[float]] = {name: [] for name in names}
    with scratch() as root:
        opened = {name: CONTENDERS[name](root / name, durable=durable) for name in names}
        batch_events = events(batch)
        for _ in range(repeats):
            for name in random.sample(names, len(names)):
                contender = opened[name]
                contender.reset()
                count = min(calls, contender.max_calls)
                run = time_calls(lambda c=contender: c.append(batch_events), count)
                samples[name].extend(run)
                medians[name].append(statistics.median(run) / 1000)
        for contender in opened.values():
            contender.close()
    return {
        name: {
            **stats(samples[name]),
            "median": statistics.median(medians[name]),
            "ratio": statistics.median(
                m / f for m, f in zip(medians[name], medians["floor"], strict=True)
            ),
        }
        for name in names
    }


# -- 2. contention --------------------------------------------------------------------------------


def _contend(
    name: str, root: Path, count: int, start: Any, out: Any, node: str = NODE, durable: bool = False
) -> None:
    kwargs: dict[str, Any] = {"node": node} if node != NODE else {}
    contender = CONTENDERS[name](root, durable=durable, **kwargs)
    batch = events(1)
    start.wait(timeout=JOIN)
    began = time.monotonic()
    samples = time_calls(lambda: contender.append(batch), count)
    out.put((began, time.monotonic(), samples))
    contender.close()


def contention(name: str, processes: int, count: int, durable: bool = False) -> dict[str, Any]:
    """``processes`` processes append ``count`` 1-event batches each to one ledger."""
    ctx = multiprocessing.get_context("fork")
    with scratch() as root:
        CONTENDERS[name](root).close()  # create the storage (SQLite's schema) before the race
        start, out = ctx.Barrier(processes), ctx.Queue()
        children = [
            ctx.Process(target=_contend, args=(name, root, count, start, out, NODE, durable))
            for _ in range(processes)
        ]
        results = collect(children, out)
        contender = CONTENDERS[name](root)
        seqs = contender.seqs()
        contender.close()
    total = processes * count
    elapsed = max(r[1] for r in results) - min(r[0] for r in results)
    return {
        "appends_per_s": total / elapsed,
        **stats([s for r in results for s in r[2]]),
        "exact": seqs == list(range(1, total + 1)),
        "checked": CONTENDERS[name].exact_across_processes,
    }


def contention_matrix(
    names: list[str],
    process_counts: list[int],
    appends: int,
    repeats: int,
    *,
    durable: bool = False,
) -> dict[str, dict[str, Any]]:
    """Every contender at every process count, ``repeats`` times in shuffled order.

    The run of median throughput is kept, with ``ratio``: the median over repeats of the
    throughput divided by the floor's in the same repeat. FileLock polls, so it does a tenth of
    the appends.
    """
    runs = {name: {p: [] for p in process_counts} for name in names}
    for _ in range(repeats):
        for processes in process_counts:
            for name in random.sample(names, len(names)):
                count = (appends // 10 if name == "filelock" else appends) // processes
                run = contention(name, processes, max(count, 1), durable)
                runs[name][processes].append(run)
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        out[name] = {}
        for processes in process_counts:
            mine, floors = runs[name][processes], runs["floor"][processes]
            ratios = [
                m["appends_per_s"] / f["appends_per_s"] for m, f in zip(mine, floors, strict=True)
            ]
            middle = sorted(mine, key=lambda r: r["appends_per_s"])[len(mine) // 2]
            out[name][str(processes)] = {
                **middle,
                "ratio": statistics.median(ratios),
                "exact": all(r["exact"] for r in mine),
                # Against every other contender, in the same repeats (the durable targets).
                "vs": {
                    other: statistics.median(
                        m["appends_per_s"] / o["appends_per_s"]
                        for m, o in zip(mine, runs[other][processes], strict=True)
                    )
                    for other in names
                    if other != name
                },
            }
    return out


def collect(children: list[Any], out: Any) -> list[Any]:
    """Start ``children`` and gather one result from each; fail fast if one dies."""
    for child in children:
        child.start()
    results: list[Any] = []
    deadline = time.monotonic() + JOIN
    try:
        while len(results) < len(children):
            try:
                results.append(out.get(timeout=1))
            except queue.Empty:
                failed = [c.exitcode for c in children if c.exitcode not in (None, 0)]
                if failed or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"a benchmark process failed (exit codes {failed})"
                    ) from None
    finally:
        for child in children:
            child.join(timeout=5)
            if child.is_alive():
                child.kill()
                child.join()
    return results


# -- 3. ledger size -------------------------------------------------------------------------------


def fill(path: Path, size: int) -> int:
    """Write valid receipts up to ``size`` bytes; return the last seq."""
    path.parent.mkdir(parents=True, exist_ok=True)
    line = encode_record(ReceiptRecord(1, RUN, NODE, 1, "bench", 10**9, 0, "e", PAYLOAD))
    head, tail = line.split(b"1000000000", 1)
    seq = 0
    with path.open("wb") as f:
        while f.tell() < size:
            f.write(b"".join(head + b"%d" % s + tail for s in range(seq + 1, seq + 10_001)))
            seq += 10_000
    return seq


def size_sweep(sizes: list[int], calls: int, seed_limit_s: float) -> dict[str, Any]:
    """Append and last-seq latency on ledgers of each size, for the ledger and the seed."""
    rows: dict[str, Any] = {}
    with_seed = True
    for size in sizes:
        rows[str(size)] = row = _one_size(size, calls, with_seed)
        # Once one seed append takes over the limit, larger sizes are only extrapolated.
        with_seed = with_seed and row["seed_append"]["median"] <= seed_limit_s * 1e6
    return rows


def _one_size(size: int, calls: int, with_seed: bool) -> dict[str, Any]:
    # The ledger of this size takes turns with an empty one, so ``ratio`` (median over rounds)
    # compares them at the same moment of a drifting machine.
    row: dict[str, Any] = {}
    with scratch() as root:
        sized, empty = LedgerObject(root / "sized"), LedgerObject(root / "empty")
        path, empty_path = sized.ledger.path, empty.ledger.path
        fill(path, size)
        for ledger in (sized, empty):
            ledger.append(events(1))  # the first append reads the tail; then it is steady
        pairs = {
            "ledger_append": (lambda: sized.append(events(1)), lambda: empty.append(events(1))),
            "ledger_read_last_seq": (
                lambda: read_last_seq(path),
                lambda: read_last_seq(empty_path),
            ),
        }
        for key, (at_size, at_zero) in pairs.items():
            samples, ratios = [], []
            for _ in range(10):
                mine, base = time_calls(at_size, calls // 10), time_calls(at_zero, calls // 10)
                samples += mine
                ratios.append(statistics.median(mine) / statistics.median(base))
            row[key] = {**stats(samples), "ratio": statistics.median(ratios)}
        sized.close()
        empty.close()
        if with_seed:
            seed = CONTENDERS["seed"](root)
            path.unlink()
            fill(seed.path, size)  # type: ignore[attr-defined]
            seed_calls = 5  # few, so the file stays at its size: each append reads all of it
            row["seed_append"] = stats(time_calls(lambda: seed.append(events(1)), seed_calls))
    return row


# -- 4. durable -----------------------------------------------------------------------------------


def durable(names: list[str], calls: int, repeats: int) -> dict[str, Any]:
    """1-event appends that fsync, against a floor that fsyncs too."""
    return single_process(names, 1, calls, repeats, durable=True)


# -- 5. reconcile wake-up -------------------------------------------------------------------------


def _reconciler(name: str, root: Path, poll_ms: int, rounds: int, ready: Any, out: Any) -> None:
    ledger = CONTENDERS[name](root).ledger  # type: ignore[attr-defined]
    ready.set()
    for target in range(1, rounds + 1):
        summary = ledger.reconcile(target, 60_000, poll_ms)
        out.put(time.monotonic())  # CLOCK_MONOTONIC: one clock for every process
        assert summary.found


def wakeup(
    poll_ms: int, rounds: int, name: str = "ledger", reconciler: Any = None
) -> dict[str, Any]:
    """Time from an append in this process to ``reconcile`` returning in another (run by
    ``reconciler``, default :func:`_reconciler`)."""
    ctx = multiprocessing.get_context("fork")
    rng = random.Random(poll_ms)
    with scratch() as root:
        ready, out = ctx.Event(), ctx.Queue()
        target = reconciler or _reconciler
        child = ctx.Process(target=target, args=(name, root, poll_ms, rounds, ready, out))
        child.start()
        ledger = CONTENDERS[name](root)
        delays = []
        try:
            if not ready.wait(timeout=JOIN):
                raise RuntimeError("the reconciling process did not start")
            for _ in range(rounds):
                time.sleep(rng.uniform(0, 2 * poll_ms / 1000))  # land anywhere in an interval
                before = time.monotonic()
                ledger.append(events(1))
                delays.append(int((out.get(timeout=JOIN) - before) * 1e9))
        finally:
            child.join(timeout=JOIN)
            if child.is_alive():
                child.kill()
                child.join()
            ledger.close()
    return stats(delays)


# -- 6. PostgreSQL ---------------------------------------------------------------------------


def many_ledgers(
    name: str, processes: int, ledgers: int, count: int, *, durable: bool = False
) -> dict[str, Any]:
    """``processes`` processes append ``count`` 1-event batches each, process i to ledger
    i mod ``ledgers``; every ledger's seqs must come out exact (for a correct contender)."""
    ctx = multiprocessing.get_context("fork")
    nodes = [f"{NODE}-{i % ledgers}" for i in range(processes)]
    kind = CONTENDERS[name]
    with scratch() as root:
        kind(root, durable=durable).close()  # create the storage (a table) before the race
        start, out = ctx.Barrier(processes), ctx.Queue()
        children = [
            ctx.Process(target=_contend, args=(name, root, count, start, out, node, durable))
            for node in nodes
        ]
        results = collect(children, out)
        exact = True
        for node in sorted(set(nodes)) if kind.exact_across_processes else ():
            contender = kind(root, node=node, durable=durable)  # type: ignore[call-arg]
            exact &= contender.seqs() == list(range(1, count * nodes.count(node) + 1))
            contender.close()
    elapsed = max(r[1] for r in results) - min(r[0] for r in results)
    return {
        "appends_per_s": processes * count / elapsed,
        **stats([s for r in results for s in r[2]]),
        "exact": exact,
        "checked": kind.exact_across_processes,
    }


def postgres_floor(
    names: list[str],
    shapes: list[tuple[int, int]],
    appends: int,
    repeats: int,
    *,
    durable: bool = False,
) -> dict[str, dict[str, Any]]:
    """Each contender at each (processes, ledgers), ``repeats`` times in shuffled order, as
    :func:`many_ledgers`; ``ratio`` is the median over repeats of the throughput divided by
    the bare INSERT's (``pginsert``) in the same repeat, and the run of median throughput is
    kept."""
    runs: dict[str, dict[tuple[int, int], list[dict[str, Any]]]] = {
        name: {shape: [] for shape in shapes} for name in names
    }
    for _ in range(repeats):
        for shape in shapes:
            for name in random.sample(names, len(names)):
                procs, ledgers = shape
                runs[name][shape].append(
                    many_ledgers(name, procs, ledgers, appends // procs, durable=durable)
                )
    out: dict[str, dict[str, Any]] = {}
    for procs, ledgers in shapes:
        row = out[f"{procs} processes, {ledgers} ledgers"] = {}
        floors = runs["pginsert"][procs, ledgers]
        for name in names:
            mine = runs[name][procs, ledgers]
            middle = sorted(mine, key=lambda r: r["appends_per_s"])[len(mine) // 2]
            ratios = [
                m["appends_per_s"] / f["appends_per_s"] for m, f in zip(mine, floors, strict=True)
            ]
            row[name] = {
                **middle,
                "ratio": statistics.median(ratios),
                "ratios": ratios,
                "exact": all(r["exact"] for r in mine),
            }
    return out


@contextmanager
def durable_postgres() -> Iterator[str | None]:
    """A second throwaway server with ``fsync=on`` and ``synchronous_commit=on`` (the
    defaults), its data on the temporary directory's filesystem, named in
    ``$ATTEMPT_LEDGER_PG_DURABLE_DSN`` while it runs; ``None`` without the server binaries
    that scripts/with-postgres names in ``$ATTEMPT_LEDGER_PG_BIN``."""
    bindir = os.environ.get("ATTEMPT_LEDGER_PG_BIN")
    if not bindir:
        yield None
        return
    with scratch() as data:
        owner = []
        if os.geteuid() == 0:  # the server refuses to run as root
            shutil.chown(data, "postgres")
            owner = ["runuser", "-u", "postgres", "--"]

        def run(*command: object, check: bool = True) -> None:
            subprocess.run(
                [*owner, f"{bindir}/{command[0]}", *map(str, command[1:])],
                check=check,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                timeout=JOIN,
            )

        cluster = data / "cluster"
        run("initdb", "-D", cluster, "-A", "trust", "-U", "ledger")
        options = f"-k {data} -c listen_addresses='' -c fsync=on -c synchronous_commit=on"
        run("pg_ctl", "-D", cluster, "-l", data / "server.log", "-w", "-o", options, "start")
        dsn = f"host={data} user=ledger dbname=postgres"
        os.environ["ATTEMPT_LEDGER_PG_DURABLE_DSN"] = dsn
        try:
            yield dsn
        finally:
            del os.environ["ATTEMPT_LEDGER_PG_DURABLE_DSN"]
            run("pg_ctl", "-D", cluster, "-m", "immediate", "-w", "stop", check=False)
