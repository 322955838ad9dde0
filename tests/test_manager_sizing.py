"""Adaptive sizing: the size signal grows and shrinks idle pools, never leases."""

from __future__ import annotations

import logging
import math
import threading
from typing import Any

import anyio
import pytest

from _helpers import make_manager, unique_prefix, wait_until, worker_threads

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(20)]


class Load:
    """A size signal a test can move; reads are counted."""

    def __init__(self, value: Any = 0) -> None:
        self.value = value
        self.reads = 0

    def __call__(self) -> Any:
        self.reads += 1
        if isinstance(self.value, BaseException):
            raise self.value
        return self.value


def notify_from_thread(manager: Any) -> None:
    thread = threading.Thread(target=manager.notify_scale_changed)
    thread.start()
    thread.join()


async def test_manager_sizing_grows_and_shrinks_on_notify() -> None:
    load = Load(0)
    prefix = unique_prefix()
    manager = make_manager(
        max_pools=4,
        min_pools=1,
        units_per_pool=10,
        size_provider=load,
        check_interval=3600,
        name_prefix=prefix,
    )
    async with manager:
        assert manager.total_count == 1
        assert manager.desired_executor_count() == 1
        load.value = 25  # ceil(25 / 10) = 3
        notify_from_thread(manager)
        await wait_until(lambda: manager.total_count == 3)
        assert manager.available_count == 3
        assert manager.stats()["desired"] == 3
        load.value = 1000  # capped by max_pools
        notify_from_thread(manager)
        await wait_until(lambda: manager.total_count == 4)
        held = [await manager.acquire() for _ in range(2)]
        load.value = 0
        notify_from_thread(manager)
        # Idle pools above the target go; leased ones are never revoked.
        await wait_until(lambda: manager.total_count == 2)
        assert all(lease.active for lease in held)
        assert manager.leased_count == 2
        for lease in held:
            await lease.release()
        notify_from_thread(manager)
        await wait_until(lambda: manager.total_count == 1)
        await wait_until(lambda: len(worker_threads(prefix)) <= 1)


async def test_manager_sizing_notify_from_loop_thread() -> None:
    load = Load(0)
    manager = make_manager(max_pools=3, size_provider=load, check_interval=3600)
    async with manager:
        load.value = 30
        manager.notify_scale_changed()
        await wait_until(lambda: manager.total_count == 3)


async def test_manager_sizing_reads_signal_every_check_interval() -> None:
    load = Load(0)
    manager = make_manager(max_pools=3, size_provider=load, check_interval=0.05)
    async with manager:
        reads = load.reads
        load.value = 30  # no notify: the periodic check must see it
        await wait_until(lambda: manager.total_count == 3)
        await wait_until(lambda: load.reads >= reads + 3)


async def test_manager_sizing_min_pools_kept_without_provider() -> None:
    manager = make_manager(max_pools=5, min_pools=3)
    async with manager:
        assert manager.desired_executor_count() == 3
        assert manager.total_count == 3


async def test_manager_sizing_grows_only_to_free_slots() -> None:
    load = Load(0)
    manager = make_manager(max_pools=2, size_provider=load, check_interval=3600)
    async with manager:
        held = [await manager.acquire() for _ in range(2)]
        load.value = 100
        notify_from_thread(manager)
        await anyio.sleep(0.05)
        assert manager.total_count == 2
        assert all(lease.active for lease in held)


async def test_manager_sizing_raising_provider_is_logged_as_zero(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="leasepool")
    load = Load(30)
    manager = make_manager(
        max_pools=3, min_pools=1, size_provider=load, check_interval=3600
    )
    async with manager:
        assert manager.total_count == 3
        load.value = RuntimeError("signal source is down")
        notify_from_thread(manager)
        await wait_until(lambda: manager.total_count == 1)
        assert manager.desired_executor_count() == 1
        failures = [
            r for r in caplog.records if r.getMessage().startswith("size_provider.")
        ]
        assert failures
        assert failures[0].exc_info is not None
        assert manager.started
        async with await manager.acquire() as lease:
            assert await lease.run(int, "4") == 4


async def _never_awaited() -> int:
    return 5


@pytest.mark.parametrize(
    "value",
    [
        None,
        "25",
        math.nan,
        math.inf,
        -math.inf,
        -3,
        True,
        object(),
        [30],
        10**400,
        1e308,
        "coroutine",
    ],
    ids=lambda value: repr(value)[:12],
)
async def test_manager_sizing_nonsense_signal_never_crashes(
    value: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="leasepool")
    load = Load(0)
    # An async function passed by mistake returns a coroutine on each read.
    provider: Any = _never_awaited if value == "coroutine" else load
    manager = make_manager(max_pools=3, size_provider=provider, check_interval=3600)
    huge = value in (10**400, 1e308)
    async with manager:
        load.value = value
        notify_from_thread(manager)
        # A huge number asks for max_pools; nonsense counts as 0.
        expected = 3 if huge else 1
        await wait_until(lambda: manager.desired_executor_count() == expected)
        await wait_until(lambda: manager.total_count == expected)
        assert manager.started
        assert manager.stats()["desired"] == expected
        if not huge:
            assert any(
                r.getMessage().startswith("size_provider.invalid")
                for r in caplog.records
            )
        async with await manager.acquire() as lease:
            assert await lease.run(abs, -2) == 2


async def test_manager_sizing_fractional_signal_rounds_up() -> None:
    manager = make_manager(max_pools=5, units_per_pool=4, size_provider=lambda: 4.5)
    assert manager.desired_executor_count() == 2
    async with manager:
        assert manager.total_count == 2
