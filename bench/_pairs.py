"""Acquire/release pairs and the wake probe, for any manager-like object.

The object needs ``await acquire(owner=...)`` returning something with a
``lease_id`` and ``await release(lease_id)``: both leasepools have that, and
``anyio.CapacityLimiter`` gets it from a small adapter in ``_anchors``.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

from _harness import NotAvailableError, run_callers, split
from _wakes import counted

Params = dict[str, Any]
Result = dict[str, Any]


async def settle(runtime: str, counts: list[int]) -> None:
    """Wait until every other task is blocked again.

    anyio's ``wait_all_tasks_blocked`` is exact; the predecessor's environment
    has no anyio, so there the loop spins until the wake counters stay still
    for a while, which suffices for a scheduler that wakes by callbacks.
    """
    try:
        import anyio
    except ImportError:
        anyio = None  # type: ignore[assignment]  # predecessor venv: no anyio
    if anyio is not None:
        await anyio.wait_all_tasks_blocked()
        return
    if runtime != "asyncio":
        raise NotAvailableError("settling without anyio needs asyncio")
    for _ in range(3):
        quiet = 0
        last = sum(counts)
        while quiet < 50:
            await asyncio.sleep(0)
            now = sum(counts)
            quiet = quiet + 1 if now == last else 0
            last = now
        await asyncio.sleep(0.002)


async def probe_wakes(
    runtime: str, manager: Any, waiters: int, releases: int
) -> dict[str, float]:
    """Count how many blocked waiters each single ``release()`` resumes.

    Every waiter wraps its ``acquire()`` in a resumption counter, then holds
    the lease it got until told to give it back, so that exactly one release
    happens between two settled states.
    """
    counts = [0] * waiters
    may_release = [_event(runtime) for _ in range(waiters)]
    holders: list[int] = []
    woken: list[int] = []
    resumed: list[int] = []

    async def waiter(index: int) -> None:
        lease = await counted(manager.acquire(owner=f"w{index}"), counts, index)
        holders.append(index)
        await may_release[index].wait()
        await manager.release(lease.lease_id)

    first = await manager.acquire(owner="probe")

    async def driver() -> None:
        await settle(runtime, counts)
        for step in range(min(releases, waiters)):
            before = list(counts)
            if step == 0:
                await manager.release(first.lease_id)
            else:
                may_release[holders[-1]].set()
            await settle(runtime, counts)
            diffs = [now - then for now, then in zip(counts, before, strict=True)]
            woken.append(sum(1 for diff in diffs if diff))
            resumed.append(sum(diffs))
        for event in may_release:
            event.set()

    async def body(index: int) -> None:
        if index == waiters:
            await driver()
        else:
            await waiter(index)

    await run_callers(runtime, waiters + 1, body)
    return {
        "wakes_mean": sum(woken) / len(woken),
        "wakes_max": float(max(woken)),
        "wakes_min": float(min(woken)),
        "resumes_per_release": sum(resumed) / len(resumed),
    }


def _event(runtime: str) -> Any:
    if runtime == "asyncio":
        return asyncio.Event()
    import trio

    return trio.Event()


async def acquire_rounds(runtime: str, manager: Any, p: Params) -> Result:
    tasks = max(1, p["waiters"])
    order: list[int] = []
    counts = [0] * tasks

    async def one_round(total: int, observe: bool) -> float:
        shares = split(total, tasks)
        started = [0.0]

        async def pairs(index: int) -> None:
            for _ in range(shares[index]):
                if observe:
                    lease = await counted(manager.acquire(), counts, index)
                    order.append(index)
                else:
                    lease = await manager.acquire()
                await manager.release(lease.lease_id)

        if not p["waiters"]:
            started[0] = time.perf_counter()
            await pairs(0)
            return time.perf_counter() - started[0]
        holder = await manager.acquire(owner="holder")

        async def body(index: int) -> None:
            if index < tasks:
                await pairs(index)
                return
            await settle(runtime, counts)
            started[0] = time.perf_counter()
            await manager.release(holder.lease_id)

        await run_callers(runtime, tasks + 1, body)
        return time.perf_counter() - started[0]

    # The untimed warm-up round doubles as the observed round: it counts how
    # often waiters are resumed and who gets each lease, which the timed round
    # must not pay for.
    await one_round(p["pairs"] // 10, bool(p["waiters"]))
    result: Result = {"seconds": await one_round(p["pairs"], False), "ops": p["pairs"]}
    if p["waiters"] and order:
        handoffs = sum(1 for a, b in itertools.pairwise(order) if a != b)
        result["flow_resumes_per_pair"] = sum(counts) / len(order)
        result["flow_handoff_share"] = handoffs / max(1, len(order) - 1)
    return result
