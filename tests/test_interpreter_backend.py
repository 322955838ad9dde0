"""The interpreter backend: Python 3.14's InterpreterPoolExecutor under leases.

Jobs are module-level functions: each subinterpreter imports this module to
find them. Subinterpreters cannot be stopped from outside, so a revoked pool is
quarantined until its running job returns, as thread pools are.
"""

from __future__ import annotations

import concurrent.futures as cf
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from _helpers import PATIENCE, unique_prefix, wait_until
from _leakcheck import snapshot, wait_no_leaks
from leasepool import (
    ExecutorBackend,
    LeasedExecutorManager,
    LeaseExpiredError,
    LeaseUnavailableError,
    UnsupportedBackendError,
)
from leasepool._backends import InterpreterBackend

pytestmark = pytest.mark.timeout(60)

needs_314 = pytest.mark.skipif(
    sys.version_info < (3, 14), reason="InterpreterPoolExecutor is new in 3.14"
)


# -- jobs (run in subinterpreters) ----------------------------------------------
# Python 3.14 copies a function that uses no module globals into the
# subinterpreter; any other is imported there by module name, and the tests
# directory that pytest put on sys.path is not on a subinterpreter's path. So
# the jobs import what they use themselves.


def sum_of_squares(n: int) -> int:
    return sum(i * i for i in range(n))


def raise_key_error(key: str) -> None:
    raise KeyError(key)


def wait_for_file(path: str, seconds: float) -> bool:
    """Block until ``path`` exists (the test's gate), at most ``seconds``."""
    import os
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if os.path.exists(path):
            return True
        time.sleep(0.005)
    return False


def refuse_if_exists(path: str) -> None:
    import os

    if os.path.exists(path):
        raise RuntimeError("this interpreter's initializer refuses to run")


# -- helpers -------------------------------------------------------------------


@asynccontextmanager
async def interpreter_manager(**kwargs: Any) -> AsyncIterator[LeasedExecutorManager]:
    kwargs.setdefault("max_pools", 1)
    kwargs.setdefault("workers_per_pool", 1)
    kwargs.setdefault("name_prefix", unique_prefix())
    before = snapshot()
    async with LeasedExecutorManager(backend="interpreter", **kwargs) as manager:
        yield manager
    await wait_no_leaks(before)


# -- tests ---------------------------------------------------------------------


@pytest.mark.skipif(sys.version_info >= (3, 14), reason="3.14 has the executor")
@pytest.mark.parametrize("backend", ["interpreter", "INTERPRETER"])
def test_interpreter_backend_below_314_names_the_python_it_needs(
    backend: str,
) -> None:
    with pytest.raises(UnsupportedBackendError, match=r"Python 3\.14"):
        LeasedExecutorManager(backend=backend, max_pools=1)
    with pytest.raises(UnsupportedBackendError, match=r"Python 3\.14"):
        InterpreterBackend()


@needs_314
def test_interpreter_backend_is_selected_by_one_word() -> None:
    manager = LeasedExecutorManager(backend="interpreter", max_pools=1)
    assert manager.backend is ExecutorBackend.INTERPRETER


@needs_314
@pytest.mark.anyio
async def test_interpreter_backend_runs_cpu_bound_jobs_in_parallel() -> None:
    async with interpreter_manager(max_pools=2, workers_per_pool=2) as manager:
        results: list[int] = []

        async def crunch() -> None:
            async with await manager.acquire() as lease:
                results.append(await lease.run(sum_of_squares, 200_000))
                results.append(await lease.run(sum_of_squares, 1_000))

        async with anyio.create_task_group() as tg:
            tg.start_soon(crunch)
            tg.start_soon(crunch)
        expected = [sum_of_squares(200_000), sum_of_squares(1_000)]
        assert sorted(results) == sorted(expected * 2)


@needs_314
@pytest.mark.anyio
async def test_interpreter_job_exception_keeps_its_type() -> None:
    async with interpreter_manager() as manager, await manager.acquire() as lease:
        with pytest.raises(KeyError, match="missing"):
            await lease.run(raise_key_error, "missing")
        assert await lease.run(sum_of_squares, 4) == 14


@needs_314
@pytest.mark.anyio
async def test_interpreter_revoked_pool_is_quarantined_until_its_job_ends(
    tmp_path: Path,
) -> None:
    gate = tmp_path / "gate"
    async with interpreter_manager(
        default_lease_seconds=0.3, lease_grace_seconds=0
    ) as manager:
        lease = await manager.acquire(owner="runaway")
        outcome: list[object] = []

        async def run_gated() -> None:
            outcome.append(await lease.run(wait_for_file, str(gate), PATIENCE * 2))

        async with anyio.create_task_group() as tg:
            tg.start_soon(run_gated)
            await wait_until(lambda: not lease.active)
            with pytest.raises(LeaseExpiredError):
                await lease.run(sum_of_squares, 3)
            stats = manager.stats()
            assert stats["quarantined"] == 1
            assert stats["quarantined_jobs"] == 1
            assert manager.total_count == 1
            # The slot stays taken while the job runs: capacity is honest.
            with pytest.raises(LeaseUnavailableError):
                await manager.acquire(wait=False)
            gate.touch()
        assert outcome == [True]
        with anyio.fail_after(PATIENCE):
            async with await manager.acquire(lease_seconds=PATIENCE) as fresh:
                assert await fresh.run(sum_of_squares, 3) == 5
        assert manager.stats()["leases_revoked"] == 1


@needs_314
@pytest.mark.anyio
async def test_interpreter_released_lease_drains_before_its_pool_is_reused(
    tmp_path: Path,
) -> None:
    gate = tmp_path / "gate"
    async with interpreter_manager() as manager:
        lease = await manager.acquire()
        job = lease.executor.submit(wait_for_file, str(gate), PATIENCE * 2)
        await lease.release()
        with pytest.raises(LeaseUnavailableError):
            await manager.acquire(wait=False)
        gate.touch()
        with anyio.fail_after(PATIENCE):
            async with await manager.acquire() as again:
                assert job.result() is True
                assert await again.run(sum_of_squares, 2) == 1


@needs_314
@pytest.mark.anyio
async def test_interpreter_broken_pool_is_retired_and_replaced(
    tmp_path: Path,
) -> None:
    refuse = tmp_path / "refuse"
    refuse.touch()
    async with interpreter_manager(
        initializer=refuse_if_exists, initargs=(str(refuse),)
    ) as manager:
        async with await manager.acquire() as lease:
            with pytest.raises(cf.BrokenExecutor):
                await lease.run(sum_of_squares, 3)
        refuse.unlink()
        await wait_until(lambda: manager.stats()["pools_retired"] >= 1)
        async with await manager.acquire() as lease:
            assert await lease.run(sum_of_squares, 3) == 5
