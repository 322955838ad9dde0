"""WorkGrinder on thread pools: batching, outcomes, handles, stopping, bounds."""

from __future__ import annotations

import concurrent.futures as cf
import contextvars
import functools
import logging
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, ClassVar

import anyio
import anyio.to_thread
import pytest

from _helpers import PATIENCE, Gate, make_manager, wait_until
from _leakcheck import library_tasks, snapshot, wait_no_leaks
from leasepool import (
    GrinderFullError,
    GrinderHandle,
    LeasedExecutorManager,
    LeaseExpiredError,
    LeasePoolNotStartedError,
    WorkGrinder,
)

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]

# Long enough that no batch starts by age unless a test wants it to.
NEVER = 3600.0


@asynccontextmanager
async def running(
    manager: LeasedExecutorManager | None = None, **options: Any
) -> AsyncIterator[WorkGrinder]:
    """A started grinder on a started (by default one-pool) thread manager."""
    manager = manager if manager is not None else make_manager()
    options.setdefault("max_wait_seconds", NEVER)
    async with manager, WorkGrinder(executor_manager=manager, **options) as grinder:
        yield grinder


async def occupy(grinder: WorkGrinder, calls: int) -> Gate:
    """Fill the queue with ``calls`` gated calls: a full queue starts a batch,
    which then holds the grinder's only lane until the gate opens."""
    gate = Gate()
    for _ in range(calls):
        await grinder.enqueue(gate)
    await anyio.to_thread.run_sync(gate.entered.wait, PATIENCE)
    assert grinder.stats()["pending"] == 0
    return gate


def pending_is(grinder: WorkGrinder, count: int) -> Callable[[], bool]:
    return lambda: bool(grinder.stats()["pending"] == count)


def submitted_is(grinder: WorkGrinder, count: int) -> Callable[[], bool]:
    return lambda: bool(grinder.stats()["submitted"] == count)


def echo(value: Any) -> Any:
    return value


def fail(message: str) -> None:
    raise ValueError(message)


# -- flushing and batches -----------------------------------------------------


async def test_grinder_flushes_at_threshold() -> None:
    async with running(batch_size_threshold=3) as grinder:
        handles = [await grinder.enqueue(echo, i) for i in range(3)]
        with anyio.fail_after(PATIENCE):
            assert [await h for h in handles] == [0, 1, 2]
        assert grinder.stats()["batches"] == 1


async def test_grinder_waits_below_threshold_until_max_wait() -> None:
    async with running(batch_size_threshold=100, max_wait_seconds=0.5) as grinder:
        started = anyio.current_time()
        handle = await grinder.enqueue(echo, "late")
        assert grinder.stats()["pending"] == 1
        await anyio.sleep(0.05)
        assert not handle.done()
        assert grinder.stats()["oldest_wait_seconds"] > 0
        with anyio.fail_after(PATIENCE):
            assert await handle == "late"
        assert anyio.current_time() - started >= 0.5


async def test_grinder_batch_takes_at_most_threshold_calls() -> None:
    manager = make_manager(workers_per_pool=1)
    async with running(manager, batch_size_threshold=4) as grinder:
        gate = Gate()
        handles = [await grinder.enqueue(gate, i) for i in range(10)]
        await anyio.to_thread.run_sync(gate.entered.wait, PATIENCE)
        stats = grinder.stats()
        assert (stats["in_flight"], stats["pending"]) == (4, 6)
        gate.open()
        with anyio.fail_after(PATIENCE):
            assert [await h for h in handles[:8]] == list(range(8))
        # Two left: below the threshold, they wait for their age (or stop).
        assert grinder.stats()["pending"] == 2
        with anyio.fail_after(PATIENCE):
            await grinder.stop()
        assert [h.result() for h in handles[8:]] == [8, 9]
        assert grinder.stats()["batches"] == 3


async def test_grinder_batch_lease_owner_names_batch() -> None:
    manager = make_manager()
    async with running(manager, batch_size_threshold=1, owner_prefix="etl") as g:
        gate = Gate()
        first = await g.enqueue(gate)
        await anyio.to_thread.run_sync(gate.entered.wait, PATIENCE)
        assert [lease["owner"] for lease in manager.stats()["leases"]] == [
            "etl-batch-1"
        ]
        gate.open()
        await first
        second = await g.enqueue(gate)
        await wait_until(lambda: manager.stats()["leases"] == [] or second.done())
        await second
        assert g.stats()["batches"] == 2


async def test_grinder_runs_calls_in_submission_order() -> None:
    order: list[int] = []
    manager = make_manager(workers_per_pool=1)
    async with running(manager, batch_size_threshold=7) as grinder:
        handles = [await grinder.enqueue(order.append, i) for i in range(30)]
        await grinder.stop()
    assert all(h.done() for h in handles)
    assert order == list(range(30))


async def test_grinder_concurrent_batches_overlap() -> None:
    # Each call waits at the barrier for the other: both complete only if the
    # two batches really run at the same time, on two pools.
    barrier = threading.Barrier(2, timeout=PATIENCE)
    manager = make_manager(max_pools=2, workers_per_pool=1)
    options = {"batch_size_threshold": 1, "max_concurrent_batches": 2}
    async with running(manager, **options) as grinder:
        first = await grinder.enqueue(barrier.wait)
        second = await grinder.enqueue(barrier.wait)
        with anyio.fail_after(PATIENCE * 2):
            assert sorted([await first, await second]) == [0, 1]
        assert manager.stats()["peak_pools"] == 2


async def test_grinder_one_batch_at_a_time_by_default() -> None:
    manager = make_manager(max_pools=2, workers_per_pool=1)
    async with running(manager, batch_size_threshold=1) as grinder:
        gate = Gate()
        first = await grinder.enqueue(gate)
        second = await grinder.enqueue(echo, 2)
        await anyio.to_thread.run_sync(gate.entered.wait, PATIENCE)
        await anyio.sleep(0.05)
        assert not second.done()
        assert grinder.stats()["running_batches"] == 1
        gate.open()
        assert (await first, await second) == (None, 2)


async def test_grinder_slow_call_does_not_hold_back_quick_ones() -> None:
    # One batch: a call that blocks, then quick ones. The batch spreads over
    # both workers and hands the quick results over while the slow call runs.
    manager = make_manager(workers_per_pool=2)
    async with running(manager, batch_size_threshold=4) as grinder:
        gate = Gate()
        results: dict[int, Any] = {}

        async def call(index: int, fn: Callable[..., Any]) -> None:
            results[index] = await grinder.submit(fn, index)

        async with anyio.create_task_group() as tg:
            tg.start_soon(call, 0, gate)
            await wait_until(lambda: grinder.stats()["pending"] == 1)
            for index in (1, 2, 3):
                tg.start_soon(call, index, echo)
            with anyio.fail_after(PATIENCE):
                await wait_until(lambda: len(results) == 3)
            assert 0 not in results
            assert grinder.stats()["running_batches"] == 1
            gate.open()
        assert results == {0: 0, 1: 1, 2: 2, 3: 3}


async def test_grinder_cohorts_split_by_cancellation() -> None:
    # Callers queued 0..4 share wake-up events three by three; cancelling 1
    # shifts the queue, so the first batch (0, 2, 3) ends mid-cohort and 4 must
    # not be woken by it.
    async with running(batch_size_threshold=3) as grinder:
        results: dict[int, int] = {}
        scopes: dict[int, anyio.CancelScope] = {}

        async def call(index: int) -> None:
            with anyio.CancelScope() as scopes[index]:
                results[index] = await grinder.submit(echo, index)

        async with anyio.create_task_group() as tg:
            for index in range(2):
                tg.start_soon(call, index)
                await wait_until(pending_is(grinder, index + 1))
            scopes[1].cancel()
            await wait_until(lambda: grinder.stats()["pending"] == 1)
            for index in range(2, 5):
                tg.start_soon(call, index)
                await wait_until(submitted_is(grinder, index + 1))
            with anyio.fail_after(PATIENCE):
                await wait_until(lambda: len(results) == 3)
            assert results == {0: 0, 2: 2, 3: 3}
            assert grinder.stats()["pending"] == 1
            await anyio.sleep(0.02)
            assert 4 not in results
            await grinder.stop()
        assert results == {0: 0, 2: 2, 3: 3, 4: 4}


# -- outcomes and handles -----------------------------------------------------


async def test_grinder_submit_returns_result_or_raises() -> None:
    async with running(batch_size_threshold=1) as grinder:
        assert await grinder.submit(echo, {"a": 1}) == {"a": 1}
        assert await grinder.submit(divmod, 7, 2) == (3, 1)
        with pytest.raises(ValueError, match=r"^boom$"):
            await grinder.submit(fail, "boom")
        assert await grinder.submit(sorted, [3, 1, 2], reverse=True) == [3, 2, 1]
        stats = grinder.stats()
        assert (stats["completed"], stats["failed"]) == (3, 1)


async def test_grinder_submit_call_passes_reserved_names() -> None:
    def greet(name: str, *, owner: str, wait: int) -> str:
        return f"{name}/{owner}/{wait}"

    async with running(batch_size_threshold=1) as grinder:
        got = await grinder.submit_call(
            greet, ("hi",), {"owner": "alice", "wait": 3}, owner="label"
        )
        assert got == "hi/alice/3"
        handle = await grinder.enqueue_call(greet, ["yo"], {"owner": "b", "wait": 0})
        assert await handle == "yo/b/0"
        bound = functools.partial(greet, owner="carol", wait=1)
        assert await grinder.submit(bound, "hey") == "hey/carol/1"


async def test_grinder_handle_api() -> None:
    async with running(batch_size_threshold=1) as grinder:
        gate = Gate()
        handle = await grinder.enqueue(gate, "value", owner="job-7")
        assert isinstance(handle, GrinderHandle)
        assert handle.owner == "job-7"
        assert "job-7" in repr(handle)
        assert not handle.done()
        assert not handle.cancelled()
        with pytest.raises(cf.InvalidStateError):
            handle.result()
        with pytest.raises(cf.InvalidStateError):
            handle.exception()
        await anyio.to_thread.run_sync(gate.entered.wait, PATIENCE)
        assert handle.cancel() is False  # running: too late
        gate.open()
        with anyio.fail_after(PATIENCE):
            assert await handle == "value"
            assert await handle.wait() == "value"  # awaiting twice is fine
        assert handle.done()
        assert handle.result() == "value"
        assert handle.exception() is None
        assert handle.cancel() is False

        failing = await grinder.enqueue(fail, "nope")
        with pytest.raises(ValueError, match="nope"):
            await failing
        error = failing.exception()
        assert isinstance(error, ValueError)
        with pytest.raises(ValueError, match="nope"):
            failing.result()


def test_grinder_handle_not_constructible() -> None:
    grinder = WorkGrinder(executor_manager=make_manager())
    with pytest.raises(TypeError, match="enqueue"):
        GrinderHandle(object(), grinder._queue, echo, (), {}, None, None)


async def test_grinder_cancel_pending_handle_leaves_queue_at_once() -> None:
    ran: list[int] = []
    async with running(batch_size_threshold=100) as grinder:
        handles = [await grinder.enqueue(ran.append, i) for i in range(5)]
        assert grinder.stats()["pending"] == 5
        for index in (2, 0, 4):  # middle, oldest, newest
            assert handles[index].cancel() is True
        assert grinder.stats()["pending"] == 2
        assert handles[2].cancelled()
        assert handles[2].done()
        assert handles[2].cancel() is True  # idempotent
        with pytest.raises(cf.CancelledError):
            handles[2].result()
        with pytest.raises(cf.CancelledError):
            await handles[2]
        await grinder.stop()
    assert ran == [1, 3]
    assert grinder.stats()["cancelled"] == 3


async def test_grinder_cancel_many_pending_handles_compacts_queue() -> None:
    async with running(batch_size_threshold=1000) as grinder:
        handles = [await grinder.enqueue(echo, i) for i in range(300)]
        for handle in handles[1:-1]:
            handle.cancel()
        assert grinder.stats()["pending"] == 2
        assert len(grinder._queue.items) < 300  # cancelled ones do not pile up
        await grinder.stop()
        assert (handles[0].result(), handles[-1].result()) == (0, 299)


async def test_grinder_cancelled_submitter_cancels_its_call() -> None:
    ran: list[str] = []
    async with running(batch_size_threshold=100) as grinder:
        with anyio.move_on_after(0.05) as scope:
            await grinder.submit(ran.append, "never")
        assert scope.cancelled_caught
        assert grinder.stats()["pending"] == 0
        assert grinder.stats()["cancelled"] == 1
    assert ran == []


async def test_grinder_cancelled_caller_queues_nothing() -> None:
    async with running(batch_size_threshold=100) as grinder:
        with anyio.CancelScope() as scope:
            scope.cancel()
            await grinder.enqueue(echo, 1)
        with anyio.CancelScope() as scope:
            scope.cancel()
            await grinder.submit(echo, 2)
        assert grinder.stats()["pending"] == 0


async def test_grinder_cancel_batched_call_before_it_starts() -> None:
    manager = make_manager(workers_per_pool=1)
    async with running(manager, batch_size_threshold=2) as grinder:
        gate = Gate()
        first = await grinder.enqueue(gate)
        second = await grinder.enqueue(echo, "skipped")
        await anyio.to_thread.run_sync(gate.entered.wait, PATIENCE)
        assert grinder.stats()["in_flight"] == 2
        assert second.cancel() is True
        gate.open()
        assert await first is None
        assert second.cancelled()


# -- other threads --------------------------------------------------------------


async def test_grinder_submit_from_thread_many_threads() -> None:
    async with running(batch_size_threshold=20, max_wait_seconds=0.01) as grinder:

        def producer(base: int) -> list[int]:
            futures = [grinder.submit_from_thread(echo, base + i) for i in range(50)]
            return [f.result(timeout=PATIENCE) for f in futures]

        def produce_all() -> list[int]:
            with cf.ThreadPoolExecutor(16) as pool:
                parts = pool.map(producer, range(0, 1600, 100))
                return [n for part in parts for n in part]

        with anyio.fail_after(PATIENCE * 2):
            results = await anyio.to_thread.run_sync(produce_all)
        assert sorted(results) == sorted(
            b + i for b in range(0, 1600, 100) for i in range(50)
        )
        assert grinder.stats()["submitted"] == 800


async def test_grinder_submit_from_thread_propagates_exception_and_cancel() -> None:
    async with running(batch_size_threshold=100) as grinder:

        def from_thread() -> tuple[cf.Future[None], cf.Future[Any]]:
            doomed = grinder.submit_from_thread(fail, "thread boom")
            kept = grinder.submit_from_thread(echo, 1)
            return doomed, kept

        doomed, kept = await anyio.to_thread.run_sync(from_thread)
        await wait_until(lambda: grinder.stats()["pending"] == 2)
        assert kept.cancel() is True
        await wait_until(lambda: grinder.stats()["pending"] == 1)
        await grinder.stop()
        with pytest.raises(ValueError, match="thread boom"):
            doomed.result(timeout=PATIENCE)
        assert kept.cancelled()


async def test_grinder_cancelled_thread_futures_wake_cf_wait() -> None:
    # A cancelled future counts for cf.wait() and as_completed() only once it
    # is notified; the grinder must do that, as an executor would.
    async with running(batch_size_threshold=100) as grinder:

        def submit_three() -> list[cf.Future[Any]]:
            return [grinder.submit_from_thread(echo, i) for i in range(3)]

        futures = await anyio.to_thread.run_sync(submit_three)
        await wait_until(lambda: grinder.stats()["pending"] == 3)
        assert futures[0].cancel()  # by its owner
        await wait_until(lambda: grinder.stats()["pending"] == 2)
        await grinder.stop(cancel_pending=True)  # the other two, by stop()

    def wait_all() -> set[cf.Future[Any]]:
        return cf.wait(futures, timeout=PATIENCE).done

    assert await anyio.to_thread.run_sync(wait_all) == set(futures)
    assert all(f.cancelled() for f in futures)


async def test_grinder_from_thread_refused_on_loop_thread() -> None:
    async with running() as grinder:
        with pytest.raises(RuntimeError, match="event loop thread"):
            grinder.submit_from_thread(echo, 1)
        with pytest.raises(RuntimeError, match="event loop thread"):
            grinder.stats_from_thread()


async def test_grinder_stats_from_thread() -> None:
    async with running(batch_size_threshold=50) as grinder:
        await grinder.enqueue(echo, 1)
        stats = await anyio.to_thread.run_sync(
            functools.partial(grinder.stats_from_thread, timeout=PATIENCE)
        )
        assert (stats["pending"], stats["started"], stats["submitted"]) == (1, True, 1)
        assert stats.keys() == (await grinder.astats()).keys()


async def test_grinder_owning_loop_rule() -> None:
    async with running() as grinder:

        async def other_loop() -> None:
            with pytest.raises(RuntimeError, match="event loop"):
                await grinder.submit(echo, 1)
            with pytest.raises(RuntimeError, match="event loop"):
                await grinder.enqueue(echo, 1)
            with pytest.raises(RuntimeError, match="event loop"):
                await grinder.astats()
            with pytest.raises(RuntimeError, match="event loop"):
                await grinder.stop()
            with pytest.raises(RuntimeError, match="event loop"):
                await grinder.start()

        def run_other_loop() -> None:
            anyio.run(other_loop)
            with pytest.raises(RuntimeError, match="event loop"):
                grinder.stats()

        await anyio.to_thread.run_sync(run_other_loop)
        assert grinder.started


# -- contextvars ----------------------------------------------------------------

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id")


def read_and_clobber() -> str:
    seen = request_id.get("unset")
    request_id.set("clobbered by the call")
    return seen


async def test_grinder_runs_each_call_in_its_submitters_context() -> None:
    seen: dict[str, str] = {}
    async with running(batch_size_threshold=10, max_wait_seconds=0.01) as grinder:

        async def submitter(name: str) -> None:
            request_id.set(name)
            for _ in range(3):
                seen[name] = await grinder.submit(read_and_clobber)
                assert request_id.get() == name  # the call's set() stays there

        async with anyio.create_task_group() as tg:
            for i in range(20):
                tg.start_soon(submitter, f"task-{i}")
    assert seen == {f"task-{i}": f"task-{i}" for i in range(20)}


# -- stopping -------------------------------------------------------------------


async def test_grinder_stop_drains_queued_calls() -> None:
    async with running(batch_size_threshold=100) as grinder:
        handles = [await grinder.enqueue(echo, i) for i in range(10)]
        with anyio.fail_after(PATIENCE):
            await grinder.stop()
        assert [h.result() for h in handles] == list(range(10))
        assert not grinder.started
        with pytest.raises(LeasePoolNotStartedError):
            await grinder.submit(echo, 1)


async def test_grinder_stop_cancel_pending_while_pool_leased_elsewhere() -> None:
    manager = make_manager(max_pools=1)
    async with manager:
        grinder = WorkGrinder(
            executor_manager=manager, batch_size_threshold=1, max_wait_seconds=NEVER
        )
        async with await manager.acquire(owner="hog"):
            await grinder.start()
            handles = [await grinder.enqueue(echo, i) for i in range(3)]
            await wait_until(lambda: manager.stats()["waiting"] == 1)
            with anyio.fail_after(PATIENCE):
                await grinder.stop(cancel_pending=True)
        assert all(h.cancelled() for h in handles)
        assert manager.stats()["waiting"] == 0


async def test_grinder_stop_drain_bounded_while_pool_leased_elsewhere() -> None:
    # Draining waits for a lease, but the other holder's lease expires.
    manager = make_manager(max_pools=1, lease_grace_seconds=0)
    async with manager:
        grinder = WorkGrinder(executor_manager=manager, batch_size_threshold=1)
        await manager.acquire(owner="hog", lease_seconds=0.2)
        await grinder.start()
        handle = await grinder.enqueue(echo, "after the hog")
        with anyio.fail_after(PATIENCE):
            await grinder.stop()
        assert handle.result() == "after the hog"


async def test_grinder_stop_cancel_pending_halts_running_batch() -> None:
    manager = make_manager(workers_per_pool=1)
    async with running(manager, batch_size_threshold=3) as grinder:
        gate = Gate()
        running_call = await grinder.enqueue(gate)
        rest = [await grinder.enqueue(echo, i) for i in range(2)]
        queued = await grinder.enqueue(echo, "queued")
        await anyio.to_thread.run_sync(gate.entered.wait, PATIENCE)
        with anyio.fail_after(PATIENCE):
            await grinder.stop(cancel_pending=True)
        assert running_call.cancelled()
        assert all(h.cancelled() for h in [*rest, queued])
        gate.open()
    assert gate.calls == 1  # nothing after the running call was started


async def test_grinder_stop_wakes_submitters_waiting_for_room() -> None:
    async with running(batch_size_threshold=100, max_pending=1) as grinder:
        gate = await occupy(grinder, 1)
        await grinder.enqueue(echo, 1)
        errors: list[BaseException] = []

        async def blocked() -> None:
            try:
                await grinder.submit(echo, 2)
            except LeasePoolNotStartedError as exc:
                errors.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(blocked)
            await wait_until(lambda: grinder.stats()["waiting_for_space"] == 1)
            gate.open()
            await grinder.stop()
        assert len(errors) == 1


async def test_grinder_lifecycle_forms() -> None:
    manager = make_manager()
    grinder = WorkGrinder(executor_manager=manager, batch_size_threshold=1)
    with pytest.raises(LeasePoolNotStartedError):
        await grinder.start()  # the manager is not running
    async with manager:
        with pytest.raises(LeasePoolNotStartedError):
            await grinder.submit(echo, 1)
        await grinder.stop()  # stopped: a no-op
        await grinder.start()
        await grinder.start()  # started: a no-op
        assert grinder.started
        assert "pending" in repr(grinder)
        await grinder.stop()
        await grinder.stop()
        async with grinder:  # and again, the other way
            assert await grinder.submit(echo, "again", wait=False) == "again"
        assert not grinder.started
        assert "stopped" in repr(grinder)


def test_grinder_restarts_under_another_runtime() -> None:
    manager = make_manager()
    grinder = WorkGrinder(executor_manager=manager, batch_size_threshold=2)

    async def use(tag: str) -> list[str]:
        async with manager, grinder:
            first = await grinder.enqueue(echo, f"{tag}-1")
            return [await grinder.submit(echo, f"{tag}-2"), await first]

    assert anyio.run(use, "a", backend="asyncio") == ["a-2", "a-1"]
    assert anyio.run(use, "t", backend="trio") == ["t-2", "t-1"]
    assert anyio.run(use, "b", backend="asyncio") == ["b-2", "b-1"]


async def test_grinder_submit_from_thread_after_stop() -> None:
    async with running(batch_size_threshold=100) as grinder:

        def submit_two() -> list[cf.Future[Any]]:
            return [grinder.submit_from_thread(echo, i) for i in range(2)]

        futures = await anyio.to_thread.run_sync(submit_two)
        await wait_until(lambda: grinder.stats()["pending"] == 2)
    assert [f.result(timeout=0) for f in futures] == [0, 1]  # drained by stop

    def after_stop() -> None:
        with pytest.raises(LeasePoolNotStartedError):
            grinder.submit_from_thread(echo, 3)

    await anyio.to_thread.run_sync(after_stop)


async def test_grinder_submit_from_thread_waits_for_room() -> None:
    # The queue holds two calls; the other three wait for room on the loop,
    # not in the calling thread, and a full queue starts a batch by itself.
    async with running(batch_size_threshold=3, max_pending=2) as grinder:

        def submit_five() -> list[Any]:
            futures = [grinder.submit_from_thread(echo, i) for i in range(5)]
            return [f.result(timeout=PATIENCE) for f in futures[:4]]

        with anyio.fail_after(PATIENCE * 2):
            assert await anyio.to_thread.run_sync(submit_five) == [0, 1, 2, 3]
        assert grinder.stats()["pending"] == 1


async def test_grinder_fails_calls_when_manager_stops() -> None:
    manager = make_manager()
    async with manager:
        grinder = WorkGrinder(executor_manager=manager, batch_size_threshold=1)
        await grinder.start()
        await manager.stop()
        with pytest.raises(LeasePoolNotStartedError):
            await grinder.submit(echo, 1)
        await grinder.stop()


async def test_grinder_leaves_no_thread_or_task_behind() -> None:
    before = snapshot()
    manager = make_manager(max_pools=2, workers_per_pool=2)
    options = {"batch_size_threshold": 5, "max_concurrent_batches": 2}
    async with running(manager, owner_prefix="leakless", **options) as grinder:
        assert library_tasks("leakless")
        handles = [await grinder.enqueue(echo, i) for i in range(23)]
    assert [h.result() for h in handles] == list(range(23))
    assert library_tasks("leakless") == []
    await wait_no_leaks(before)


async def test_grinder_logs_lifecycle_and_batches(
    caplog: pytest.LogCaptureFixture,
) -> None:
    logger = logging.getLogger("test.grinder.own")
    caplog.set_level(logging.DEBUG, logger=logger.name)
    async with running(batch_size_threshold=1, logger=logger) as grinder:
        await grinder.submit(echo, 1)
    ours = [r for r in caplog.records if r.name == logger.name]
    events = [(r.levelname, r.getMessage().split()[0]) for r in ours]
    # The batch may end before or after stop() begins: trio does not promise
    # in which order woken tasks run.
    assert events[0] == ("INFO", "grinder.started")
    assert events[1] == ("DEBUG", "batch.started")
    assert sorted(events[2:4]) == [
        ("DEBUG", "batch.ended"),
        ("INFO", "grinder.stopping"),
    ]
    assert events[4:] == [("INFO", "grinder.stopped")]
    assert "owner=work-grinder-batch-1" in ours[1].getMessage()


# -- partial failure --------------------------------------------------------------


async def test_grinder_lease_revoked_mid_batch_fails_only_unstarted_calls() -> None:
    manager = make_manager(workers_per_pool=1, lease_grace_seconds=0)
    options = {
        "batch_size_threshold": 3,
        "lease_seconds": 0.2,
        "max_wait_seconds": 0.05,
    }
    async with running(manager, **options) as grinder:
        gate = Gate()
        started = await grinder.enqueue(gate, "finished anyway")
        rest = [await grinder.enqueue(echo, i) for i in range(2)]
        await anyio.to_thread.run_sync(gate.entered.wait, PATIENCE)
        await wait_until(lambda: manager.stats()["leases_revoked"] == 1)
        for handle in rest:
            with pytest.raises(LeaseExpiredError):
                await handle
        gate.open()
        with anyio.fail_after(PATIENCE):
            assert await started == "finished anyway"
        # The grinder goes on with a fresh lease.
        assert await grinder.submit(echo, "next") == "next"


class RefusingExecutor(cf.ThreadPoolExecutor):
    """An executor whose queue refuses some jobs, noting where submits happen."""

    submit_threads: ClassVar[list[str]] = []

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> cf.Future[Any]:
        RefusingExecutor.submit_threads.append(threading.current_thread().name)
        if args == ("refuse",):
            raise RuntimeError("queue full")
        return super().submit(fn, *args, **kwargs)


class RefusingBackend:
    """A user's backend: not a built-in kind, so each call is its own job."""

    name = "refusing"

    def create_pool(self, workers: int, name: str) -> cf.Executor:
        return RefusingExecutor(max_workers=workers, thread_name_prefix=name)

    def is_broken_error(self, exc: BaseException) -> bool:
        return isinstance(exc, cf.BrokenExecutor)

    def shutdown_pool(self, executor: cf.Executor, *, revoke: bool) -> None:
        executor.shutdown(wait=not revoke, cancel_futures=True)


async def test_grinder_failed_submission_fails_only_unsubmitted_calls() -> None:
    RefusingExecutor.submit_threads.clear()
    manager = make_manager(backend=RefusingBackend(), workers_per_pool=2)
    async with running(manager, batch_size_threshold=4) as grinder:
        handles = [await grinder.enqueue(echo, v) for v in (1, "refuse", 3, 4)]
        with anyio.fail_after(PATIENCE):
            assert await handles[0] == 1
            with pytest.raises(RuntimeError, match="queue full"):
                await handles[1]
            assert (await handles[2], await handles[3]) == (3, 4)
    # Submitted from a helper thread, never from the event loop's.
    assert len(RefusingExecutor.submit_threads) == 4
    assert threading.main_thread().name not in RefusingExecutor.submit_threads
    assert all("-submit" in name for name in RefusingExecutor.submit_threads)


# -- bounded queue ----------------------------------------------------------------


async def test_grinder_max_pending_refuses_without_wait() -> None:
    async with running(batch_size_threshold=100, max_pending=2) as grinder:
        gate = await occupy(grinder, 2)
        await grinder.enqueue(echo, 1)
        await grinder.enqueue(echo, 2)
        with pytest.raises(GrinderFullError, match="max_pending=2"):
            await grinder.enqueue(echo, 3, wait=False)
        with pytest.raises(GrinderFullError):
            await grinder.submit(echo, 3, wait=False)

        def from_thread() -> cf.Future[int]:
            return grinder.submit_from_thread(echo, 4, wait=False)

        refused = await anyio.to_thread.run_sync(from_thread)
        with pytest.raises(GrinderFullError):
            await anyio.to_thread.run_sync(refused.result, PATIENCE)
        assert grinder.stats()["pending"] == 2
        gate.open()


async def test_grinder_max_pending_waits_for_room_in_order() -> None:
    async with running(batch_size_threshold=100, max_pending=2) as grinder:
        gate = await occupy(grinder, 2)
        first = await grinder.enqueue(echo, 1)
        await grinder.enqueue(echo, 2)
        got: list[GrinderHandle[int]] = []
        gave_up: list[int] = []

        async def waiter(value: int) -> None:
            try:
                got.append(await grinder.enqueue(echo, value))
            except LeasePoolNotStartedError:
                gave_up.append(value)

        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter, 3)
            await wait_until(lambda: grinder.stats()["waiting_for_space"] == 1)
            tg.start_soon(waiter, 4)
            await wait_until(lambda: grinder.stats()["waiting_for_space"] == 2)
            assert first.cancel()  # room for exactly one: the first waiter
            await wait_until(lambda: len(got) == 1)
            assert grinder.stats()["waiting_for_space"] == 1
            assert grinder.stats()["pending"] == 2
            gate.open()
            await grinder.stop()  # drains what is queued; the waiter gives up
        assert got[0].result() == 3
        assert gave_up == [4]


# -- validation -------------------------------------------------------------------

BAD_COUNTS = [0, -1, True, 1.5, "2", None]
BAD_SECONDS = [0, -1.0, float("nan"), float("inf"), True, "1"]


@pytest.mark.parametrize(
    ("name", "value"),
    [("batch_size_threshold", v) for v in BAD_COUNTS]
    + [("max_concurrent_batches", v) for v in BAD_COUNTS]
    + [("max_pending", v) for v in BAD_COUNTS if v is not None]
    + [("max_wait_seconds", v) for v in BAD_SECONDS]
    + [("lease_seconds", v) for v in BAD_SECONDS]
    + [("owner_prefix", v) for v in ("", 7, None)]
    + [("logger", v) for v in ("leasepool", 1)]
    + [("executor_manager", v) for v in (None, "manager", object())],
)
def test_grinder_validation_names_argument_and_value(name: str, value: Any) -> None:
    options: dict[str, Any] = {"executor_manager": make_manager(), name: value}
    with pytest.raises(ValueError, match=name) as info:
        WorkGrinder(**options)
    assert repr(value) in str(info.value)


async def test_grinder_validation_of_call_options() -> None:
    async with running() as grinder:
        with pytest.raises(ValueError, match="owner"):
            await grinder.submit(echo, 1, owner=3)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="wait"):
            await grinder.enqueue(echo, 1, wait=1)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="callable"):
            await grinder.submit(42)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="cancel_pending"):
            await grinder.stop(cancel_pending="yes")  # type: ignore[arg-type]
        assert grinder.stats()["pending"] == 0


async def test_grinder_stats_keys_and_statistics() -> None:
    grinder = WorkGrinder(
        executor_manager=make_manager(),
        batch_size_threshold=5,
        max_wait_seconds=2.5,
        lease_seconds=30,
        max_pending=9,
    )
    before = grinder.stats()
    assert before["started"] is False
    assert {
        "started",
        "stopping",
        "pending",
        "batch_size_threshold",
        "max_wait_seconds",
        "lease_seconds",
        "oldest_wait_seconds",
    } <= before.keys()
    assert (before["batch_size_threshold"], before["max_wait_seconds"]) == (5, 2.5)
    assert (before["lease_seconds"], before["max_pending"]) == (30.0, 9)
    snapshot = grinder.statistics()
    assert snapshot.max_pending == 9
    assert snapshot.pending == 0
    assert grinder.stats_from_thread() == before  # not started: read directly
