"""Starting, stopping, restarting, and the rule that a manager has one owner loop."""

from __future__ import annotations

import gc
import logging
import sys
import threading
import time
import warnings
import weakref
from typing import Any

import anyio
import pytest

from _helpers import (
    PATIENCE,
    Gate,
    make_manager,
    manager_threads,
    unique_prefix,
    wait_threads_gone,
    wait_until,
)
from leasepool import (
    LeasedExecutorManager,
    LeaseExpiredError,
    LeasePoolNotStartedError,
)

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(20)]


async def test_manager_async_with_starts_and_stops() -> None:
    manager = make_manager(max_pools=3, min_pools=2)
    assert not manager.started
    async with manager as entered:
        assert entered is manager
        assert manager.started
        assert manager.total_count == 2
        assert manager.available_count == 2
    assert not manager.started
    assert manager.total_count == 0


async def test_manager_start_stop_are_idempotent() -> None:
    manager = make_manager(max_pools=2)
    await manager.stop()  # stopping a stopped manager does nothing
    await manager.start()
    lease = await manager.acquire()
    await manager.start()  # no-op: same pools, same lease
    assert manager.total_count == 1
    assert lease.active
    await manager.stop()
    await manager.stop()
    assert not manager.started
    assert not lease.active


async def test_manager_restarts_after_stop() -> None:
    manager = make_manager()
    for _ in range(3):
        async with manager, await manager.acquire() as lease:
            assert await lease.run(sum, [1, 2, 3]) == 6
        assert manager.total_count == 0
    assert manager.stats()["leases_granted"] == 3


async def test_manager_stop_wakes_waiters_with_not_started() -> None:
    manager = make_manager()
    await manager.start()
    await manager.acquire()
    outcomes: list[BaseException] = []

    async def wait_for_lease() -> None:
        try:
            await manager.acquire()
        except LeasePoolNotStartedError as exc:
            outcomes.append(exc)

    with anyio.fail_after(PATIENCE):
        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(wait_for_lease)
            await wait_until(lambda: manager.waiting_count == 3)
            await manager.stop()
    assert len(outcomes) == 3
    assert manager.waiting_count == 0


async def test_manager_stop_makes_leases_reject_work() -> None:
    manager = make_manager()
    await manager.start()
    lease = await manager.acquire()
    executor = lease.executor
    await manager.stop()
    with pytest.raises(LeaseExpiredError):
        await lease.run(int)
    with pytest.raises(LeaseExpiredError):
        executor.submit(int)
    await lease.release()  # still harmless
    await manager.release(lease.lease_id)


async def test_manager_stop_waits_for_running_jobs() -> None:
    prefix = unique_prefix()
    manager = make_manager(workers_per_pool=2, name_prefix=prefix)
    gate = Gate()
    await manager.start()
    lease = await manager.acquire()
    future = lease.executor.submit(gate, "done")
    stopped = anyio.Event()

    async def stop() -> None:
        await manager.stop()
        stopped.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(stop)
        await wait_until(gate.entered.is_set)
        await anyio.sleep(0.05)
        assert not stopped.is_set()
        assert not lease.active  # no new work is taken while stopping
        gate.open()
    assert future.result() == "done"
    assert stopped.is_set()
    assert manager_threads(prefix) == []


async def test_manager_stop_cancels_queued_jobs() -> None:
    manager = make_manager(workers_per_pool=1)
    gate = Gate()
    queued = Gate()
    await manager.start()
    lease = await manager.acquire()
    lease.executor.submit(gate)
    with anyio.fail_after(PATIENCE):
        async with anyio.create_task_group() as tg:

            async def run_queued() -> None:
                # The queued job never starts: its caller hears why, clearly.
                with pytest.raises(LeaseExpiredError):
                    await lease.run(queued)

            tg.start_soon(run_queued)
            await wait_until(gate.entered.is_set)
            await wait_until(lambda: manager.stats()["leases"][0]["running_jobs"] == 2)
            tg.start_soon(manager.stop)
            await anyio.sleep(0.02)
            gate.open()
    assert queued.calls == 0


async def test_manager_concurrent_stops_both_wait() -> None:
    prefix = unique_prefix()
    manager = make_manager(max_pools=2, min_pools=2, name_prefix=prefix)
    await manager.start()
    async with await manager.acquire() as lease:
        await lease.run(int)
    done: list[int] = []

    async def stop(n: int) -> None:
        await manager.stop()
        assert not manager.started
        assert manager.total_count == 0
        done.append(n)

    with anyio.fail_after(PATIENCE):
        async with anyio.create_task_group() as tg:
            tg.start_soon(stop, 1)
            tg.start_soon(stop, 2)
    assert sorted(done) == [1, 2]
    assert not manager_threads(prefix)


async def test_manager_start_while_stopping_restarts_after_stop() -> None:
    manager = make_manager()
    gate = Gate()
    await manager.start()
    lease = await manager.acquire()
    lease.executor.submit(gate)
    async with anyio.create_task_group() as tg:
        tg.start_soon(manager.stop)
        await wait_until(lambda: not manager.started)
        gate.open()
        with anyio.fail_after(PATIENCE):
            await manager.start()
    assert manager.started
    async with await manager.acquire() as lease2:
        assert await lease2.run(len, "abc") == 3
    await manager.stop()


async def test_manager_body_error_still_stops_and_propagates_bare() -> None:
    manager = make_manager()

    async def body() -> None:
        async with manager, manager.lease() as lease:
            await lease.run(int)
            raise KeyError("mine")

    with pytest.raises(KeyError) as info:
        await body()
    assert type(info.value) is KeyError
    assert not manager.started


async def test_manager_cancelled_start_leaves_it_stopped() -> None:
    manager = make_manager()
    with anyio.CancelScope() as scope:
        scope.cancel()
        await manager.start()
    assert not manager.started
    assert manager.total_count == 0
    async with manager:  # and it still starts normally
        assert manager.started


async def test_manager_cancelled_stop_still_stops() -> None:
    prefix = unique_prefix()
    manager = make_manager(max_pools=2, min_pools=2, name_prefix=prefix)
    with anyio.CancelScope() as scope:
        async with manager:
            async with await manager.acquire() as lease:
                await lease.run(int)
            scope.cancel()
            await anyio.sleep(PATIENCE)
    assert scope.cancelled_caught
    assert not manager.started
    assert manager.total_count == 0
    await wait_threads_gone(prefix)
    async with manager:
        assert manager.started


async def test_manager_cancelled_stop_does_not_wait_for_running_jobs() -> None:
    manager = make_manager()
    gate = Gate()
    try:
        with anyio.fail_after(PATIENCE), anyio.CancelScope() as scope:
            async with manager:
                lease = await manager.acquire()
                lease.executor.submit(gate)
                await wait_until(gate.entered.is_set)
                scope.cancel()
        assert not manager.started
        assert manager.total_count == 0
    finally:
        gate.open()


async def test_manager_no_thread_left_after_stop() -> None:
    prefix = unique_prefix()
    manager = make_manager(
        max_pools=3,
        min_pools=2,
        workers_per_pool=2,
        name_prefix=prefix,
        lease_grace_seconds=0,
    )
    gate = Gate()
    async with manager:
        leases = [await manager.acquire() for _ in range(3)]
        for lease in leases:
            await lease.run(threading.get_ident)
        # One lease is revoked while its job runs (quarantine, shutdown
        # threads), one released while draining, one released idle.
        await leases[0].release()
        leases[0] = await manager.acquire(lease_seconds=0.05)
        leases[0].executor.submit(gate)
        leases[1].executor.submit(gate)
        await leases[1].release()
        await leases[2].release()
        await wait_until(lambda: manager.stats()["quarantined"] == 1)
        gate.open()
        await wait_until(lambda: manager.stats()["draining"] == 0)
        await wait_until(lambda: manager.stats()["pools_retired"] == 1)
        assert manager_threads(prefix)
    assert manager_threads(prefix) == []


async def test_manager_threads_are_named_from_prefix() -> None:
    prefix = unique_prefix()
    manager = make_manager(max_pools=2, workers_per_pool=2, name_prefix=prefix)
    async with manager, await manager.acquire() as a, await manager.acquire() as b:
        names = {
            await a.run(lambda: threading.current_thread().name),
            await b.run(lambda: threading.current_thread().name),
        }
    assert len(names) == 2
    for name in names:
        assert name.startswith(prefix + "-")
    assert not manager_threads(prefix)


async def test_manager_other_loop_is_refused_without_state_change(
    anyio_backend: str,
) -> None:
    manager = make_manager(max_pools=2)
    async with manager:
        lease = await manager.acquire(owner="main")
        before = manager.stats()
        refused: list[str] = []

        async def from_other_loop() -> None:
            attempts: dict[str, Any] = {
                "start": manager.start,
                "stop": manager.stop,
                "acquire": manager.acquire,
                "acquire_wait_false": lambda: manager.acquire(wait=False),
                "release_by_id": lambda: manager.release(lease.lease_id),
                "lease_release": lease.release,
                "lease_run": lambda: lease.run(int),
            }
            for name, attempt in attempts.items():
                with pytest.raises(RuntimeError, match="event loop"):
                    await attempt()
                refused.append(name)
            with pytest.raises(RuntimeError, match="event loop"):
                manager.acquire_nowait()
            refused.append("acquire_nowait")

        def in_thread() -> None:
            for other in ("asyncio", "trio"):
                anyio.run(from_other_loop, backend=other)

        with anyio.fail_after(PATIENCE * 2):
            await anyio.to_thread.run_sync(in_thread)
        assert len(refused) == 16
        assert manager.started
        assert lease.active
        after = manager.stats()
        for key in ("total", "leased", "available", "waiting", "leases_granted"):
            assert after[key] == before[key], key
        assert [entry["lease_id"] for entry in after["leases"]] == [lease.lease_id]
        assert await lease.run(len, "ok") == 2
        await lease.release()
    assert not manager.started


async def test_manager_notify_scale_changed_is_safe_when_stopped() -> None:
    manager = make_manager()
    manager.notify_scale_changed()  # before start: nothing to wake
    async with manager:
        pass
    thread = threading.Thread(target=manager.notify_scale_changed)
    thread.start()
    thread.join()


async def test_manager_repr_tells_state() -> None:
    manager = make_manager(max_pools=3)
    assert "stopped" in repr(manager)
    async with manager, await manager.acquire():
        text = repr(manager)
        assert "1/3 leased" in text
        assert "0 waiting" in text
        assert "stopped" not in text


@pytest.mark.parametrize("runtime", ["asyncio", "trio"])
def test_manager_job_finishing_after_run_ended_is_silent(
    runtime: str,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.DEBUG)
    thread_errors: list[Any] = []
    unraisable: list[Any] = []
    monkeypatch.setattr(threading, "excepthook", thread_errors.append)
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    prefix = unique_prefix()
    gate = Gate()
    leftovers: dict[str, Any] = {}

    async def main() -> None:
        manager = LeasedExecutorManager(
            max_pools=1, workers_per_pool=3, name_prefix=prefix
        )
        await manager.start()
        lease = await manager.acquire()
        # A job submitted through the proxy, one whose awaiting caller was
        # cancelled, and one still awaited when the run ends.
        leftovers["future"] = lease.executor.submit(gate, "proxy")
        with anyio.move_on_after(0.05):
            await lease.run(gate)
        async with anyio.create_task_group() as tg:
            tg.start_soon(lease.run, gate)
            await wait_until(lambda: gate.calls == 3)
            tg.cancel_scope.cancel()
        await lease.release()  # draining: the manager asked to be told
        leftovers["manager"] = weakref.ref(manager)
        # Kept alive past the run to check its state; dropped before the
        # check that nothing else keeps it.
        leftovers["strong"] = manager
        # The run ends here with the manager started and three jobs running.

    anyio.run(main, backend=runtime)
    manager = leftovers.pop("strong")
    assert not manager.started
    # The program never stopped it: collecting it says so, once. (Its lease
    # was released, so no lease warns.)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del manager
        gc.collect()
    messages = [str(w.message) for w in caught if w.category is ResourceWarning]
    del caught  # a recorded warning holds its source
    assert leftovers["manager"]() is None
    assert len(messages) == 1
    assert "never stopped" in messages[0]
    gate.open()
    assert leftovers["future"].result(timeout=PATIENCE) == "proxy"
    deadline = threading.Event()
    for _ in range(int(PATIENCE / 0.01)):
        if not manager_threads(prefix):
            break
        deadline.wait(0.01)
    assert not manager_threads(prefix)
    gc.collect()
    assert leftovers["manager"]() is None
    assert thread_errors == []
    assert unraisable == []
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == []


async def test_manager_acquire_while_stopping_is_not_started() -> None:
    manager = make_manager(max_pools=2)
    gate = Gate()
    await manager.start()
    lease = await manager.acquire()
    lease.executor.submit(gate)
    async with anyio.create_task_group() as tg:
        tg.start_soon(manager.stop)
        await wait_until(lambda: not manager.started)
        with pytest.raises(LeasePoolNotStartedError):
            await manager.acquire()
        with pytest.raises(LeasePoolNotStartedError):
            manager.acquire_nowait()
        gate.open()


def _use_once(manager: LeasedExecutorManager, *, stop: bool) -> Any:
    async def main() -> int:
        if stop:
            async with manager, await manager.acquire() as lease:
                return await lease.run(len, "four")
        await manager.start()
        lease = await manager.acquire()
        return await lease.run(len, "four")  # the run ends with it started

    return main


@pytest.mark.parametrize(
    ("first", "second"), [("asyncio", "trio"), ("trio", "asyncio")]
)
@pytest.mark.parametrize("stop_first", [True, False])
def test_manager_restarts_under_another_runtime(
    first: str, second: str, stop_first: bool
) -> None:
    prefix = unique_prefix()
    manager = LeasedExecutorManager(max_pools=1, name_prefix=prefix)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert anyio.run(_use_once(manager, stop=stop_first), backend=first) == 4
        gc.collect()
    # Without a stop the first run's lease ends with the run, never released.
    unreleased = [w for w in caught if "never released" in str(w.message)]
    assert len(unreleased) == (0 if stop_first else 1)
    del caught
    assert not manager.started
    assert manager.total_count == 0
    assert anyio.run(_use_once(manager, stop=True), backend=second) == 4
    assert not manager.started


def test_manager_runs_on_uvloop(caplog: pytest.LogCaptureFixture) -> None:
    pytest.importorskip("uvloop")
    caplog.set_level(logging.DEBUG)
    prefix = unique_prefix()
    gate = Gate()
    leftover: dict[str, Any] = {}

    async def main() -> None:
        manager = LeasedExecutorManager(
            max_pools=1, name_prefix=prefix, lease_grace_seconds=0
        )
        async with manager:
            lease = await manager.acquire(lease_seconds=0.05)
            assert await lease.run(len, "uv") == 2
            lease.executor.submit(gate)
            await wait_until(lambda: not lease.active)
            gate.open()
            async with await manager.acquire() as again:
                assert await again.run(len, "loop") == 4
        # Left behind on purpose: a draining job that finishes after the loop
        # is closed, so its "pool went idle" message has nowhere to go.
        await manager.start()
        late = await manager.acquire()
        leftover["future"] = late.executor.submit(time.sleep, 0.2)
        await late.release()
        leftover["manager"] = manager

    anyio.run(main, backend="asyncio", backend_options={"use_uvloop": True})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del leftover["manager"]
        gc.collect()
    # Never stopped, on purpose: collecting it says so.
    messages = [str(w.message) for w in caught if w.category is ResourceWarning]
    del caught  # a recorded warning holds its source
    assert len(messages) == 1
    assert "never stopped" in messages[0]
    assert leftover["future"].result(timeout=PATIENCE) is None
    for _ in range(500):
        if not manager_threads(prefix):
            break
        gate.opened.wait(0.01)
    assert not manager_threads(prefix)
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
