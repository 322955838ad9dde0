"""The anchors: what a user would write without leasepool.

Each function takes the runtime name and the scenario's parameters and returns
a result dict with at least ``seconds`` (the timed part) and ``ops`` (how many
operations that time covers).
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any

from _harness import run, time_calls, wait_concurrent_future
from _jobs import expected_checksum, noop, small_cpu_job
from _pairs import acquire_rounds, probe_wakes

Params = dict[str, Any]
Result = dict[str, Any]


def call_raw_executor(runtime: str, p: Params) -> Result:
    """``loop.run_in_executor`` on a ThreadPoolExecutor of the same size."""
    if runtime != "asyncio":
        raise ValueError("run_in_executor is asyncio only")

    async def main() -> float:
        import asyncio

        loop = asyncio.get_running_loop()
        with ThreadPoolExecutor(max_workers=p["workers"]) as pool:

            async def call_once() -> None:
                await loop.run_in_executor(pool, noop)

            return await time_calls(
                runtime, p["callers"], p["calls"], p["warmup"], call_once
            )

    return {"seconds": run(runtime, main), "ops": p["calls"]}


def call_anyio_thread(runtime: str, p: Params) -> Result:
    """``anyio.to_thread.run_sync`` with a CapacityLimiter of the same size."""

    async def main() -> float:
        import anyio
        import anyio.to_thread

        limiter = anyio.CapacityLimiter(p["workers"])

        async def call_once() -> None:
            await anyio.to_thread.run_sync(noop, limiter=limiter)

        return await time_calls(
            runtime, p["callers"], p["calls"], p["warmup"], call_once
        )

    return {"seconds": run(runtime, main), "ops": p["calls"]}


def call_trio_thread(runtime: str, p: Params) -> Result:
    """``trio.to_thread.run_sync`` with a trio.CapacityLimiter of the same size."""
    if runtime != "trio":
        raise ValueError("trio.to_thread is trio only")

    async def main() -> float:
        import trio

        limiter = trio.CapacityLimiter(p["workers"])

        async def call_once() -> None:
            await trio.to_thread.run_sync(noop, limiter=limiter)

        return await time_calls(
            runtime, p["callers"], p["calls"], p["warmup"], call_once
        )

    return {"seconds": run(runtime, main), "ops": p["calls"]}


class _LimiterLeases:
    """Gives ``anyio.CapacityLimiter`` the manager's acquire/release shape.

    Each acquisition borrows on behalf of a fresh token, so that a lease may
    be released by another task than the one that took it, as leases can.
    """

    def __init__(self, total_tokens: int) -> None:
        import anyio

        self._limiter = anyio.CapacityLimiter(total_tokens)

    async def acquire(self, owner: str | None = None) -> _Token:
        token = _Token()
        await self._limiter.acquire_on_behalf_of(token)
        return token

    async def release(self, lease_id: object) -> None:
        self._limiter.release_on_behalf_of(lease_id)


class _Token:
    @property
    def lease_id(self) -> _Token:
        return self


def acquire_anyio_limiter(runtime: str, p: Params) -> Result:
    """Reference only: the same pairs on ``anyio.CapacityLimiter(1)``.

    Not an anchor of the issue; it shows what a bare fair token costs on the
    same runtime, a floor for the lease manager's own pairs, and how many
    waiters its release wakes.
    """

    async def main() -> Result:
        leases = _LimiterLeases(1)
        result = await acquire_rounds(runtime, leases, p)
        if p["waiters"] and p.get("probe_releases"):
            result |= await probe_wakes(
                runtime, leases, p["waiters"], p["probe_releases"]
            )
        return result

    return run(runtime, main)


def grinder_anyio_direct(runtime: str, p: Params) -> Result:
    """Every task calls ``anyio.to_thread.run_sync`` itself, default limiter."""

    async def main() -> float:
        import anyio.to_thread

        async def call_once() -> None:
            await anyio.to_thread.run_sync(noop)

        return await time_calls(runtime, p["tasks"], p["jobs"], 0, call_once)

    return {"seconds": run(runtime, main), "ops": p["jobs"]}


def process_raw_pool(runtime: str, p: Params) -> Result:
    """The same CPU jobs on a raw ProcessPoolExecutor of the same size."""
    checksum = expected_checksum(p["job_size"])

    async def main() -> float:
        context = multiprocessing.get_context(p["start_method"])
        with ProcessPoolExecutor(p["workers"], mp_context=context) as pool:

            async def call_once() -> None:
                future = pool.submit(small_cpu_job, p["job_size"])
                if await wait_concurrent_future(runtime, future) != checksum:
                    raise RuntimeError("small_cpu_job returned a wrong checksum")

            return await time_calls(
                runtime, p["callers"], p["jobs"], p["warmup"], call_once
            )

    return {"seconds": run(runtime, main), "ops": p["jobs"]}


CONTENDERS = {
    ("call", "raw_executor"): call_raw_executor,
    ("call", "anyio_thread"): call_anyio_thread,
    ("call", "trio_thread"): call_trio_thread,
    ("acquire", "anyio_limiter"): acquire_anyio_limiter,
    ("grinder", "anyio_direct"): grinder_anyio_direct,
    ("process", "raw_pool"): process_raw_pool,
}
