"""The process backend: revocation that kills, crashes, pickling, recycling.

Jobs are module-level functions so that worker processes can import them by
name. Every test checks that stop() leaves no child process, thread or fd.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import multiprocessing
import os
import pickle
import signal
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures.process import BrokenProcessPool
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from _helpers import PATIENCE, unique_prefix, wait_until
from _leakcheck import snapshot, wait_no_leaks, warm_up_process_machinery
from leasepool import LeasedExecutorManager, LeasePoolError, WorkerExceptionError
from leasepool._backends import ProcessBackend

pytestmark = pytest.mark.timeout(60)


# -- jobs (run in worker processes) -----------------------------------------


def add(a: int, b: int) -> int:
    return a + b


def worker_pid() -> int:
    return os.getpid()


def note_pid_then_sleep(path: str, seconds: float) -> int:
    with open(path, "a", encoding="utf-8") as file:
        file.write(f"{os.getpid()}\n")
    time.sleep(seconds)
    return os.getpid()


def exit_abruptly(code: int) -> None:
    os._exit(code)


def make_lock() -> Any:
    return threading.Lock()


def raise_with_lock() -> None:
    error = ValueError("carries a lock")
    error.lock = threading.Lock()  # type: ignore[attr-defined]
    raise error


class NeedsTwoArguments(Exception):
    """Pickles as ``(message,)`` but cannot be rebuilt from it."""

    def __init__(self, first: str, second: str) -> None:
        super().__init__(f"{first} and {second}")


def raise_needs_two() -> None:
    raise NeedsTwoArguments("this", "that")


def raise_value_error(message: str) -> None:
    raise ValueError(message)


def _refuse_to_load() -> None:
    raise RuntimeError("this object cannot be rebuilt in a worker")


class LoadsNowhere:
    """Pickles fine in the parent; unpickling it raises."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (_refuse_to_load, ())


def failing_initializer() -> None:
    raise RuntimeError("the initializer failed on purpose")


# -- helpers -------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def _process_machinery() -> None:
    # The forkserver and resource tracker live for the whole session; start
    # them before any leak snapshot so they are not taken for leaks.
    warm_up_process_machinery()


@asynccontextmanager
async def process_manager(**kwargs: Any) -> AsyncIterator[LeasedExecutorManager]:
    """A process manager that must leave no process, thread or fd behind."""
    kwargs.setdefault("max_pools", 1)
    kwargs.setdefault("workers_per_pool", 1)
    kwargs.setdefault("name_prefix", unique_prefix())
    before = snapshot()
    async with LeasedExecutorManager(backend="process", **kwargs) as manager:
        yield manager
    await wait_no_leaks(before)


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a live (not zombie) process."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # not Linux, or gone meanwhile: trust kill(0)
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def read_pids(path: Path) -> list[int]:
    try:
        return [int(line) for line in path.read_text().split()]
    except FileNotFoundError:
        return []


# -- tests ---------------------------------------------------------------------


@pytest.mark.anyio
async def test_process_backend_runs_jobs_and_leaves_nothing_behind() -> None:
    async with (
        process_manager(workers_per_pool=2) as manager,
        await manager.acquire() as lease,
    ):
        assert await lease.run(add, 2, 3) == 5
        pid = await lease.run(worker_pid)
        assert pid != os.getpid()
        futures = [lease.executor.submit(add, i, i) for i in range(8)]
        await wait_until(lambda: all(f.done() for f in futures))
        assert [f.result() for f in futures] == [2 * i for i in range(8)]


@pytest.mark.anyio
async def test_process_revoked_lease_kills_its_workers_and_frees_the_slot(
    tmp_path: Path,
) -> None:
    pids_file = tmp_path / "pids"
    async with process_manager(
        workers_per_pool=2, default_lease_seconds=1.0, lease_grace_seconds=0
    ) as manager:
        # Start both workers and have them import this module first, so that
        # the short lease is all job.
        async with manager.lease(lease_seconds=PATIENCE * 2) as warm_up:
            seen: set[int] = set()
            with anyio.fail_after(PATIENCE):
                while len(seen) < 2:
                    both = [
                        warm_up.executor.submit(note_pid_then_sleep, os.devnull, 0.1)
                        for _ in range(2)
                    ]
                    for future in both:
                        await wait_until(future.done)
                        seen.add(future.result())
        lease = await manager.acquire(owner="runaway")
        errors: list[BaseException] = []

        async def run_forever() -> None:
            try:
                await lease.run(note_pid_then_sleep, str(pids_file), 60)
            except BaseException as exc:
                errors.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(run_forever)
            tg.start_soon(run_forever)
            await wait_until(lambda: len(read_pids(pids_file)) == 2)
            # The only slot is taken: this waits for the revocation.
            with anyio.fail_after(PATIENCE):
                async with await manager.acquire(
                    owner="next", lease_seconds=PATIENCE
                ) as fresh:
                    assert await fresh.run(add, 1, 1) == 2
        killed = read_pids(pids_file)
        await wait_until(lambda: not any(pid_alive(pid) for pid in killed))
        assert len(errors) == 2
        for error in errors:
            assert isinstance(error, BrokenProcessPool)
            assert "revoked" in str(error)
        assert manager.stats()["leases_revoked"] == 1


@pytest.mark.anyio
async def test_process_sigkilled_worker_fails_only_its_own_pool(
    tmp_path: Path,
) -> None:
    pids_file = tmp_path / "pids"
    async with process_manager(max_pools=2) as manager:
        victim = await manager.acquire(owner="victim")
        bystander = await manager.acquire(owner="bystander")
        bystander_pid = await bystander.run(worker_pid)

        async def kill_when_running() -> None:
            await wait_until(lambda: read_pids(pids_file))
            os.kill(read_pids(pids_file)[0], signal.SIGKILL)

        async with anyio.create_task_group() as tg:
            tg.start_soon(kill_when_running)
            with pytest.raises(BrokenProcessPool), anyio.fail_after(PATIENCE):
                await victim.run(note_pid_then_sleep, str(pids_file), 60)
        # The other lease's pool and worker are untouched.
        assert await bystander.run(worker_pid) == bystander_pid
        await victim.release()
        await bystander.release()
        await wait_until(lambda: manager.stats()["pools_retired"] >= 1)
        async with await manager.acquire() as lease:
            assert await lease.run(add, 20, 22) == 42


@pytest.mark.anyio
async def test_process_worker_exiting_abruptly_retires_the_pool() -> None:
    async with process_manager() as manager:
        async with await manager.acquire() as lease:
            with pytest.raises(BrokenProcessPool):
                await lease.run(exit_abruptly, 3)
        await wait_until(lambda: manager.stats()["pools_retired"] >= 1)
        async with await manager.acquire() as lease:
            assert await lease.run(add, 1, 2) == 3


@pytest.mark.anyio
async def test_process_unpicklable_callable_names_it_and_pool_stays_usable() -> None:
    async with process_manager() as manager, await manager.acquire() as lease:
        with pytest.raises(pickle.PicklingError, match=r"function .*<lambda>"):
            await lease.run(lambda: 1)
        assert await lease.run(add, 1, 2) == 3


@pytest.mark.anyio
async def test_process_unpicklable_argument_names_its_position() -> None:
    async with process_manager() as manager, await manager.acquire() as lease:
        with pytest.raises(pickle.PicklingError, match=r"argument 1 of .*\.add"):
            await lease.run(add, 1, threading.Lock())  # type: ignore[arg-type]
        with pytest.raises(pickle.PicklingError, match="keyword argument 'b'"):
            await lease.run(add, 1, b=threading.Lock())  # type: ignore[arg-type]
        assert await lease.run(add, 1, 2) == 3


@pytest.mark.anyio
async def test_process_argument_that_cannot_be_rebuilt_fails_only_its_call() -> None:
    async with process_manager() as manager, await manager.acquire() as lease:
        pid = await lease.run(worker_pid)
        with pytest.raises(pickle.UnpicklingError, match="rebuilt in the worker"):
            await lease.run(add, 1, LoadsNowhere())  # type: ignore[arg-type]
        # Same worker: the failure did not kill it.
        assert await lease.run(worker_pid) == pid


@pytest.mark.anyio
async def test_process_unpicklable_result_names_its_type() -> None:
    async with process_manager() as manager, await manager.acquire() as lease:
        with pytest.raises(pickle.PicklingError, match=r"result of .*make_lock"):
            await lease.run(make_lock)
        assert await lease.run(add, 1, 2) == 3


@pytest.mark.anyio
async def test_process_unpicklable_exception_arrives_as_worker_exception_error() -> (
    None
):
    async with process_manager() as manager, await manager.acquire() as lease:
        with pytest.raises(WorkerExceptionError) as info:
            await lease.run(raise_with_lock)
        assert info.value.exception_type == "ValueError"
        assert info.value.message == "carries a lock"
        assert "cannot be pickled" in str(info.value)
        assert "raise_with_lock" in str(info.value.__cause__)
        assert isinstance(info.value, LeasePoolError)
        assert await lease.run(add, 1, 2) == 3


@pytest.mark.anyio
async def test_process_exception_not_rebuildable_fails_only_its_own_call() -> None:
    async with process_manager(workers_per_pool=2) as manager:
        async with await manager.acquire() as lease:
            # A job running beside the failing one must not be touched.
            slow = lease.executor.submit(note_pid_then_sleep, os.devnull, 0.3)
            with pytest.raises(WorkerExceptionError, match="NeedsTwoArguments"):
                await lease.run(raise_needs_two)
            await wait_until(slow.done)
            assert isinstance(slow.result(), int)
            assert await lease.run(add, 1, 2) == 3
        assert manager.stats()["pools_retired"] == 0


@pytest.mark.anyio
async def test_process_job_exception_keeps_type_and_remote_traceback() -> None:
    async with process_manager() as manager, await manager.acquire() as lease:
        with pytest.raises(ValueError, match="plain") as info:
            await lease.run(raise_value_error, "plain")
        assert type(info.value) is ValueError
        assert "raise_value_error" in str(info.value.__cause__)


@pytest.mark.anyio
async def test_process_initializer_failure_errors_without_respawning() -> None:
    async with process_manager(
        workers_per_pool=2, initializer=failing_initializer
    ) as manager:
        async with await manager.acquire() as lease:
            with pytest.raises(BrokenProcessPool), anyio.fail_after(PATIENCE):
                await lease.run(add, 1, 2)
        # The broken pool is retired; its replacement starts its two workers,
        # which fail the same way once, and nothing starts them again.
        await wait_until(lambda: manager.stats()["pools_retired"] >= 1)
        await anyio.sleep(0.5)
        assert len(multiprocessing.active_children()) <= 2


@pytest.mark.anyio
async def test_process_max_tasks_per_child_recycles_without_stalling() -> None:
    # gh-115634: with one worker and max_tasks_per_child=2 the stdlib of
    # Python 3.11-3.13 stops replacing workers and the queue stalls.
    async with (
        process_manager(max_tasks_per_child=2) as manager,
        await manager.acquire() as lease,
    ):
        futures = [lease.executor.submit(worker_pid) for _ in range(6)]
        await wait_until(lambda: all(f.done() for f in futures), timeout=PATIENCE * 2)
        pids = [f.result() for f in futures]
        assert len(set(pids)) == 3
        assert all(pids.count(pid) == 2 for pid in pids)


@pytest.mark.anyio
async def test_process_cancelled_caller_leaves_queued_job_unrun(
    tmp_path: Path,
) -> None:
    pids_file = tmp_path / "pids"
    async with process_manager() as manager, await manager.acquire() as lease:
        busy = lease.executor.submit(note_pid_then_sleep, str(pids_file), 0.5)
        # ProcessPoolExecutor moves one job per worker, plus one, into its
        # call queue at once; those count as started and cannot be
        # cancelled. The third job still waits in the parent.
        ahead = lease.executor.submit(note_pid_then_sleep, str(pids_file), 0)
        with anyio.move_on_after(0.05):
            await lease.run(note_pid_then_sleep, str(pids_file), 0)
        await wait_until(lambda: busy.done() and ahead.done())
        assert len(read_pids(pids_file)) == 2


def test_process_backend_defaults_to_a_non_fork_start_method() -> None:
    method = ProcessBackend().mp_context.get_start_method()
    assert method in ("forkserver", "spawn")
    if "forkserver" in multiprocessing.get_all_start_methods():
        assert method == "forkserver"


def test_process_backend_keeps_an_explicit_context() -> None:
    context = multiprocessing.get_context("spawn")
    assert ProcessBackend({"mp_context": context}).mp_context is context


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"initializer": 3}, "initializer must be a callable or None, got 3"),
        ({"initargs": [1]}, r"initargs must be a tuple, got \[1\]"),
        ({"mp_context": "spawn"}, "mp_context must be a multiprocessing context"),
        ({"max_tasks_per_child": 0}, "max_tasks_per_child must be an integer > 0"),
        (
            {
                "max_tasks_per_child": 2,
                "mp_context": multiprocessing.get_context("fork"),
            },
            "max_tasks_per_child cannot be combined with the 'fork' start method",
        ),
    ],
)
def test_process_backend_rejects_bad_executor_options(
    options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        LeasedExecutorManager(backend="process", max_pools=1, **options)


def test_process_worker_exception_error_survives_pickling() -> None:
    error = WorkerExceptionError("pkg.Error", "text", "why")
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.exception_type, copy.message, copy.reason) == (
        "pkg.Error",
        "text",
        "why",
    )
    assert str(copy) == str(error)


def test_process_pool_used_without_a_manager_cleans_up() -> None:
    warm_up_process_machinery()
    before = snapshot()
    backend = ProcessBackend()
    backend.open(logging.getLogger("test"))
    pool = backend.create_pool(2, "standalone")
    try:
        assert pool.submit(add, 2, 2).result(timeout=PATIENCE) == 4
        assert list(pool.map(add, [1, 2], [3, 4])) == [4, 6]
        pending = pool.submit(time.sleep, 0.2)
        assert not pending.cancel() or pending.cancelled()
    finally:
        backend.shutdown_pool(pool, revoke=False)
        backend.close()
    from _leakcheck import assert_no_leaks

    assert_no_leaks(before)
    with pytest.raises(RuntimeError):
        pool.submit(add, 1, 1)


def test_process_revoked_pool_fails_waiting_jobs_with_clear_error() -> None:
    warm_up_process_machinery()
    before = snapshot()
    backend = ProcessBackend()
    pool = backend.create_pool(1, "standalone-revoked")
    running = pool.submit(time.sleep, 30)
    queued = pool.submit(add, 1, 1)
    deadline = time.monotonic() + PATIENCE
    while not running.running() and time.monotonic() < deadline:
        time.sleep(0.01)
    backend.shutdown_pool(pool, revoke=True)
    for future in (running, queued):
        with pytest.raises((BrokenProcessPool, cf.CancelledError)):
            future.result(timeout=PATIENCE)
    with pytest.raises(BrokenProcessPool, match="revoked"):
        running.result()
    backend.close()
    from _leakcheck import assert_no_leaks

    assert_no_leaks(before)


def note_token(path: str, token: str) -> str:
    with open(path, "a", encoding="utf-8") as file:
        file.write(f"{token}\n")
    return token


needs_forkserver = pytest.mark.skipif(
    "forkserver" not in multiprocessing.get_all_start_methods(),
    reason="holds the forkserver warm-up lock to keep workers from starting",
)


@needs_forkserver
def test_process_jobs_submitted_while_workers_start_keep_order_and_cancel(
    tmp_path: Path,
) -> None:
    from leasepool import _process_pool as _backends

    tokens = tmp_path / "tokens"
    backend = ProcessBackend()
    # While this lock is held the pool's starter cannot start a worker, so
    # every job below waits in the pool's early list.
    with _backends._forkserver_lock:
        pool = backend.create_pool(1, "early")
        jobs = [pool.submit(note_token, str(tokens), t) for t in "abcd"]
        assert jobs[1].cancel()
        assert jobs[1].cancelled()
        assert not any(job.running() for job in jobs)
    try:
        assert [job.result(timeout=PATIENCE) for job in (jobs[0], *jobs[2:])] == [
            "a",
            "c",
            "d",
        ]
        assert tokens.read_text().split() == ["a", "c", "d"]
    finally:
        backend.shutdown_pool(pool, revoke=False)


@needs_forkserver
def test_process_early_jobs_of_a_revoked_pool_fail_without_deadlock() -> None:
    from leasepool import _process_pool as _backends

    backend = ProcessBackend()
    with _backends._forkserver_lock:
        pool = backend.create_pool(1, "early-revoked")
        jobs = [pool.submit(add, n, n) for n in range(3)]
        # Anyone's callback may touch sibling futures while they fail.
        jobs[0].add_done_callback(lambda _: jobs[2].cancel())
        assert isinstance(pool, _backends.LeasedProcessPool)
        pool.kill_now()
    backend.shutdown_pool(pool, revoke=True)
    for job in jobs:
        with pytest.raises(BrokenProcessPool, match="revoked"):
            job.result(timeout=PATIENCE)
