"""Runtime plumbing shared by every contender: run a loop, spawn callers, time.

Every contender measures inside the runtime's own native runner
(``asyncio.run`` or ``trio.run``), the way an application would call it, so the
same harness serves the project, the anchors and the predecessor alike. trio is
imported lazily because the predecessor's environment does not have it.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")


class NotAvailableError(Exception):
    """What a scenario needs is missing from this environment."""


CallerBody = Callable[[int], Coroutine[Any, Any, None]]


def run(runtime: str, main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run ``main`` in a fresh event loop of the given runtime.

    A full garbage collection first keeps leftovers of the previous
    measurement from being collected inside this one.
    """
    gc.collect()
    if runtime == "asyncio":
        return asyncio.run(main())
    if runtime == "trio":
        import trio

        return trio.run(main)
    raise ValueError(f"unknown runtime {runtime!r}; expected 'asyncio' or 'trio'")


async def run_callers(runtime: str, count: int, body: CallerBody) -> None:
    """Run ``body(i)`` for ``i`` in ``range(count)`` concurrently; wait for all."""
    if runtime == "asyncio":
        async with asyncio.TaskGroup() as group:
            for index in range(count):
                group.create_task(body(index))
        return
    import trio

    async with trio.open_nursery() as nursery:
        for index in range(count):
            nursery.start_soon(body, index)


async def timed_callers(runtime: str, count: int, body: CallerBody) -> float:
    """Return the wall-clock seconds that ``run_callers`` takes."""
    started = time.perf_counter()
    await run_callers(runtime, count, body)
    return time.perf_counter() - started


async def checkpoint(runtime: str) -> None:
    """Yield once to the scheduler."""
    if runtime == "asyncio":
        await asyncio.sleep(0)
        return
    import trio

    await trio.lowlevel.checkpoint()


async def wait_concurrent_future(runtime: str, future: Future[T]) -> T:
    """Await a ``concurrent.futures.Future`` with the runtime's own bridge.

    This is the least a hand-written caller of a raw executor has to write, so
    it is what the raw-executor anchors use.
    """
    if runtime == "asyncio":
        return await asyncio.wrap_future(future)
    import trio

    token = trio.lowlevel.current_trio_token()
    done = trio.Event()
    future.add_done_callback(lambda _: token.run_sync_soon(done.set))
    await done.wait()
    return future.result()


def split(total: int, parts: int) -> list[int]:
    """Split ``total`` items into ``parts`` near-equal shares."""
    share, extra = divmod(total, parts)
    return [share + (1 if index < extra else 0) for index in range(parts)]


CallOnce = Callable[[], Coroutine[Any, Any, object]]


async def time_calls(
    runtime: str, callers: int, calls: int, warmup: int, call_once: CallOnce
) -> float:
    """Make ``calls`` awaited calls shared among ``callers`` tasks; time them.

    An untimed round of ``warmup`` calls comes first so that worker threads or
    processes already exist when the clock starts.
    """

    def body_for(shares: list[int]) -> CallerBody:
        async def body(index: int) -> None:
            for _ in range(shares[index]):
                await call_once()

        return body

    if warmup:
        await run_callers(runtime, callers, body_for(split(warmup, callers)))
    return await timed_callers(runtime, callers, body_for(split(calls, callers)))
