"""The leasing contenders: this project's leasepool and its predecessor 0.1.3.

Both expose the same calls for what is measured here (``start``/``stop``,
``acquire``/``release``, ``lease.run``, ``WorkGrinder.submit``), so one set of
functions serves both; which package ``import leasepool`` finds depends on the
virtual environment the worker process runs in. The explicit ``start()`` /
``stop()`` form is used because the predecessor has no ``async with``; the
timed parts never include starting or stopping.
"""

from __future__ import annotations

import importlib
import multiprocessing
from typing import Any

from _harness import NotAvailableError, run, time_calls
from _jobs import expected_checksum, noop, small_cpu_job
from _pairs import acquire_rounds, probe_wakes

Params = dict[str, Any]
Result = dict[str, Any]


def _lib() -> Any:
    try:
        return importlib.import_module("leasepool")
    except ImportError as exc:
        raise NotAvailableError(f"leasepool cannot be imported: {exc}") from None


def _manager(lib: Any, **kwargs: Any) -> Any:
    if not hasattr(lib, "LeasedExecutorManager"):
        raise NotAvailableError("leasepool has no LeasedExecutorManager yet")
    return lib.LeasedExecutorManager(**kwargs)


def call(runtime: str, p: Params) -> Result:
    """``await lease.run(noop)`` from ``callers`` tasks on one leased pool."""
    lib = _lib()

    async def main() -> float:
        manager = _manager(lib, max_pools=1, workers_per_pool=p["workers"])
        await manager.start()
        try:
            lease = await manager.acquire(owner="bench")
            try:

                async def call_once() -> None:
                    await lease.run(noop)

                return await time_calls(
                    runtime, p["callers"], p["calls"], p["warmup"], call_once
                )
            finally:
                await manager.release(lease.lease_id)
        finally:
            await manager.stop()

    return {"seconds": run(runtime, main), "ops": p["calls"]}


def acquire(runtime: str, p: Params) -> Result:
    """``acquire()`` + ``release()`` pairs on ``max_pools=1``.

    With ``waiters == 0`` one task makes all the pairs. Otherwise ``waiters``
    tasks share them: a holder takes the only pool first, every task queues
    behind it, and the clock starts when all of them are blocked in
    ``acquire()`` and the holder lets go. Each task re-queues right after its
    release; whether it gets to the back of the queue or takes the pool again
    at once depends on the manager's fairness (reported as the handoff share).
    The wake probe then runs on the same manager.
    """
    lib = _lib()

    async def main() -> Result:
        manager = _manager(lib, max_pools=1, min_pools=1, workers_per_pool=1)
        await manager.start()
        try:
            result = await acquire_rounds(runtime, manager, p)
            if p["waiters"] and p.get("probe_releases"):
                result |= await probe_wakes(
                    runtime, manager, p["waiters"], p["probe_releases"]
                )
            return result
        finally:
            await manager.stop()

    return run(runtime, main)


def grinder(runtime: str, p: Params) -> Result:
    """``jobs`` no-op ``grinder.submit`` calls made by ``tasks`` tasks."""
    lib = _lib()
    if not hasattr(lib, "WorkGrinder"):
        raise NotAvailableError("leasepool has no WorkGrinder yet")
    options: dict[str, Any] = {}
    if p.get("max_concurrent_batches"):
        options["max_concurrent_batches"] = p["max_concurrent_batches"]

    async def main() -> float:
        pools = p["pools"]
        manager = _manager(
            lib, max_pools=pools, min_pools=pools, workers_per_pool=p["workers"]
        )
        try:
            work_grinder = lib.WorkGrinder(
                executor_manager=manager,
                max_wait_seconds=p["max_wait_seconds"],
                batch_size_threshold=p["threshold"],
                **options,
            )
        except TypeError as exc:
            raise NotAvailableError(f"WorkGrinder rejects {options}: {exc}") from None
        await manager.start()
        try:
            await work_grinder.start()
            try:

                async def call_once() -> None:
                    await work_grinder.submit(noop)

                return await time_calls(runtime, p["tasks"], p["jobs"], 0, call_once)
            finally:
                await work_grinder.stop()
        finally:
            await manager.stop()

    return {"seconds": run(runtime, main), "ops": p["jobs"]}


def process(runtime: str, p: Params) -> Result:
    """Small CPU jobs through ``lease.run`` on the process backend."""
    checksum = expected_checksum(p["job_size"])
    lib = _lib()

    async def main() -> float:
        manager = _manager(
            lib,
            backend="process",
            max_pools=1,
            workers_per_pool=p["workers"],
            mp_context=multiprocessing.get_context(p["start_method"]),
        )
        await manager.start()
        try:
            lease = await manager.acquire(owner="bench")
            try:

                async def call_once() -> None:
                    if await lease.run(small_cpu_job, p["job_size"]) != checksum:
                        raise RuntimeError("small_cpu_job returned a wrong checksum")

                return await time_calls(
                    runtime, p["callers"], p["jobs"], p["warmup"], call_once
                )
            finally:
                await manager.release(lease.lease_id)
        finally:
            await manager.stop()

    return {"seconds": run(runtime, main), "ops": p["jobs"]}


def info() -> dict[str, Any]:
    """Describe the leasepool in this environment and what it offers."""
    import inspect

    try:
        lib = _lib()
    except NotAvailableError as exc:
        return {"available": False, "reason": str(exc)}
    from importlib import metadata

    try:
        version = metadata.version("leasepool")
    except metadata.PackageNotFoundError:
        version = getattr(lib, "__version__", "unknown")
    grinder_cls = getattr(lib, "WorkGrinder", None)
    grinder_params: list[str] = []
    if grinder_cls is not None:
        grinder_params = list(inspect.signature(grinder_cls).parameters)
    return {
        "available": hasattr(lib, "LeasedExecutorManager"),
        "reason": "" if hasattr(lib, "LeasedExecutorManager") else "no manager yet",
        "version": version,
        "path": str(getattr(lib, "__file__", "")),
        "grinder": grinder_cls is not None,
        "grinder_params": grinder_params,
    }


CONTENDERS = {
    "call": call,
    "acquire": acquire,
    "grinder": grinder,
    "process": process,
}
