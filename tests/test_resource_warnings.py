"""ResourceWarning for a manager never stopped and a lease never released.

Each case runs a whole event loop (asyncio or trio) with ``anyio.run`` so that
the objects can be collected after it ends, the way a program that forgot its
``async with`` would drop them.
"""

from __future__ import annotations

import gc
import warnings
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import pytest

from _helpers import make_manager
from leasepool import ExecutorLease, LeasedExecutorManager

RUNTIMES = ["asyncio", "trio"]


def collect_warnings(
    runtime: str, body: Callable[[dict[str, Any]], Awaitable[None]]
) -> list[str]:
    """Run ``body`` in a fresh loop, drop what it kept, return the warnings.

    ``body`` leaves the objects it wants collected in the dict it is given;
    they are dropped and collected after the loop has ended.
    """
    kept: dict[str, Any] = {}

    async def main() -> None:
        await body(kept)

    anyio.run(main, backend=runtime)
    refs = [weakref.ref(obj) for obj in kept.values()]
    messages: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        kept.clear()
        for _ in range(3):
            gc.collect()
            messages += [
                str(warning.message)
                for warning in caught
                if issubclass(warning.category, ResourceWarning)
            ]
            # A recorded warning holds its source object, and through it
            # others (a lease its manager): let go, then collect again.
            caught.clear()
    assert all(ref() is None for ref in refs), "something kept them alive"
    return messages


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_manager_never_stopped_warns_at_collection(runtime: str) -> None:
    async def body(kept: dict[str, Any]) -> None:
        manager = make_manager()
        await manager.start()
        kept["manager"] = manager

    messages = collect_warnings(runtime, body)
    assert len(messages) == 1
    assert "LeasedExecutorManager" in messages[0]
    assert "never stopped" in messages[0]


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_lease_still_active_at_collection_warns(runtime: str) -> None:
    async def body(kept: dict[str, Any]) -> None:
        manager = make_manager()
        await manager.start()
        kept["manager"] = manager
        kept["lease"] = await manager.acquire(owner="forgetful")

    messages = collect_warnings(runtime, body)
    assert len(messages) == 2
    lease_messages = [text for text in messages if "ExecutorLease" in text]
    assert len(lease_messages) == 1
    assert "owner='forgetful'" in lease_messages[0]
    assert "never released" in lease_messages[0]


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_manager_stopped_and_leases_released_warn_nothing(runtime: str) -> None:
    async def body(kept: dict[str, Any]) -> None:
        manager = make_manager(max_pools=2)
        async with manager:
            async with await manager.acquire() as lease:
                assert await lease.run(sum, [1, 2]) == 3
            kept["lease"] = lease
            # Ended by stop(), not by its holder: the manager took it back,
            # so nothing is left to warn about.
            kept["ended_by_stop"] = await manager.acquire()
        kept["manager"] = manager
        kept["never_started"] = make_manager()

    assert collect_warnings(runtime, body) == []


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_manager_restarted_then_stopped_warns_nothing(runtime: str) -> None:
    async def body(kept: dict[str, Any]) -> None:
        manager = make_manager()
        for _ in range(2):
            await manager.start()
            lease: ExecutorLease = await manager.acquire()
            await lease.release()
            await manager.stop()
        kept["manager"] = manager

    assert collect_warnings(runtime, body) == []


def test_manager_refused_arguments_warn_nothing() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ValueError, match="max_pools"):
            LeasedExecutorManager(max_pools=0)
        gc.collect()
    assert [w for w in caught if issubclass(w.category, ResourceWarning)] == []
