"""Fault injection: killed workers, mass stop, and code of the user's that raises.

Each test drives a real manager (and grinder) into a fault and checks the two
promises that matter when things go wrong: every caller gets a result, an
exception or a cancellation within a bound (nothing hangs), and once stopped
nothing of the library's is left (threads, child processes, fds, tasks).

Jobs that run in worker processes are module-level functions, so that workers
can import them by name.
"""

from __future__ import annotations

import concurrent.futures as cf
import gc
import itertools
import logging
import math
import multiprocessing
import os
import random
import signal
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import pytest

from _leakcheck import (
    library_tasks,
    poll_until,
    snapshot,
    wait_no_leaks,
    warm_up_process_machinery,
)
from leasepool import (
    LeasedExecutorManager,
    LeaseExpiredError,
    LeasePoolError,
    LeasePoolNotStartedError,
    WorkGrinder,
)

pytestmark = pytest.mark.anyio

BOUND = 30.0  # seconds: far above honest latency; a hang fails within it
_prefixes = itertools.count(1)


def prefix() -> str:
    return f"lpfault{next(_prefixes)}x"


# -- jobs ---------------------------------------------------------------------


def add(a: int, b: int) -> int:
    return a + b


def sleep_then_return(seconds: float, value: int) -> int:
    time.sleep(seconds)
    return value


class JobFailedError(Exception):
    """Raised by a job on purpose; picklable, so it crosses processes."""


def fail_job(message: str) -> None:
    raise JobFailedError(message)


def failing_initializer() -> None:
    raise RuntimeError("initializer failed on purpose")


def exit_after(seconds: float) -> None:
    """Kill the worker process running this job, as a crash or OOM kill would."""
    time.sleep(seconds)
    os._exit(3)


def wait_gate(gate: threading.Event, value: int) -> int:
    if not gate.wait(BOUND):
        raise RuntimeError("the test never opened the gate")
    return value


class RaisingHandler(logging.Handler):
    """A log handler whose ``emit`` raises, as a broken user handler might."""

    def __init__(self, level: int) -> None:
        super().__init__(level)
        self.raised = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.raised += 1
        raise RuntimeError(f"log handler broke on {record.getMessage()!r}")


def raising_logger(level: int) -> logging.Logger:
    logger = logging.getLogger(f"leasepool.tests.faults.{prefix()}")
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    logger.addHandler(RaisingHandler(level))
    return logger


# -- the manager's own threads ---------------------------------------------------


async def test_manager_stop_leaves_no_shutdown_thread() -> None:
    """stop() returns only once its helper threads have exited, not just finished.

    The profile hook holds each ``-shutdown`` helper thread for a moment after
    its work is done (as a busy OS may), which used to let ``stop()`` return
    while the thread was still alive.
    """
    name = prefix()

    def hold_on_exit(frame: Any, event: str, arg: Any) -> None:
        if (
            event == "return"
            and frame.f_code is threading.Thread.run.__code__
            and threading.current_thread().name.endswith("-shutdown")
        ):
            time.sleep(0.2)

    threading.setprofile(hold_on_exit)
    try:
        manager = LeasedExecutorManager(max_pools=2, min_pools=2, name_prefix=name)
        await manager.start()
        lease = await manager.acquire()
        assert await lease.run(add, 1, 2) == 3
        await lease.release()
        await manager.stop()
        left = [t.name for t in threading.enumerate() if t.name.startswith(name)]
    finally:
        threading.setprofile(None)
    assert left == []


# -- a draining pool going idle outside any task ---------------------------------


def loop_errors() -> list[str]:
    """Collect what the asyncio loop reports to its exception handler.

    On trio an exception in a loop callback ends the run, so nothing is needed.
    """
    errors: list[str] = []
    try:
        import asyncio

        loop = asyncio.get_running_loop()
    except RuntimeError:
        return errors
    # Only the text is kept: holding the exception would keep its traceback,
    # and what it references, alive past the test.
    loop.set_exception_handler(
        lambda _, context: errors.append(repr(context.get("exception", context)))
    )
    return errors


def no_hidden_pools(manager: LeasedExecutorManager) -> bool:
    """Whether every pool not idle is held by a live lease (none retiring)."""
    stats = manager.stats()
    return bool(stats["leased"] == len(stats["leases"]))


def run_isolated(backend: str, scenario: Callable[[], Awaitable[None]]) -> None:
    """Run ``scenario`` in an event loop of its own, then collect its garbage.

    For scenarios where a pool goes idle in a bare loop callback: whatever a
    regression leaves behind there (a never-awaited coroutine, say) is then
    reported by this test, not by whichever test next shares the loop.
    """
    try:
        anyio.run(scenario, backend=backend)
    finally:
        gc.collect()


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_manager_draining_pool_that_breaks_is_replaced(backend: str) -> None:
    """A released lease's pool whose worker dies is retired; its slot comes back."""
    run_isolated(backend, _draining_pool_breaks)


async def _draining_pool_breaks() -> None:
    warm_up_process_machinery()
    before = snapshot()
    errors = loop_errors()
    manager = LeasedExecutorManager(
        backend="process", max_pools=1, workers_per_pool=1, name_prefix=prefix()
    )
    with anyio.fail_after(BOUND):
        async with manager:
            lease = await manager.acquire()
            future = lease.executor.submit(exit_after, 0.2)
            await lease.release()  # draining until the job ends: it crashes
            assert await poll_until(future.done, timeout=BOUND)
            assert isinstance(future.exception(), cf.BrokenExecutor)
            # The broken pool is retired and its slot comes back (or, with the
            # bug, the loop reports an error at once: no need to wait it out).
            await poll_until(lambda: errors or no_hidden_pools(manager), timeout=BOUND)
            assert errors == []
            async with await manager.acquire(timeout=BOUND) as again:
                assert await again.run(add, 1, 2) == 3
    assert errors == []
    await wait_no_leaks(before)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_manager_stop_while_draining_pool_goes_idle(backend: str) -> None:
    """The last job of a draining pool ending just as stop() begins is no error."""
    run_isolated(backend, _stop_while_draining)


async def _stop_while_draining() -> None:
    before = snapshot()
    errors = loop_errors()
    gate = threading.Event()
    manager = LeasedExecutorManager(
        max_pools=1, workers_per_pool=1, name_prefix=prefix()
    )
    with anyio.fail_after(BOUND):
        await manager.start()
        lease = await manager.acquire()
        future = lease.executor.submit(wait_gate, gate, 1)
        await lease.release()  # draining
        gate.set()
        assert future.result(timeout=BOUND) == 1
        # Block the loop a moment, so that the worker's "pool went idle" call
        # is queued on the loop before stop() begins: it then runs first.
        time.sleep(0.1)  # noqa: ASYNC251 - blocking the loop is the point
        await manager.stop()
    assert errors == []
    await wait_no_leaks(before)


# -- process workers killed under load ---------------------------------------------


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_process_backend_workers_sigkilled_under_load(backend: str) -> None:
    """SIGKILL random workers while callers run: each caller gets an outcome.

    Broken pools are retired and replaced, the worker bound holds throughout,
    and the manager serves again afterwards. The last step kills the worker
    of a lease released while its job runs, which random kills hit only now
    and then.
    """
    run_isolated(backend, _sigkill_under_load)


async def _sigkill_under_load() -> None:
    warm_up_process_machinery()
    before = snapshot()
    errors = loop_errors()
    max_pools, workers = 2, 2
    rng = random.Random(20240605)
    outcomes: dict[tuple[int, int], tuple[str, Any]] = {}
    most_children = 0
    kills = 0
    manager = LeasedExecutorManager(
        backend="process",
        max_pools=max_pools,
        workers_per_pool=workers,
        name_prefix=prefix(),
    )
    load_done = anyio.Event()

    async def caller(n: int) -> None:
        for round_ in range(5):
            key = (n, round_)
            try:
                async with await manager.acquire(timeout=BOUND) as lease:
                    value = await lease.run(sleep_then_return, 0.05, n * 100 + round_)
                outcomes[key] = ("ok", value)
            except Exception as exc:
                outcomes[key] = ("error", exc)

    async def killer() -> None:
        nonlocal most_children, kills
        while not load_done.is_set():
            children = [p for p in multiprocessing.active_children() if p.pid]
            most_children = max(most_children, len(children))
            if children and kills < 4:
                victim = rng.choice(children)
                try:
                    os.kill(victim.pid or 0, signal.SIGKILL)
                    kills += 1
                except ProcessLookupError:
                    pass
            assert manager.total_count <= max_pools
            await anyio.sleep(0.1)

    with anyio.fail_after(BOUND * 2):
        async with manager:
            async with anyio.create_task_group() as tg:
                tg.start_soon(killer)
                async with anyio.create_task_group() as callers:
                    for n in range(6):
                        callers.start_soon(caller, n)
                load_done.set()
            assert len(outcomes) == 30
            for key, (kind, value) in outcomes.items():
                if kind == "ok":
                    assert value == key[0] * 100 + key[1]
                else:
                    assert isinstance(value, cf.BrokenExecutor | LeasePoolError), value
                    assert str(value), f"{type(value).__name__} without a message"
            assert most_children <= max_pools * workers
            assert kills > 0
            # A broken pool is found out on its next job at the latest, then
            # retired: within a few tries the manager serves again.
            for _ in range(max_pools + 1):
                try:
                    async with await manager.acquire(timeout=BOUND) as lease:
                        assert await lease.run(add, 2, 3) == 5
                    break
                except cf.BrokenExecutor:
                    continue
            else:
                pytest.fail("the manager never recovered from killed workers")
            # A released lease's pool whose worker dies while draining.
            for _ in range(max_pools):
                lease = await manager.acquire(timeout=BOUND)
                future = lease.executor.submit(exit_after, 0.1)
                await lease.release()
                assert await poll_until(future.done, timeout=BOUND)
            await poll_until(lambda: errors or no_hidden_pools(manager), timeout=BOUND)
            assert errors == []
            leases = [await manager.acquire(timeout=BOUND) for _ in range(max_pools)]
            for lease in leases:
                assert await lease.run(add, 1, 1) == 2
                await lease.release()
            assert manager.stats()["peak_pools"] <= max_pools
    # The callers' errors hold, through their tracebacks, the leases and so
    # the broken pools' executors, whose pipes close when those are collected:
    # let go of them first, as a program done with its errors would.
    outcomes.clear()
    del lease, leases, future
    gc.collect()
    await wait_no_leaks(before)


# -- stop() with hundreds of callers ------------------------------------------------


async def test_manager_stop_with_hundreds_waiting_and_running() -> None:
    """stop() wakes 300 waiters at once, cancels queued jobs, waits for running."""
    before = snapshot()
    name = prefix()
    max_pools, workers = 4, 2
    manager = LeasedExecutorManager(
        max_pools=max_pools, workers_per_pool=workers, name_prefix=name
    )
    gate = threading.Event()
    waiters: dict[int, BaseException | str] = {}
    runs: dict[int, tuple[str, Any]] = {}
    futures: list[cf.Future[int]] = []
    counter = itertools.count()

    async def waiter(n: int) -> None:
        try:
            await manager.acquire(timeout=None if n % 2 else BOUND, owner=f"w{n}")
        except LeasePoolNotStartedError as exc:
            waiters[n] = exc
        else:
            waiters[n] = "served"

    async def runner(lease: Any, n: int) -> None:
        try:
            runs[n] = ("ok", await lease.run(wait_gate, gate, n))
        except Exception as exc:
            runs[n] = ("error", exc)

    with anyio.fail_after(BOUND):
        await manager.start()
        async with anyio.create_task_group() as tg:
            leases = [await manager.acquire(owner=f"holder{i}") for i in range(4)]
            for lease in leases:
                for _ in range(workers + 2):  # two running, two queued
                    tg.start_soon(runner, lease, next(counter))
            assert await poll_until(
                lambda: (
                    sum(e["running_jobs"] for e in manager.stats()["leases"])
                    == max_pools * (workers + 2)
                ),
                timeout=BOUND,
            )
            for lease in leases:  # one more queued job each, from the proxy
                futures.append(lease.executor.submit(wait_gate, gate, -1))
            for n in range(300):
                tg.start_soon(waiter, n)
            assert await poll_until(
                lambda: (
                    manager.waiting_count == 300
                    and sum(e["running_jobs"] for e in manager.stats()["leases"])
                    == max_pools * (workers + 3)
                ),
                timeout=BOUND,
            )
            stopped = anyio.Event()

            async def stop() -> None:
                await manager.stop()
                stopped.set()

            tg.start_soon(stop)
            # Every waiter is woken at once, without any job finishing.
            assert await poll_until(lambda: len(waiters) == 300, timeout=BOUND)
            assert all(
                isinstance(v, LeasePoolNotStartedError) for v in waiters.values()
            )
            # Queued work is cancelled; running work is waited for.
            queued = max_pools * 2
            assert await poll_until(lambda: len(runs) == queued, timeout=BOUND)
            for kind, value in runs.values():
                assert kind == "error"
                assert isinstance(value, LeaseExpiredError), value
            assert all(f.cancelled() for f in futures)
            assert not stopped.is_set()
            gate.set()
        assert stopped.is_set()
    assert sorted(v for k, v in runs.values() if k == "ok") == sorted(
        n for n, (k, _) in runs.items() if k == "ok"
    )
    assert sum(k == "ok" for k, _ in runs.values()) == max_pools * workers
    assert library_tasks(name) == []
    with pytest.raises(LeasePoolNotStartedError):
        await manager.acquire()
    await wait_no_leaks(before)


async def test_manager_stop_cancelled_while_jobs_run_does_not_hang() -> None:
    """A stop() whose caller gives up still stops the manager, without a hang."""
    before = snapshot()
    name = prefix()
    manager = LeasedExecutorManager(max_pools=2, workers_per_pool=1, name_prefix=name)
    gate = threading.Event()
    with anyio.fail_after(BOUND):
        await manager.start()
        lease = await manager.acquire()
        future = lease.executor.submit(wait_gate, gate, 7)
        with anyio.move_on_after(0.2) as scope:
            await manager.stop()
        assert scope.cancelled_caught
        await manager.stop()  # finishes the stop, or is a no-op
        assert not manager.started
        assert library_tasks(name) == []
        gate.set()
        assert await poll_until(future.done, timeout=BOUND)
    await wait_no_leaks(before)


# -- user code that raises ----------------------------------------------------------


@pytest.mark.parametrize("backend", ["thread", "process"])
async def test_lease_run_user_exception_keeps_pool_usable(backend: str) -> None:
    """A job's exception reaches its caller as is; the pool takes more work."""
    if backend == "process":
        warm_up_process_machinery()
    before = snapshot()
    manager = LeasedExecutorManager(
        backend=backend, max_pools=1, workers_per_pool=1, name_prefix=prefix()
    )
    with anyio.fail_after(BOUND):
        async with manager, await manager.acquire() as lease:
            for n in range(3):
                with pytest.raises(JobFailedError, match=f"boom {n}"):
                    await lease.run(fail_job, f"boom {n}")
                future = lease.executor.submit(fail_job, f"again {n}")
                assert await poll_until(future.done, timeout=BOUND)
                assert isinstance(future.exception(), JobFailedError)
                assert await lease.run(add, n, 1) == n + 1
            assert lease.active
            stats = manager.stats()
            assert stats["pools_retired"] == 0
            assert stats["total"] == 1
    await wait_no_leaks(before)


@pytest.mark.parametrize("backend", ["thread", "process"])
async def test_manager_initializer_raising_fails_callers_not_manager(
    backend: str,
) -> None:
    """Each caller gets a clear BrokenExecutor; broken pools are replaced."""
    if backend == "process":
        warm_up_process_machinery()
    before = snapshot()
    manager = LeasedExecutorManager(
        backend=backend,
        max_pools=2,
        workers_per_pool=1,
        name_prefix=prefix(),
        initializer=failing_initializer,
    )
    with anyio.fail_after(BOUND):
        async with manager:
            for _ in range(4):
                async with await manager.acquire(timeout=BOUND) as lease:
                    with pytest.raises(cf.BrokenExecutor) as info:
                        await lease.run(add, 1, 2)
                    assert str(info.value)
            assert manager.started
            # Each broken pool was retired, never reused (retiring finishes in
            # the background, hence the poll).
            assert await poll_until(
                lambda: manager.stats()["pools_retired"] == 4, timeout=BOUND
            )
            assert manager.total_count <= 2
    await wait_no_leaks(before)


class _Coroutine:
    """Looks like a coroutine to the size check: has ``__await__`` and ``close``."""

    closed = False

    def __await__(self) -> Any:
        return iter(())

    def close(self) -> None:
        type(self).closed = True


async def test_manager_size_provider_faults_never_crash() -> None:
    """A raising or nonsense size signal is logged and read as 0, every time."""
    before = snapshot()
    signals: list[Any] = [
        RuntimeError("provider failed"),
        None,
        "3",
        math.nan,
        math.inf,
        -5,
        True,
        10**400,  # above float range: asks for max_pools, must not overflow
        _Coroutine(),
        7,
    ]
    current: list[Any] = [0]
    calls = [0]

    def provider() -> Any:
        calls[0] += 1
        value = current[0]
        if isinstance(value, BaseException):
            raise value
        return value

    manager = LeasedExecutorManager(
        max_pools=3,
        min_pools=1,
        units_per_pool=1,
        size_provider=provider,
        name_prefix=prefix(),
    )
    with anyio.fail_after(BOUND):
        async with manager:
            for value in signals:
                current[0] = value
                seen = calls[0]
                manager.notify_scale_changed()
                assert await poll_until(lambda: calls[0] > seen, timeout=BOUND)  # noqa: B023
                assert manager.started
                expected = 3 if value == 10**400 else 3 if value == 7 else 1
                assert manager.desired_executor_count() == expected
                async with await manager.acquire(timeout=BOUND) as lease:
                    assert await lease.run(add, 1, 1) == 2
            assert _Coroutine.closed
    await wait_no_leaks(before)


async def test_manager_survives_log_handler_raising_on_warnings() -> None:
    """A broken WARNING handler must not stop revocation or the manager."""
    before = snapshot()
    logger = raising_logger(logging.WARNING)
    manager = LeasedExecutorManager(
        max_pools=1,
        lease_grace_seconds=0.0,
        logger=logger,
        name_prefix=prefix(),
    )
    with anyio.fail_after(BOUND):
        async with manager:
            lease = await manager.acquire(lease_seconds=0.05)
            assert await poll_until(lambda: not lease.active, timeout=BOUND)
            assert manager.started, "the supervisor died with the log handler"
            async with await manager.acquire(timeout=BOUND) as again:
                assert await again.run(add, 2, 2) == 4
    await wait_no_leaks(before)


async def test_manager_works_with_log_handler_raising_on_every_record() -> None:
    """Logging is a side channel: its failure must not change what callers get."""
    before = snapshot()
    logger = raising_logger(logging.DEBUG)
    manager = LeasedExecutorManager(
        max_pools=2, lease_grace_seconds=0.0, logger=logger, name_prefix=prefix()
    )
    with anyio.fail_after(BOUND):
        async with manager:
            async with await manager.acquire() as lease:
                assert await lease.run(add, 1, 2) == 3
            short = await manager.acquire(lease_seconds=0.05)
            assert await poll_until(lambda: not short.active, timeout=BOUND)
            manager.notify_scale_changed()
            async with await manager.acquire(timeout=BOUND) as lease:
                assert await lease.run(add, 3, 4) == 7
    await wait_no_leaks(before)


# -- the grinder: leases expiring mid-batch -------------------------------------------


async def test_grinder_lease_expiring_mid_batch_thread() -> None:
    """Items not started fail with LeaseExpiredError; running ones finish."""
    before = snapshot()
    gate = threading.Event()
    manager = LeasedExecutorManager(
        max_pools=1, workers_per_pool=2, lease_grace_seconds=0.0, name_prefix=prefix()
    )
    grinder = WorkGrinder(
        executor_manager=manager,
        lease_seconds=0.3,
        batch_size_threshold=8,
        max_wait_seconds=0.05,
        owner_prefix=prefix(),
    )
    with anyio.fail_after(BOUND):
        async with manager, grinder:
            handles = [await grinder.enqueue(wait_gate, gate, n) for n in range(2)]
            handles += [await grinder.enqueue(add, n, 0) for n in range(2, 8)]
            # The two workers hold the two gated items past the hard expiry.
            assert await poll_until(
                lambda: all(h.done() for h in handles[2:]), timeout=BOUND
            )
            for handle in handles[2:]:
                assert isinstance(handle.exception(), LeaseExpiredError)
            assert not any(h.done() for h in handles[:2])
            gate.set()
            assert [await h for h in handles[:2]] == [0, 1]
            # The quarantined pool came back: the grinder runs new work.
            assert await grinder.submit(add, 20, 22) == 42
    await wait_no_leaks(before)


async def test_grinder_lease_expiring_mid_batch_process() -> None:
    """On processes the revoked batch's workers are killed; all items settle."""
    warm_up_process_machinery()
    before = snapshot()
    manager = LeasedExecutorManager(
        backend="process",
        max_pools=1,
        workers_per_pool=2,
        lease_grace_seconds=0.0,
        name_prefix=prefix(),
    )
    grinder = WorkGrinder(
        executor_manager=manager,
        lease_seconds=0.5,
        batch_size_threshold=8,
        max_wait_seconds=0.05,
        owner_prefix=prefix(),
    )
    with anyio.fail_after(BOUND):
        async with manager, grinder:
            handles = [
                await grinder.enqueue(sleep_then_return, 5.0 if n < 4 else 0.0, n)
                for n in range(8)
            ]
            assert await poll_until(
                lambda: all(h.done() for h in handles), timeout=BOUND
            )
            for n, handle in enumerate(handles):
                exc = handle.exception()
                if exc is None:
                    assert handle.result() == n
                    assert n >= 4, "a 5 s item finished under a 0.5 s lease"
                else:
                    assert isinstance(exc, LeasePoolError | cf.BrokenExecutor), exc
                    assert str(exc)
            assert await grinder.submit(add, 1, 1) == 2
    await wait_no_leaks(before)
