"""Acquiring leases: FIFO waiting, no-wait forms, timeouts and cancellation."""

from __future__ import annotations

from collections.abc import Callable

import anyio
import pytest

from _helpers import PATIENCE, make_manager, stat_is, wait_until
from leasepool import (
    ExecutorLease,
    LeasedExecutorManager,
    LeaseUnavailableError,
)

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(20)]


def assert_consistent(manager: LeasedExecutorManager) -> None:
    """Counts agree with each other and with the bound."""
    stats = manager.stats()
    assert stats["available"] + stats["leased"] == stats["total"]
    assert stats["total"] <= stats["max_pools"]
    assert stats["waiting"] == manager.waiting_count


async def test_manager_acquire_creates_pools_up_to_max() -> None:
    manager = make_manager(max_pools=3)
    async with manager:
        assert manager.total_count == 1
        leases = [await manager.acquire(owner=f"o{n}") for n in range(3)]
        assert manager.total_count == 3
        assert manager.leased_count == 3
        assert manager.available_count == 0
        assert len({lease.lease_id for lease in leases}) == 3
        with pytest.raises(LeaseUnavailableError):
            await manager.acquire(wait=False)
        assert_consistent(manager)


async def test_manager_waiters_are_served_fifo() -> None:
    manager = make_manager()
    order: list[int] = []
    async with manager:
        holder = await manager.acquire()

        async def wait_in_line(n: int) -> None:
            async with await manager.acquire(owner=f"w{n}") as lease:
                assert lease.owner == f"w{n}"
                order.append(n)

        with anyio.fail_after(PATIENCE):
            async with anyio.create_task_group() as tg:
                for n in range(6):
                    tg.start_soon(wait_in_line, n)
                    # Queue them in a known order.
                    await wait_until(stat_is(manager, "waiting", n + 1))
                await holder.release()
        assert order == list(range(6))
        assert manager.available_count == 1
        assert_consistent(manager)


async def test_manager_wait_false_raises_at_once() -> None:
    manager = make_manager()
    async with manager:
        lease = await manager.acquire()
        with anyio.fail_after(1):
            with pytest.raises(LeaseUnavailableError, match="1 pools are leased"):
                await manager.acquire(wait=False)
            with pytest.raises(LeaseUnavailableError):
                manager.acquire_nowait()
        assert manager.waiting_count == 0
        await lease.release()
        now = manager.acquire_nowait(owner="nowait", lease_seconds=5)
        assert isinstance(now, ExecutorLease)
        assert now.owner == "nowait"
        assert now.lease_seconds == 5
        await now.release()
        assert_consistent(manager)


async def test_manager_acquire_timeout_raises_after_timeout() -> None:
    manager = make_manager()
    async with manager:
        holder = await manager.acquire()
        started = anyio.current_time()
        with pytest.raises(TimeoutError):
            await manager.acquire(timeout=0.2)
        elapsed = anyio.current_time() - started
        assert 0.2 <= elapsed < PATIENCE
        with pytest.raises(TimeoutError):
            await manager.acquire(timeout=0)
        assert manager.waiting_count == 0
        await holder.release()
        # Nothing was lost: the pool is free again.
        assert manager.available_count == 1
        assert_consistent(manager)


async def test_manager_acquire_timeout_not_reached_returns_lease() -> None:
    manager = make_manager()
    async with manager:
        holder = await manager.acquire()
        async with anyio.create_task_group() as tg:

            async def take() -> None:
                lease = await manager.acquire(timeout=PATIENCE)
                await lease.release()

            tg.start_soon(take)
            await wait_until(lambda: manager.waiting_count == 1)
            await holder.release()
        assert manager.available_count == 1


async def test_manager_acquire_honours_enclosing_fail_after() -> None:
    manager = make_manager()
    async with manager:
        holder = await manager.acquire()
        started = anyio.current_time()
        with pytest.raises(TimeoutError), anyio.fail_after(0.2):
            await manager.acquire()
        assert 0.2 <= anyio.current_time() - started < PATIENCE
        with anyio.move_on_after(0.05) as scope:
            await manager.acquire(timeout=PATIENCE)
        assert scope.cancelled_caught
        assert manager.waiting_count == 0
        await holder.release()
        assert manager.available_count == 1
        assert_consistent(manager)


async def test_manager_cancelled_waiter_leaves_no_trace() -> None:
    manager = make_manager()
    async with manager:
        holder = await manager.acquire()
        before = manager.stats()
        with anyio.fail_after(PATIENCE):
            async with anyio.create_task_group() as tg:
                for _ in range(3):
                    tg.start_soon(manager.acquire)
                await wait_until(lambda: manager.waiting_count == 3)
                tg.cancel_scope.cancel()
        after = manager.stats()
        assert after["waiting"] == 0
        assert after["leases_granted"] == before["leases_granted"]
        assert [e["lease_id"] for e in after["leases"]] == [holder.lease_id]
        assert len(before["leases"]) == 1
        await holder.release()
        assert manager.available_count == 1
        # The next caller is served at once: no ghost waiter is ahead of it.
        with anyio.fail_after(1):
            lease = await manager.acquire(wait=False)
        await lease.release()
        assert_consistent(manager)


@pytest.mark.parametrize("cancel_first", [True, False])
async def test_manager_waiter_cancelled_as_pool_arrives_passes_it_on(
    cancel_first: bool,
) -> None:
    manager = make_manager()
    async with manager:
        holder = await manager.acquire()
        first_scope = anyio.CancelScope()
        served: list[str] = []

        async def first() -> None:
            with first_scope:
                async with await manager.acquire(owner="first"):
                    served.append("first")
                    await anyio.sleep_forever()

        async def second() -> None:
            async with await manager.acquire(owner="second"):
                served.append("second")

        with anyio.fail_after(PATIENCE):
            async with anyio.create_task_group() as tg:
                tg.start_soon(first)
                await wait_until(lambda: manager.waiting_count == 1)
                tg.start_soon(second)
                await wait_until(lambda: manager.waiting_count == 2)
                # The pool is handed over and the first waiter cancelled in
                # the same instant: no checkpoint between the two.
                if cancel_first:
                    first_scope.cancel()
                    await holder.release()
                else:
                    await holder.release()
                    first_scope.cancel()
        assert "second" in served
        assert manager.waiting_count == 0
        assert manager.available_count == 1
        assert manager.stats()["leases"] == []
        assert_consistent(manager)


def queued_or_done(
    manager: LeasedExecutorManager, got: list[str]
) -> Callable[[], bool]:
    return lambda: manager.waiting_count == 1 or bool(got)


async def test_manager_waiter_timing_out_as_pool_arrives_passes_it_on() -> None:
    manager = make_manager()
    async with manager:
        for _ in range(20):
            holder = await manager.acquire()
            got: list[str] = []

            async def racer(got: list[str] = got) -> None:
                try:
                    lease = await manager.acquire(timeout=0.01)
                except TimeoutError:
                    got.append("timeout")
                else:
                    got.append("lease")
                    await lease.release()

            async with anyio.create_task_group() as tg:
                tg.start_soon(racer)
                # On a loaded machine it may time out before the poll sees it.
                await wait_until(queued_or_done(manager, got))
                # Release close to the waiter's deadline, either side of it.
                await anyio.sleep(0.009)
                await holder.release()
            assert len(got) == 1
            assert manager.available_count == 1, got
            assert_consistent(manager)


async def test_manager_wait_false_never_slips_ahead_of_granted_waiter() -> None:
    manager = make_manager()
    async with manager:
        holder = await manager.acquire()
        served: list[str] = []

        async def waiter() -> None:
            async with await manager.acquire(owner="waiter"):
                served.append("waiter")

        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter)
            await wait_until(lambda: manager.waiting_count == 1)
            await holder.release()
            # The pool now belongs to the waiter, which has not run yet.
            with pytest.raises(LeaseUnavailableError):
                manager.acquire_nowait()
            with pytest.raises(LeaseUnavailableError):
                await manager.acquire(wait=False)
        assert served == ["waiter"]
        assert manager.available_count == 1


async def test_manager_new_caller_queues_behind_existing_waiters() -> None:
    manager = make_manager()
    order: list[str] = []
    async with manager:
        holder = await manager.acquire()

        async def take(name: str) -> None:
            async with await manager.acquire(owner=name):
                order.append(name)

        async with anyio.create_task_group() as tg:
            tg.start_soon(take, "early")
            await wait_until(lambda: manager.waiting_count == 1)
            await holder.release()
            # A caller arriving before the early waiter has run queues.
            tg.start_soon(take, "late")
        assert order == ["early", "late"]


async def test_manager_release_by_id_and_unknown_id() -> None:
    manager = make_manager()
    async with manager:
        lease = await manager.acquire()
        await manager.release("no-such-lease")
        assert lease.active
        await manager.release(lease.lease_id)
        assert not lease.active
        await manager.release(lease.lease_id)  # again: ignored
        assert manager.available_count == 1


async def test_manager_lease_context_manager_releases() -> None:
    manager = make_manager()
    async with manager:
        async with manager.lease(owner="ctx", lease_seconds=30) as lease:
            assert lease.owner == "ctx"
            assert manager.leased_count == 1
        assert not lease.active
        async with await manager.acquire() as lease2:
            assert lease2.active
        assert not lease2.active
        await lease2.release()  # idempotent
        assert manager.available_count == 1


@pytest.mark.parametrize("others_waiting", [False, True])
async def test_manager_acquire_in_cancelled_scope_takes_nothing(
    others_waiting: bool,
) -> None:
    manager = make_manager(max_pools=1)
    async with manager:
        holder = await manager.acquire() if others_waiting else None
        got: list[ExecutorLease] = []
        async with anyio.create_task_group() as tg:
            if holder is not None:
                tg.start_soon(lambda: _append_lease(manager, got))
                await wait_until(lambda: manager.waiting_count == 1)
            with anyio.CancelScope() as scope:
                scope.cancel()
                await manager.acquire()
                pytest.fail("acquire() returned in a cancelled scope")
            assert scope.cancelled_caught
            # Nothing was taken and the queue is as it was.
            assert manager.waiting_count == (1 if holder is not None else 0)
            assert manager.stats()["leased"] == (1 if holder is not None else 0)
            if holder is not None:
                await holder.release()
        if holder is not None:
            assert len(got) == 1
            await got[0].release()
        assert manager.available_count == 1
        assert_consistent(manager)


async def _append_lease(
    manager: LeasedExecutorManager, got: list[ExecutorLease]
) -> None:
    got.append(await manager.acquire())
