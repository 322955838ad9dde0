"""``lease.run``: results, exceptions, cancellation, and what waiting costs."""

from __future__ import annotations

import concurrent.futures as cf
import logging
import multiprocessing
import threading

import anyio
import anyio.to_thread
import pytest

from _helpers import PATIENCE, Gate, make_manager, unique_prefix, wait_until
from leasepool import ExecutorLease, LeaseExpiredError, LeaseUnavailableError

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(20)]


def add(a: int, b: int, *, scale: int = 1) -> int:
    return (a + b) * scale


def fail(message: str) -> None:
    raise ValueError(message)


async def test_lease_run_returns_result_and_passes_arguments() -> None:
    async with make_manager() as manager, await manager.acquire() as lease:
        assert await lease.run(add, 2, 3) == 5
        assert await lease.run(add, 2, 3, scale=10) == 50


async def test_lease_run_passes_owner_keyword_to_function() -> None:
    # The lease's own options never share a namespace with the function's.
    def labelled(*, owner: str, timeout: float) -> str:
        return f"{owner}:{timeout}"

    async with make_manager() as manager, await manager.acquire(owner="me") as lease:
        assert await lease.run(labelled, owner="fn", timeout=1.5) == "fn:1.5"


async def test_lease_run_raises_the_function_exception_bare() -> None:
    async with make_manager() as manager, await manager.acquire() as lease:
        with pytest.raises(ValueError, match="boom") as info:
            await lease.run(fail, "boom")
        assert type(info.value) is ValueError
        # The pool is still fine afterwards.
        assert await lease.run(add, 1, 1) == 2


async def test_lease_run_exception_through_task_group_is_not_wrapped_by_us() -> None:
    async with make_manager(max_pools=2) as manager:

        async def body() -> None:
            async with manager.lease() as lease:
                await lease.run(fail, "inner")

        with pytest.raises(ValueError, match="inner") as info:
            await body()
        assert type(info.value) is ValueError
        assert manager.available_count == 1


async def test_lease_run_cancelled_caller_returns_promptly_and_lease_drains() -> None:
    prefix = unique_prefix()
    manager = make_manager(name_prefix=prefix)
    gate = Gate()
    async with manager:
        lease = await manager.acquire()
        async with anyio.create_task_group() as tg:
            tg.start_soon(lease.run, gate)
            await wait_until(gate.entered.is_set)
            tg.cancel_scope.cancel()
        # Back at once, while the job is still running in its worker.
        assert not gate.opened.is_set()
        assert gate.finished == 0
        await lease.release()
        assert manager.stats()["draining"] == 1
        with pytest.raises(LeaseUnavailableError):
            manager.acquire_nowait()
        served: list[str] = []

        async def next_holder() -> None:
            async with await manager.acquire() as nxt:
                served.append(await nxt.run(lambda: threading.current_thread().name))

        async with anyio.create_task_group() as tg:
            tg.start_soon(next_holder)
            await wait_until(lambda: manager.waiting_count == 1)
            await anyio.sleep(0.05)
            # Not handed on while the cancelled caller's job still runs.
            assert served == []
            gate.open()
        assert gate.finished == 1
        # The same pool, drained and reused (not retired).
        assert served[0].startswith(f"{prefix}-1_")


async def test_lease_run_cancelled_before_job_starts_cancels_it() -> None:
    manager = make_manager(workers_per_pool=1)
    gate = Gate()
    never = Gate()
    async with manager:
        lease = await manager.acquire()
        lease.executor.submit(gate)
        await wait_until(gate.entered.is_set)
        with anyio.move_on_after(0.05) as scope:
            await lease.run(never)  # queued behind the gate
        assert scope.cancelled_caught
        gate.open()
        assert await lease.run(add, 0, 0) == 0
        await lease.release()
        await wait_until(lambda: manager.available_count == 1)
    assert never.calls == 0


async def test_lease_run_does_not_borrow_default_thread_limiter() -> None:
    manager = make_manager(lease_grace_seconds=0)
    limiter = anyio.to_thread.current_default_thread_limiter()
    limiter.total_tokens = 2
    blocker = threading.Event()
    try:
        async with anyio.create_task_group() as tg:
            for _ in range(2):
                tg.start_soon(anyio.to_thread.run_sync, blocker.wait, PATIENCE * 2)
            await wait_until(lambda: limiter.borrowed_tokens == 2)
            with anyio.fail_after(PATIENCE):
                # Start, lease, run, revoke, stop: nothing waits for a token.
                await manager.start()
                lease = await manager.acquire(lease_seconds=0.05)
                assert await lease.run(add, 20, 22) == 42
                slow = Gate()
                lease.executor.submit(slow)
                await wait_until(lambda: not lease.active)
                slow.open()
                async with await manager.acquire() as again:
                    assert await again.run(add, 1, 2) == 3
                await manager.stop()
            assert limiter.borrowed_tokens == 2
            blocker.set()
    finally:
        blocker.set()


async def test_lease_run_after_release_raises_lease_expired() -> None:
    async with make_manager() as manager:
        lease = await manager.acquire()
        await lease.release()
        with pytest.raises(LeaseExpiredError, match="released"):
            await lease.run(add, 1, 2)


async def test_lease_not_constructible_by_users() -> None:
    async with make_manager() as manager, await manager.acquire() as lease:
        with pytest.raises(TypeError, match="acquire"):
            ExecutorLease(  # the point: users may not build leases
                object(),
                manager,
                lease._pool,
                lease_id="forged",
                owner=None,
                lease_seconds=1.0,
                grace_seconds=1.0,
                leased_at=0.0,
            )
        with pytest.raises(TypeError):
            ExecutorLease()  # type: ignore[call-arg]  # no arguments either


async def test_lease_attributes_and_repr() -> None:
    async with make_manager(lease_grace_seconds=3) as manager:
        lease = await manager.acquire(owner="reporter", lease_seconds=10)
        now = anyio.current_time()
        assert lease.owner == "reporter"
        assert lease.lease_seconds == 10
        assert lease.grace_seconds == 3
        assert lease.leased_at <= now
        assert lease.soft_expires_at == lease.leased_at + 10
        assert lease.hard_expires_at == lease.soft_expires_at + 3
        assert "reporter" in repr(lease)
        assert "active" in repr(lease)
        await lease.release()
        assert "released" in repr(lease)


def _break_first_pool(prefix: str) -> None:
    # A thread-pool initializer that fails makes the pool broken for real:
    # its pending and future jobs fail with BrokenThreadPool.
    if threading.current_thread().name.startswith(f"{prefix}-1_"):
        raise OSError("worker setup failed")


async def test_lease_broken_pool_is_retired_and_replaced(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    prefix = unique_prefix()
    manager = make_manager(
        name_prefix=prefix, initializer=_break_first_pool, initargs=(prefix,)
    )
    async with manager:
        lease = await manager.acquire()
        with pytest.raises(cf.BrokenExecutor):
            await lease.run(add, 1, 2)
        await lease.release()
        await wait_until(lambda: manager.stats()["pools_retired"] == 1)
        retiring = [
            r
            for r in caplog.records
            if r.name.startswith("leasepool")
            and r.getMessage().startswith("pool.retiring")
        ]
        assert len(retiring) == 1
        assert retiring[0].levelno == logging.WARNING
        assert "reason=broken" in retiring[0].getMessage()
        # Replaced as sizing requires, and the replacement works.
        await wait_until(lambda: manager.available_count == 1)
        async with await manager.acquire() as fresh:
            assert await fresh.run(add, 2, 2) == 4
            name = await fresh.run(lambda: threading.current_thread().name)
            assert name.startswith(f"{prefix}-2_")


async def test_lease_run_on_process_backend_leaves_no_worker() -> None:
    # One check of the core on processes; their depth is tested elsewhere.
    before = set(multiprocessing.active_children())
    manager = make_manager(backend="process")
    async with manager, await manager.acquire() as lease:
        assert await lease.run(add, 20, 22, scale=2) == 84
        with pytest.raises(ValueError, match="in a process") as info:
            await lease.run(fail, "in a process")
        assert type(info.value) is ValueError
        workers = set(multiprocessing.active_children()) - before
        assert workers
    assert not (set(multiprocessing.active_children()) & workers)
