"""WorkGrinder in a plain trio program.

A hundred tasks each make a hundred small blocking calls. Instead of leasing a
pool (or borrowing a thread) per call, the grinder collects them and runs them
in batches, one lease per batch, two batches at a time on two pools.
"""

from __future__ import annotations

import contextvars
import hashlib
import time

import trio

from leasepool import LeasedExecutorManager, WorkGrinder

tenant: contextvars.ContextVar[str] = contextvars.ContextVar("tenant", default="-")


def fingerprint(record: int) -> str:
    """Stand in for a small blocking call: hash a record for its tenant."""
    data = f"{tenant.get()}:{record}".encode() * 64
    return f"{tenant.get()}/{hashlib.sha256(data).hexdigest()[:12]}"


async def client(grinder: WorkGrinder, number: int, counts: list[int]) -> None:
    tenant.set(f"tenant-{number}")  # each call sees its own submitter's tenant
    prints = [await grinder.submit(fingerprint, record) for record in range(100)]
    counts.append(sum(p.startswith(f"tenant-{number}/") for p in prints))


async def main() -> None:
    manager = LeasedExecutorManager(max_pools=2, workers_per_pool=4)
    grinder = WorkGrinder(
        executor_manager=manager,
        batch_size_threshold=100,  # a batch starts at 100 queued calls,
        max_wait_seconds=0.02,  # or when the oldest has waited 20 ms
        max_concurrent_batches=2,  # one lease (one pool) per running batch
        max_pending=2_000,  # beyond that, submitters wait their turn
        owner_prefix="fingerprints",
    )
    async with manager, grinder:
        started = time.perf_counter()
        counts: list[int] = []
        async with trio.open_nursery() as nursery:
            for number in range(100):
                nursery.start_soon(client, grinder, number, counts)
        elapsed = time.perf_counter() - started
        print(f"{sum(counts):,} of 10,000 calls ran in their submitter's context")

        # A handle now, the result later.
        handle = await grinder.enqueue(fingerprint, 7, owner="audit")
        print("audit:", await handle)

        # Plain threads (a legacy callback, say) hand work in too.
        def legacy_caller() -> str:
            return grinder.submit_from_thread(fingerprint, 8).result(timeout=5)

        print("from a thread:", await trio.to_thread.run_sync(legacy_caller))

        stats = grinder.stats()
        print(
            f"{stats['completed']:,} calls in {stats['batches']} batches,"
            f" {elapsed:.2f} s for the first 10,000"
        )


if __name__ == "__main__":
    trio.run(main)
