"""Tables, targets and the plot, from the numbers ``scenarios`` measured."""

from __future__ import annotations

import os
import platform
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path
from typing import Any

from .contenders import CONTENDERS

FLOOR = "floor"


def machine() -> dict[str, str]:
    temp = os.path.realpath(tempfile.gettempdir())
    fs_type, best = "?", ""
    with open("/proc/mounts") as mounts:
        for line in mounts:
            _, mount_point, kind, *_ = line.split()
            if temp.startswith(mount_point) and len(mount_point) > len(best):
                fs_type, best = kind, mount_point
    return {
        "cpus": str(os.cpu_count()),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "filelock": version("filelock"),
        "attempt_ledger": version("attempt_ledger"),
        "tempdir": f"{temp} ({fs_type})",
    }


def _human(size: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale:
            return f"{size / scale:g} {unit}"
    return f"{size} B"


def render(results: dict[str, Any]) -> str:
    out = ["# attempt_ledger benchmark", ""]
    out += [f"- {k}: {v}" for k, v in results["machine"].items()]
    out += [f"- command: `{results['command']}`", ""]

    out += ["## 1. One process, one ledger (µs per append call)", ""]
    for batch, rows in results["single"].items():
        out += [
            f"Batch of {batch}:",
            "",
            "| contender | median | p90 | p99 | max | per record | vs floor |",
        ]
        out += ["| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for name, r in rows.items():
            per_record = r["median"] / int(batch)
            out.append(
                f"| {CONTENDERS[name].name} | {r['median']:.1f} | {r['p90']:.1f} | {r['p99']:.1f} "
                f"| {r['max']:.0f} | {per_record:.2f} | {r['ratio']:.2f}x |"
            )
        out.append("")

    out += ["## 2. Contention: N processes, one ledger, 1-event appends", ""]
    out += ["| contender | processes | appends/s | vs floor | p99 µs | seqs exact |"]
    out += ["| --- | ---: | ---: | ---: | ---: | --- |"]
    for name, by_procs in results["contention"].items():
        for procs, r in by_procs.items():
            exact = (
                ("yes" if r["exact"] else "NO") if r["checked"] else "n/a (not a correct ledger)"
            )
            out.append(
                f"| {CONTENDERS[name].name} | {procs} | {r['appends_per_s']:,.0f} "
                f"| {r['ratio']:.2f}x | {r['p99']:.0f} | {exact} |"
            )
    out.append("")

    out += ["## 3. Ledger size (µs, median; vs an empty ledger in the same rounds)", ""]
    out += [
        "| size | ledger append | vs empty | ledger read_last_seq | vs empty | seed append |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for size, row in results["sizes"].items():
        seed = row.get("seed_append", {}).get("median")
        seed_text = (
            f"{seed:,.0f}"
            if seed is not None
            else f"~{_extrapolate(results, int(size)):,.0f} (extrapolated)"
        )
        append, read = row["ledger_append"], row["ledger_read_last_seq"]
        out.append(
            f"| {_human(int(size))} | {append['median']:.1f} | {append['ratio']:.2f}x "
            f"| {read['median']:.1f} | {read['ratio']:.2f}x | {seed_text} |"
        )
    out.append("")

    out += ["## 4. Durable appends (fsync every append; µs)", ""]
    out += ["| contender | median | p90 | p99 | vs floor |", "| --- | ---: | ---: | ---: | ---: |"]
    for name, r in results["durable"].items():
        out.append(
            f"| {CONTENDERS[name].name} | {r['median']:.0f} | {r['p90']:.0f} | {r['p99']:.0f} "
            f"| {r['ratio']:.2f}x |"
        )
    out.append("")

    if "durable_contention" in results:
        out += ["## 4b. Durable appends, N processes, one ledger (group commit)", ""]
        out += ["| contender | processes | appends/s | vs fsync inside the lock | vs SQLite FULL "]
        out[-1] += "| vs the floor, fsync after the lock | p99 µs | seqs exact |"
        out += ["| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
        for name, by_procs in results["durable_contention"].items():
            for procs, r in by_procs.items():
                vs = r["vs"]
                exact = ("yes" if r["exact"] else "NO") if r["checked"] else "n/a"
                out.append(
                    f"| {CONTENDERS[name].name} | {procs} | {r['appends_per_s']:,.0f} "
                    f"| {vs.get('ledger_lockfsync', 1.0):.2f}x | {vs.get('sqlite', 1.0):.2f}x "
                    f"| {vs.get('floor_after', 1.0):.2f}x | {r['p99']:.0f} | {exact} |"
                )
        out.append("")

    out += ["## 5. Reconcile wake-up across processes (ms from append to return)", ""]
    out += ["| poll interval | median | p90 | p99 | max |", "| ---: | ---: | ---: | ---: | ---: |"]
    for poll, r in results["wakeup"].items():
        out.append(
            f"| {poll} ms | {r['median'] / 1000:.2f} | {r['p90'] / 1000:.2f} "
            f"| {r['p99'] / 1000:.2f} | {r['max'] / 1000:.2f} |"
        )
    if "postgres" in results:
        out += ["", *render_postgres(results)]
    out += ["", "## Targets", ""]
    out += [f"- {'PASS' if ok else 'MISS'}: {text}" for text, ok in targets(results)]
    return "\n".join(out) + "\n"


def render_postgres(results: dict[str, Any]) -> list[str]:
    """Section 6, from what ``python -m benchmarks`` measured on PostgreSQL."""
    out = ["## 6. PostgreSQL (1-event appends; server from scripts/with-postgres)", ""]
    out += ["| contender, processes, ledgers | appends/s | p99 µs | seqs exact |"]
    out += ["| --- | ---: | ---: | --- |"]
    for label, r in results["postgres"].items():
        kind, rest = label.split(", ", 1)
        out.append(
            f"| {CONTENDERS[kind].name}, {rest} | {r['appends_per_s']:,.0f} | {r['p99']:.0f} "
            f"| {'yes' if r['exact'] else 'NO'} |"
        )
    w = results["postgres_wakeup"]
    out += [
        "",
        f"Reconcile wake-up through LISTEN/NOTIFY, 50 ms poll fallback: median "
        f"{w['median'] / 1000:.2f} ms, p90 {w['p90'] / 1000:.2f}, p99 {w['p99'] / 1000:.2f}.",
    ]
    for key, title in (
        ("postgres_floor", "Against a bare INSERT (fsync=off server)"),
        ("postgres_durable", "Durable: a second server with fsync=on, synchronous_commit=on"),
    ):
        if key not in results:
            continue
        out += ["", f"{title}; ratios within the same rounds:", ""]
        out += ["| processes, ledgers | contender | appends/s | vs bare INSERT | each round |"]
        out += ["| --- | --- | ---: | ---: | --- |"]
        for shape, row in results[key].items():
            for name, r in row.items():
                rounds = ", ".join(f"{x:.2f}" for x in r["ratios"])
                out.append(
                    f"| {shape} | {CONTENDERS[name].name} | {r['appends_per_s']:,.0f} "
                    f"| {r['ratio']:.2f}x | {rounds} |"
                )
    if "postgres_durable_single" in results:
        out += ["", "Durable, one process (µs per 1-event append; vs the fsync floor):", ""]
        out += ["| contender | median | p90 | p99 | vs floor |"]
        out += ["| --- | ---: | ---: | ---: | ---: |"]
        for name, r in results["postgres_durable_single"].items():
            out.append(
                f"| {CONTENDERS[name].name} | {r['median']:.0f} | {r['p90']:.0f} "
                f"| {r['p99']:.0f} | {r['ratio']:.2f}x |"
            )
    return out


def postgres_targets(results: dict[str, Any]) -> list[tuple[str, bool]]:
    """The PostgreSQL targets: issue 12's are ratios to the bare INSERT in the same rounds."""
    checks = []
    for shape, row in results.get("postgres_floor", {}).items():
        value = row["postgres"]["ratio"]
        checks.append(
            (
                f"PostgreSQL, {shape}: {value:.2f}x the bare INSERT's throughput (target >= 0.6x)",
                value >= 0.6,
            )
        )
    exact = all(
        r["exact"]
        for key in ("postgres_floor", "postgres_durable")
        for row in results.get(key, {}).values()
        for r in row.values()
        if r["checked"]
    )
    checks.append(("PostgreSQL seqs exact against the floor and durable", exact))
    return checks


def _extrapolate(results: dict[str, Any], size: int) -> float:
    """The seed reads the whole file: scale its last measured latency linearly with size."""
    measured = [
        (int(s), r["seed_append"]["median"])
        for s, r in results["sizes"].items()
        if "seed_append" in r
    ]
    last_size, last_us = max(measured)
    return last_us * size / max(last_size, 1)


def targets(results: dict[str, Any]) -> list[tuple[str, bool]]:
    # Every comparison uses ratios measured in the same rounds (see scenarios), not medians
    # taken minutes apart on a machine whose speed drifts.
    single = results["single"]["1"]
    checks = []
    ratio = single["ledger"]["ratio"]
    checks.append((f"1-event append {ratio:.2f}x the floor (target <= 1.5x)", ratio <= 1.5))
    if "ledger_v2" in single:
        chained = single["ledger_v2"]["ratio"] / ratio
        checks.append(
            (
                f"hash-chained append {chained:.2f}x the schema-1 append (target <= 1.15x)",
                chained <= 1.15,
            )
        )
    speedup = single["sqlite"]["ratio"] / single["ledger"]["ratio"]
    checks.append((f"{speedup:.2f}x faster than SQLite WAL (target >= 3x)", speedup >= 3))
    four = {name: rows["4"]["ratio"] for name, rows in results["contention"].items()}
    for other, goal in ((FLOOR, 0.5), ("sqlite", 2), ("filelock", 20)):
        value = four["ledger"] / four[other]
        label = "of the floor's" if other == FLOOR else f"x {CONTENDERS[other].name}'s"
        checks.append(
            (f"4 processes: {value:.2f} {label} throughput (target {goal})", value >= goal)
        )
    contention = results["contention"]
    exact = all(r["exact"] for rows in contention.values() for r in rows.values() if r["checked"])
    checks.append(("contended seqs always exact", exact))
    sizes = results["sizes"]
    big = sizes[max(sizes, key=int)]
    for key in ("ledger_append", "ledger_read_last_seq"):
        value = big[key]["ratio"]
        checks.append(
            (
                f"{key} at the largest size {value:.2f}x the empty figure (target <= 1.2x)",
                value <= 1.2,
            )
        )
    value = results["durable"]["ledger"]["ratio"]
    checks.append((f"durable append {value:.2f}x the fsync floor (target <= 1.2x)", value <= 1.2))
    checks += _issue12_targets(results)
    for poll, r in results["wakeup"].items():
        value = r["median"] / 1000
        checks.append(
            (
                f"wake-up median {value:.2f} ms at poll {poll} ms (target <= {int(poll) + 2})",
                value <= int(poll) + 2,
            )
        )
    if "postgres" in results:
        spread = results["postgres"]["postgres, 8 processes, 8 ledgers"]["appends_per_s"]
        checks.append(
            (
                f"PostgreSQL, 8 processes on 8 ledgers: {spread:,.0f} appends/s (target >= 5,000)",
                spread >= 5000,
            )
        )
        wake = results["postgres_wakeup"]["median"] / 1000
        checks.append((f"PostgreSQL wake-up median {wake:.2f} ms (target <= 5)", wake <= 5))
        exact = all(r["exact"] for r in results["postgres"].values())
        checks.append(("PostgreSQL seqs always exact", exact))
        checks += postgres_targets(results)
    return checks


def _issue12_targets(results: dict[str, Any]) -> list[tuple[str, bool]]:
    # Issue 12: the 1-event append against the floors, contention at every process count,
    # durable group commit against fsync inside the lock and SQLite FULL.
    single = results["single"]["1"]
    ratio = single["ledger"]["ratio"]
    bare = ratio / single["bare"]["ratio"]
    checks = [
        (
            f"1-event append {ratio:.2f}x the floor, {bare:.2f}x the pre-encoded floor "
            "(target <= 1.0x the floor)",
            ratio <= 1.0,
        )
    ]
    for procs, row in results["contention"]["ledger"].items():
        value = row["ratio"]
        checks.append(
            (
                f"{procs} processes: {value:.2f}x the floor's throughput (target >= 0.6)",
                value >= 0.6,
            )
        )
    if "durable_contention" in results:
        durable = results["durable_contention"]["ledger"]
        top = max(durable, key=int)
        # SQLite runs these with synchronous=FULL, as the durable table says.
        names = {"ledger_lockfsync": CONTENDERS["ledger_lockfsync"].name, "sqlite": "SQLite FULL"}
        # What the bare design does against SQLite in the same repeats: the disk's share.
        bare = results["durable_contention"].get("floor_after", {}).get(top)
        for other, goal in (("ledger_lockfsync", 1.8), ("sqlite", 4.0)):
            value = durable[top]["vs"][other]
            said = ""
            if other == "sqlite" and bare is not None:
                said = f"; the floor with its fsync after the lock: {bare['vs']['sqlite']:.2f}x"
            checks.append(
                (
                    f"durable, {top} processes: {value:.2f}x {names[other]} "
                    f"(target >= {goal}{said})",
                    value >= goal,
                )
            )
        value = durable["1"]["vs"]["ledger_lockfsync"]
        checks.append(
            (
                f"durable, 1 process: {value:.2f}x the fsync inside the lock (target: no slower, "
                ">= 0.95)",
                value >= 0.95,
            )
        )
        exact = all(
            r["exact"]
            for rows in results["durable_contention"].values()
            for r in rows.values()
            if r["checked"]
        )
        checks.append(("durable contended seqs always exact", exact))
    return checks


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    sizes = results["sizes"]
    xs = [max(int(s), 1 << 16) for s in sizes]
    for key, label in (
        ("ledger_append", "attempt_ledger append"),
        ("ledger_read_last_seq", "attempt_ledger read_last_seq"),
    ):
        left.plot(xs, [sizes[s][key]["median"] for s in sizes], marker="o", label=label)
    seed_x = [max(int(s), 1 << 16) for s in sizes if "seed_append" in sizes[s]]
    seed_y = [sizes[s]["seed_append"]["median"] for s in sizes if "seed_append" in sizes[s]]
    left.plot(seed_x, seed_y, marker="o", label="seed algorithm append")
    beyond = [int(s) for s in sizes if "seed_append" not in sizes[s]]
    if beyond and seed_x:
        left.plot(
            [seed_x[-1], *beyond],
            [seed_y[-1], *(_extrapolate(results, size) for size in beyond)],
            linestyle="--",
            color=left.lines[-1].get_color(),
            label="seed algorithm (extrapolated)",
        )
    left.set(
        xscale="log",
        yscale="log",
        xlabel="ledger size (bytes; empty shown at 64 KiB)",
        ylabel="median µs",
        title="Latency vs ledger size",
    )
    left.legend()
    for name, rows in results["contention"].items():
        procs = [int(p) for p in rows]
        right.plot(
            procs,
            [rows[str(p)]["appends_per_s"] for p in procs],
            marker="o",
            label=CONTENDERS[name].name,
        )
    right.set(
        yscale="log",
        xlabel="processes",
        ylabel="appends/s",
        title="Throughput vs processes, one ledger",
    )
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
