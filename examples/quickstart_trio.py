"""Quickstart: leasepool in a plain trio program.

The same manager as in the asyncio quickstart, driven by trio: a nursery of
callers shares two leased thread pools, and trio's own cancel scopes bound how
long a caller waits for one.
"""

from __future__ import annotations

import time

import trio

from leasepool import LeasedExecutorManager, LeaseUnavailableError


def blocking_lookup(key: str) -> str:
    """Stand in for a blocking SDK or database call."""
    time.sleep(0.05)
    return key.upper()


async def handle(manager: LeasedExecutorManager, key: str, results: list[str]) -> None:
    async with await manager.acquire(owner=f"request-{key}", lease_seconds=10) as lease:
        results.append(await lease.run(blocking_lookup, key))


async def main() -> None:
    async with LeasedExecutorManager(max_pools=2, workers_per_pool=4) as manager:
        # Five callers, two pools: three of them wait their turn, in order.
        results: list[str] = []
        async with trio.open_nursery() as nursery:
            for key in "abcde":
                nursery.start_soon(handle, manager, key, results)
        print("results:", sorted(results))

        async with (
            await manager.acquire(owner="holder-1"),
            await manager.acquire(owner="holder-2"),
        ):
            # Both pools are leased now. Refuse to wait ...
            try:
                await manager.acquire(wait=False)
            except LeaseUnavailableError as exc:
                print("wait=False:", exc)
            # ... or wait no longer than an enclosing trio deadline allows.
            with trio.move_on_after(0.1) as scope:
                await manager.acquire()
            print("gave up waiting after 0.1 s:", scope.cancelled_caught)

        stats = manager.stats()
        print(
            f"leases granted {stats['leases_granted']},"
            f" waited {stats['leases_waited']}, pools {stats['total']}"
        )


if __name__ == "__main__":
    trio.run(main)
