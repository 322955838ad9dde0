"""Quickstart: leasepool in a plain asyncio program.

Five requests share two leased thread pools. Each request leases a pool for
the blocking call it makes, so no caller can hold more than one pool, and the
pool comes back when the ``async with`` block ends.
"""

from __future__ import annotations

import asyncio
import hashlib
import time

from leasepool import LeasedExecutorManager


def blocking_lookup(key: str) -> str:
    """Stand in for a blocking SDK or database call."""
    time.sleep(0.05)
    return key.upper()


async def handle(manager: LeasedExecutorManager, key: str) -> str:
    async with await manager.acquire(owner=f"request-{key}", lease_seconds=10) as lease:
        return await lease.run(blocking_lookup, key)


async def main() -> None:
    async with LeasedExecutorManager(max_pools=2, workers_per_pool=4) as manager:
        # Five callers, two pools: three of them wait their turn, in order.
        results = await asyncio.gather(*(handle(manager, k) for k in "abcde"))
        print("results:", results)

        # A lease's executor is a concurrent.futures.Executor, so asyncio's own
        # run_in_executor accepts it.
        async with await manager.acquire(owner="digest") as lease:
            loop = asyncio.get_running_loop()
            digest = await loop.run_in_executor(
                lease.executor, hashlib.sha256, b"leasepool"
            )
        print("sha256:", digest.hexdigest()[:16])

        stats = manager.stats()
        print(
            f"leases granted {stats['leases_granted']},"
            f" waited {stats['leases_waited']}, pools {stats['total']}"
        )


if __name__ == "__main__":
    asyncio.run(main())
