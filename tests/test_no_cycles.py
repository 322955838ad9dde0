"""The hot paths leave no reference cycles behind.

Garbage in cycles waits for the cyclic collector, whose passes cost time in
proportion to what is alive; a cycle per job once made process jobs a third
slower. A failing job must not tie its error, its future and its pool into a
cycle either: that kept a retired pool's pipes open until the next collection.

Each check runs a path with the collector off and then asks which objects of
leasepool's own, futures or exceptions only a collection could free. Other
libraries' garbage is not counted: it is not ours to fix.
"""

from __future__ import annotations

import concurrent.futures as cf
import gc
import multiprocessing
import types
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import anyio
import pytest

from _helpers import unique_prefix
from leasepool import LeasedExecutorManager

pytestmark = pytest.mark.timeout(60)

ROUNDS = 40


def ok() -> int:
    return 1


def boom() -> None:
    raise ValueError("boom")


def _ours(obj: object) -> bool:
    if isinstance(obj, types.FrameType):
        return "leasepool" in obj.f_code.co_filename
    return type(obj).__module__.startswith("leasepool") or isinstance(
        obj, cf.Future | BaseException
    )


@contextmanager
def no_cyclic_garbage() -> Iterator[None]:
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        yield
        gc.collect()
        found = [obj for obj in gc.garbage if _ours(obj)]
        described = sorted({type(obj).__qualname__ for obj in found})
        del found
        assert not described, f"left in reference cycles: {described}"
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        if was_enabled:
            gc.enable()


@asynccontextmanager
async def manager_for(kind: str) -> AsyncIterator[LeasedExecutorManager]:
    extra: dict[str, Any] = {}
    if kind == "process":
        extra = {
            "backend": "process",
            "mp_context": multiprocessing.get_context("forkserver"),
        }
    async with LeasedExecutorManager(
        max_pools=1, workers_per_pool=1, name_prefix=unique_prefix(), **extra
    ) as manager:
        yield manager


async def repeat(call: Callable[[], Awaitable[object]]) -> None:
    for _ in range(3):  # warm-up: first-use caches are not garbage
        await call()
    with no_cyclic_garbage():
        for _ in range(ROUNDS):
            await call()


@pytest.mark.anyio
async def test_acquire_and_release_make_no_cycles() -> None:
    async with manager_for("thread") as manager:

        async def pair() -> None:
            lease = await manager.acquire()
            await manager.release(lease.lease_id)

        await repeat(pair)


@pytest.mark.anyio
async def test_contended_hand_off_makes_no_cycles() -> None:
    async with manager_for("thread") as manager:

        async def hand_off() -> None:
            holder = await manager.acquire()

            async def wait_and_release() -> None:
                lease = await manager.acquire()
                await lease.release()

            async with anyio.create_task_group() as tg:
                for _ in range(3):
                    tg.start_soon(wait_and_release)
                await anyio.wait_all_tasks_blocked()
                await holder.release()

        await repeat(hand_off)


@pytest.mark.anyio
@pytest.mark.parametrize("kind", ["thread", "process"])
async def test_lease_run_makes_no_cycles(kind: str) -> None:
    async with manager_for(kind) as manager, manager.lease() as lease:

        async def succeed() -> None:
            assert await lease.run(ok) == 1

        async def fail() -> None:
            with pytest.raises(ValueError, match="boom"):
                await lease.run(boom)

        await repeat(succeed)
        await repeat(fail)


@pytest.mark.anyio
@pytest.mark.parametrize("kind", ["thread", "process"])
async def test_lease_executor_futures_make_no_cycles(kind: str) -> None:
    async with manager_for(kind) as manager, manager.lease() as lease:
        executor = lease.executor

        async def succeed() -> None:
            fut = executor.submit(ok)
            assert await anyio.to_thread.run_sync(fut.result) == 1

        async def fail() -> None:
            # Asked for, not raised: a raise here would put this frame, which
            # holds the future that holds the error, in the error's traceback,
            # a cycle of the test's own making.
            fut = executor.submit(boom)
            error = await anyio.to_thread.run_sync(fut.exception)
            assert isinstance(error, ValueError)
            assert str(error) == "boom"

        await repeat(succeed)
        await repeat(fail)
