"""WorkGrinder on process pools and interpreter pools.

On process pools calls travel in chunks, one message per chunk, and come back
with an outcome each; on interpreter pools each call is one job. Both kinds of
pool are slow to start, so this file keeps to a few tests that each check
several things on one pool.
"""

from __future__ import annotations

import os
import sys
import threading
from typing import Any

import anyio
import pytest

from _helpers import PATIENCE, unique_prefix
from leasepool import GrinderHandle, LeasedExecutorManager, WorkGrinder

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]


def pid_and_runner(value: int) -> tuple[int, str, int]:
    """Return the worker's pid, the function that called us, and ``value``."""
    return os.getpid(), sys._getframe(1).f_code.co_name, value


def explode(value: int) -> None:
    raise KeyError(value)


def unpicklable_result() -> Any:
    return threading.Lock()


class NeedsTwoArgsError(Exception):
    """Pickles fine, but cannot be unpickled: its __init__ needs two arguments."""

    def __init__(self, first: str, second: str) -> None:
        super().__init__(f"{first} {second}")


def raise_unrebuildable() -> None:
    raise NeedsTwoArgsError("one", "two")


def echo(value: Any) -> Any:
    return value


async def test_grinder_process_chunks_with_mixed_outcomes() -> None:
    manager = LeasedExecutorManager(
        backend="process",
        max_pools=1,
        workers_per_pool=2,
        name_prefix=unique_prefix(),
    )
    # 12 calls on 2 workers: 4 chunks of 3 calls, one message each.
    grinder = WorkGrinder(
        executor_manager=manager, batch_size_threshold=12, max_wait_seconds=3600
    )
    async with manager, grinder:
        handles: list[GrinderHandle[Any]] = [
            await grinder.enqueue(pid_and_runner, i) for i in range(6)
        ]
        handles.append(await grinder.enqueue(explode, 6))
        handles.append(await grinder.enqueue(unpicklable_result))
        handles.append(await grinder.enqueue(echo, threading.Lock()))  # no pickle
        handles.append(await grinder.enqueue(raise_unrebuildable))
        handles.append(await grinder.enqueue(echo, "eleven"))
        handles.append(await grinder.enqueue(echo, 12))
        with anyio.fail_after(PATIENCE * 6):
            outcomes = [await _outcome(h) for h in handles]
        stats = grinder.stats()

    runs = outcomes[:6]
    assert [value for _, _, value in runs] == list(range(6))
    # Each ran inside the chunk runner, and the calls of one chunk in one
    # worker process, one after the other.
    assert {runner for _, runner, _ in runs} == {"_run_chunk"}
    assert runs[0][0] == runs[1][0] == runs[2][0]
    assert runs[3][0] == runs[4][0] == runs[5][0]
    assert all(pid != os.getpid() for pid, _, _ in runs)

    assert isinstance(outcomes[6], KeyError)
    assert any("traceback in the worker" in n for n in outcomes[6].__notes__)
    assert isinstance(outcomes[7], TypeError)  # the lock result
    assert any("could not be pickled" in n for n in outcomes[7].__notes__)
    assert isinstance(outcomes[8], TypeError)  # the lock argument
    assert any("could not be pickled" in n for n in outcomes[8].__notes__)
    assert isinstance(outcomes[9], TypeError)  # NeedsTwoArgsError, unrebuilt
    assert any("could not be unpickled" in n for n in outcomes[9].__notes__)
    assert outcomes[10:] == ["eleven", 12]
    assert (stats["completed"], stats["failed"], stats["batches"]) == (8, 4, 1)


async def _outcome(handle: Any) -> Any:
    try:
        return await handle
    except Exception as exc:
        return exc


needs_314 = pytest.mark.skipif(
    sys.version_info < (3, 14), reason="InterpreterPoolExecutor is new in 3.14"
)


def cube(value: int) -> int:
    # No module globals: Python 3.14 copies such a function into each
    # subinterpreter, where this test module is not importable.
    return value * value * value


def raise_value_error(value: int) -> None:
    raise ValueError(value)


@needs_314
async def test_grinder_interpreter_runs_calls_one_job_each() -> None:
    manager = LeasedExecutorManager(
        backend="interpreter",
        max_pools=1,
        workers_per_pool=2,
        name_prefix=unique_prefix(),
    )
    grinder = WorkGrinder(
        executor_manager=manager, batch_size_threshold=6, max_wait_seconds=3600
    )
    async with manager, grinder:
        handles: list[GrinderHandle[Any]] = [
            await grinder.enqueue(cube, i) for i in range(4)
        ]
        handles.append(await grinder.enqueue(raise_value_error, 4))
        handles.append(await grinder.enqueue(echo, threading.Lock()))  # no pickle
        with anyio.fail_after(PATIENCE * 6):
            outcomes = [await _outcome(h) for h in handles]
    assert outcomes[:4] == [0, 1, 8, 27]
    assert isinstance(outcomes[4], ValueError)
    assert isinstance(outcomes[5], Exception)
    assert grinder.stats()["batches"] == 1


async def test_grinder_process_submit_and_stop() -> None:
    manager = LeasedExecutorManager(
        backend="process", max_pools=1, workers_per_pool=1, name_prefix=unique_prefix()
    )
    grinder = WorkGrinder(
        executor_manager=manager, batch_size_threshold=50, max_wait_seconds=0.02
    )
    async with manager, grinder:
        with anyio.fail_after(PATIENCE * 6):
            assert await grinder.submit(divmod, 17, 5) == (3, 2)
            with pytest.raises(KeyError):
                await grinder.submit(explode, 1)
            handles = [await grinder.enqueue(echo, i) for i in range(20)]
            await grinder.stop()
        assert [h.result() for h in handles] == list(range(20))
