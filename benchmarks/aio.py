"""Section 7: asyncio and kernel wake-ups (issue 11's targets).

- wake-up across processes, blocking and async ``reconcile``, at 1 / 10 / 50 ms polls;
- the async append, uncontended, against the blocking one in the same rounds;
- 4 processes x 50 coroutines appending to one ledger, against 4 blocking processes in the same
  repeats, with the loop's worst lag (a probe task sleeping 1 ms);
- 1,000 followers on one loop and one writer process: wake-up and descriptors.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import random
import statistics
import time
from pathlib import Path
from typing import Any

from attempt_ledger import AttemptLedger, ReceiptEvent
from attempt_ledger.aio import AsyncAttemptLedger

from . import scenarios
from .contenders import NODE, RUN
from .scenarios import JOIN, collect, events, scratch, stats, time_calls


def _async_reconciler(
    name: str, root: Path, poll_ms: int, rounds: int, ready: Any, out: Any
) -> None:
    async def main() -> None:
        ledger = AsyncAttemptLedger(root, RUN, NODE)
        ready.set()
        for target in range(1, rounds + 1):
            summary = await ledger.reconcile(target, 60_000, poll_ms)
            out.put(time.monotonic())
            assert summary.found

    asyncio.run(main())


def wakeups(rounds: int) -> dict[str, dict[str, Any]]:
    """Blocking and async reconcile, woken across processes, at each poll interval."""
    return {
        f"{kind}, {poll} ms": scenarios.wakeup(
            poll, rounds, reconciler=None if kind == "sync" else _async_reconciler
        )
        for poll in (1, 10, 50)
        for kind in ("sync", "async")
    }


def async_append(calls: int, repeats: int) -> dict[str, Any]:
    """Per-call latency of an uncontended 1-event append, blocking and awaited, alternating in
    short rounds; ``ratio`` is the median over rounds of async / sync round medians."""
    batch = events(1)
    medians: dict[str, list[float]] = {"sync": [], "async": []}
    samples: dict[str, list[int]] = {"sync": [], "async": []}
    with scratch() as root:
        sync = AttemptLedger(root / "sync", RUN, NODE)
        aledger = AsyncAttemptLedger(root / "async", RUN, NODE)

        async def timed(count: int) -> list[int]:
            clock, out = time.perf_counter_ns, []
            for _ in range(count):
                start = clock()
                await aledger.append(1, "bench", batch)
                out.append(clock() - start)
            return out

        loop = asyncio.new_event_loop()
        try:
            for _ in range(repeats):
                for kind in random.sample(["sync", "async"], 2):
                    if kind == "sync":
                        run = time_calls(lambda: sync.append(1, "bench", batch), calls)
                    else:
                        run = loop.run_until_complete(timed(calls))
                    samples[kind].extend(run)
                    medians[kind].append(statistics.median(run) / 1000)
            loop.run_until_complete(aledger.aclose())
        finally:
            loop.close()
            sync.close()
    return {
        kind: {**stats(samples[kind]), "median": statistics.median(medians[kind])}
        for kind in samples
    } | {
        "ratio": statistics.median(
            a / s for a, s in zip(medians["async"], medians["sync"], strict=True)
        )
    }


def _coroutines(root: Path, tasks: int, count: int, start: Any, out: Any) -> None:
    async def main() -> None:
        ledger = AsyncAttemptLedger(root, RUN, NODE)
        batch = events(1)
        lags: list[float] = []
        done = False

        async def probe() -> None:
            while not done:
                before = time.monotonic()
                await asyncio.sleep(0.001)
                lags.append(time.monotonic() - before - 0.001)

        async def one() -> None:
            for _ in range(count):
                await ledger.append(1, "bench", batch)

        start.wait(timeout=JOIN)
        began = time.monotonic()
        prober = asyncio.create_task(probe())
        await asyncio.gather(*(one() for _ in range(tasks)))
        ended = time.monotonic()
        done = True
        await prober
        out.put((began, ended, lags))

    asyncio.run(main())


def coroutine_contention(processes: int, tasks: int, appends: int, repeats: int) -> dict[str, Any]:
    """``processes`` processes of ``tasks`` coroutines append ``appends`` 1-event batches in all
    to one ledger, alternating with as many blocking processes (scenarios.contention)."""
    ctx = multiprocessing.get_context("fork")
    count = max(appends // (processes * tasks), 1)
    runs, ratios, exact = [], [], True
    for _ in range(repeats):
        blocking = scenarios.contention("ledger", processes, count * tasks)
        with scratch() as root:
            start, out = ctx.Barrier(processes), ctx.Queue()
            children = [
                ctx.Process(target=_coroutines, args=(root, tasks, count, start, out))
                for _ in range(processes)
            ]
            results = collect(children, out)
            total = processes * tasks * count
            seqs = [r.seq for r in AttemptLedger(root, RUN, NODE).iter_records()]
            exact &= seqs == list(range(1, total + 1))
        elapsed = max(r[1] for r in results) - min(r[0] for r in results)
        lags = sorted(lag for r in results for lag in r[2]) or [0.0]
        run = {
            "appends_per_s": total / elapsed,
            "max_lag_ms": lags[-1] * 1000,
            "p99_lag_ms": lags[int(0.99 * (len(lags) - 1))] * 1000,
            "median_lag_ms": lags[len(lags) // 2] * 1000,
        }
        runs.append(run)
        ratios.append(run["appends_per_s"] / blocking["appends_per_s"])
    middle = sorted(runs, key=lambda r: r["appends_per_s"])[len(runs) // 2]
    return {
        **middle,
        "worst_lag_ms": max(r["max_lag_ms"] for r in runs),
        "ratio": statistics.median(ratios),
        "exact": exact,
    }


def _writer(root: Path, records: int, ready: Any) -> None:
    ledger = AttemptLedger(root, RUN, NODE)
    rng = random.Random(records)
    assert ready.wait(timeout=JOIN)
    for _ in range(records):
        time.sleep(rng.uniform(0.002, 0.02))  # let the followers settle between records
        ledger.append(1, "w", [ReceiptEvent("tick", {"t": time.monotonic()})])


def _descriptors() -> tuple[int, int]:
    fds = os.listdir("/proc/self/fd")
    inotify = 0
    for fd in fds:
        try:
            inotify += os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:inotify"
        except OSError:
            continue
    return len(fds), inotify


def followers(count: int, records: int, poll: float = 0.05) -> dict[str, Any]:
    """``count`` followers on one loop (polling every ``poll`` s as the safety net), one writer
    process: the delay from each append to each follower receiving it, and the descriptors
    the followers cost."""
    ctx = multiprocessing.get_context("fork")
    with scratch() as root:
        ready = ctx.Event()
        writer = ctx.Process(target=_writer, args=(root, records, ready))
        writer.start()

        async def main() -> dict[str, Any]:
            ledger = AsyncAttemptLedger(root, RUN, NODE)
            before = _descriptors()
            delays: list[int] = []
            seen: list[list[int]] = [[] for _ in range(count)]

            async def follow(mine: list[int]) -> None:
                async for record in ledger.follow(poll_interval=poll, timeout=JOIN):
                    delays.append(int((time.monotonic() - record.payload["t"]) * 1e9))  # type: ignore[index]
                    mine.append(record.seq)
                    if record.seq == records:
                        return

            tasks = [asyncio.create_task(follow(mine)) for mine in seen]
            await asyncio.sleep(0.5)  # every follower waits before the first record
            during = _descriptors()
            ready.set()
            await asyncio.gather(*tasks)
            return {
                **stats(delays),
                "exact": all(mine == list(range(1, records + 1)) for mine in seen),
                "fds_extra": during[0] - before[0],
                "inotify_fds": during[1],
            }

        try:
            return asyncio.run(main())
        finally:
            writer.join(timeout=JOIN)
            if writer.is_alive():
                writer.kill()
                writer.join()


def run(quick: bool) -> dict[str, Any]:
    return {
        "wakeup": wakeups(5 if quick else 100),
        "append": async_append(50 if quick else 400, 3 if quick else 40),
        "coroutines": coroutine_contention(4, 50, 400 if quick else 40_000, 1 if quick else 5),
        "followers": {
            poll: followers(20 if quick else 1000, 3 if quick else 100, poll)
            for poll in (0.05, 1.0)
        },
    }


def render(results: dict[str, Any]) -> str:
    out = ["", "## 7. asyncio and inotify wake-ups", ""]
    out += ["Reconcile wake-up across processes (ms from append to return):", ""]
    out += ["| reconcile, poll | median | p90 | p99 | max |", "| --- | ---: | ---: | ---: | ---: |"]
    for label, r in results["wakeup"].items():
        out.append(
            f"| {label} | {r['median'] / 1000:.2f} | {r['p90'] / 1000:.2f} "
            f"| {r['p99'] / 1000:.2f} | {r['max'] / 1000:.2f} |"
        )
    a = results["append"]
    out += [
        "",
        f"Uncontended 1-event append: sync median {a['sync']['median']:.1f} µs, async"
        f" {a['async']['median']:.1f} µs; async / sync in the same rounds {a['ratio']:.2f}x.",
    ]
    c = results["coroutines"]
    out += [
        "",
        f"4 processes x 50 coroutines, one ledger: {c['appends_per_s']:,.0f} appends/s, seqs"
        f" exact: {'yes' if c['exact'] else 'NO'}; {c['ratio']:.2f}x 4 blocking processes in"
        f" the same repeats; the loop's lag (a probe sleeping 1 ms, the median run): median"
        f" {c['median_lag_ms']:.2f} ms, p99 {c['p99_lag_ms']:.1f}, worst of all runs"
        f" {c['worst_lag_ms']:.1f} ms.",
    ]
    for poll, f in results["followers"].items():
        out += [
            "",
            f"Followers on one loop (poll {poll:g} s), one writer process: every record once and"
            f" in order: {'yes' if f['exact'] else 'NO'}; wake-up median {f['median'] / 1000:.2f}"
            f" ms, p90 {f['p90'] / 1000:.2f}, p99 {f['p99'] / 1000:.2f}, max"
            f" {f['max'] / 1000:.2f}; {f['fds_extra']} extra descriptors, {f['inotify_fds']} of"
            " them inotify.",
        ]
    return "\n".join(out) + "\n"


def main(quick: bool = False) -> int:
    print(render(run(quick)))
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main("--quick" in sys.argv))
