"""An asyncio worker pool with a follower: tasks append, one coroutine follows the ledger.

python examples/asyncio_pool.py [--tasks 20] [--workers 4]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile

from attempt_ledger import ReceiptEvent
from attempt_ledger.aio import AsyncAttemptLedger


async def worker(ledger: AsyncAttemptLedger, name: str, queue: asyncio.Queue[int]) -> None:
    while True:
        task = await queue.get()
        try:
            await ledger.append(1, name, [ReceiptEvent("task_done", {"task": task})])
        finally:
            queue.task_done()


async def follower(ledger: AsyncAttemptLedger, expected: int, stop: asyncio.Event) -> list[int]:
    """Collect the task numbers as their records land, until all are seen."""
    seen: list[int] = []
    async for record in ledger.follow(since_seq=0, poll_interval=1.0, stop=stop, timeout=60):
        assert isinstance(record.payload, dict)
        seen.append(int(str(record.payload["task"])))
        if len(seen) == expected:
            stop.set()
    return seen


async def run(root: str, tasks: int, workers: int) -> list[int]:
    async with AsyncAttemptLedger(root, "async-run", "node") as ledger:
        stop = asyncio.Event()
        following = asyncio.create_task(follower(ledger, tasks, stop))
        queue: asyncio.Queue[int] = asyncio.Queue()
        for task in range(tasks):
            queue.put_nowait(task)
        pool = [asyncio.create_task(worker(ledger, f"w{i}", queue)) for i in range(workers)]
        await queue.join()
        for each in pool:
            each.cancel()
        await asyncio.gather(*pool, return_exceptions=True)
        seen = await following
        assert await ledger.last_seq() == tasks
        return seen


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=20)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--root", default=None, help="ledger root (default: a temporary dir)")
    args = parser.parse_args(argv)
    seen = asyncio.run(run(args.root or tempfile.mkdtemp(), args.tasks, args.workers))
    assert sorted(seen) == list(range(args.tasks)), seen
    print(f"follower saw all {len(seen)} tasks")


if __name__ == "__main__":
    main()
