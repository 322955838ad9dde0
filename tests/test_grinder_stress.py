"""WorkGrinder under random load, cancellations and stops: it never wedges.

Each scenario draws its settings and its callers' behaviour from a seeded
random generator, so a failure names a seed that reproduces it.
"""

from __future__ import annotations

import concurrent.futures as cf
import random
import time

import anyio
import anyio.to_thread
import pytest

from _helpers import PATIENCE, unique_prefix
from _leakcheck import snapshot, wait_no_leaks
from leasepool import LeasedExecutorManager, LeasePoolError, WorkGrinder

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]


def job(kind: int, value: int) -> int:
    if kind == 1:
        time.sleep(0.0005 * (value % 4))
    elif kind == 2:
        raise ValueError(value)
    return value


async def one_scenario(seed: int) -> dict[str, int]:
    rng = random.Random(seed)
    pools = rng.randint(1, 3)
    manager = LeasedExecutorManager(
        max_pools=pools,
        workers_per_pool=rng.randint(1, 4),
        lease_grace_seconds=rng.choice([0, 0.05]),
        name_prefix=unique_prefix(),
    )
    grinder = WorkGrinder(
        executor_manager=manager,
        batch_size_threshold=rng.randint(1, 30),
        max_wait_seconds=rng.choice([0.001, 0.01, 0.05]),
        lease_seconds=rng.choice([0.05, 0.2, 5.0]),
        max_concurrent_batches=rng.randint(1, pools + 1),
        max_pending=rng.choice([None, 1, 5, 50]),
    )
    seen = {"done": 0, "failed": 0, "cancelled": 0, "refused": 0}

    async def caller() -> None:
        for index in range(rng.randint(1, 20)):
            kind = rng.randint(0, 2)
            try:
                with anyio.move_on_after(rng.choice([0.0005, 0.01, 1.0])):
                    if rng.random() < 0.3:
                        handle = await grinder.enqueue(job, kind, index)
                        if rng.random() < 0.3:
                            handle.cancel()
                        await handle
                    else:
                        await grinder.submit(job, kind, index, wait=rng.random() < 0.8)
                    seen["done"] += 1
            except ValueError:
                seen["failed"] += 1
            except cf.CancelledError:
                seen["cancelled"] += 1
            except LeasePoolError:
                seen["refused"] += 1  # full, stopped, or its lease revoked

    def thread_caller() -> None:
        futures = []
        for index in range(30):
            try:
                futures.append(grinder.submit_from_thread(job, 0, index))
            except LeasePoolError:
                break  # stopped
        cf.wait(futures, timeout=PATIENCE)
        assert all(f.done() for f in futures)

    async with manager:
        await grinder.start()
        async with anyio.create_task_group() as tg:
            for _ in range(rng.randint(1, 40)):
                tg.start_soon(caller)
            tg.start_soon(anyio.to_thread.run_sync, thread_caller)
            await anyio.sleep(rng.choice([0.0, 0.01, 0.05]))
            with anyio.fail_after(PATIENCE):
                await grinder.stop(cancel_pending=rng.random() < 0.5)
        stats = grinder.stats()
        assert (stats["started"], stats["pending"], stats["in_flight"]) == (False, 0, 0)
    return seen


async def test_grinder_stress_random_scenarios_never_wedge() -> None:
    before = snapshot()
    totals: dict[str, int] = {}
    for seed in range(30):
        try:
            seen = await one_scenario(seed)
        except BaseException as exc:
            exc.add_note(f"grinder stress scenario seed={seed}")
            raise
        for key, count in seen.items():
            totals[key] = totals.get(key, 0) + count
    assert totals["done"] > 0
    await wait_no_leaks(before)
