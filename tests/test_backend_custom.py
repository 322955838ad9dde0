"""A backend of our own, through the PoolBackend protocol alone."""

from __future__ import annotations

import concurrent.futures as cf
import threading

import anyio
import pytest

from _helpers import Gate, unique_prefix, wait_until
from leasepool import (
    ExecutorBackend,
    LeasedExecutorManager,
    LeaseState,
    PoolBackend,
)

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(20)]


class PoolGoneError(Exception):
    """What our pretend engine raises when a pool can never run work again."""


class RecordingBackend:
    """Thread pools, with every call the manager makes written down."""

    name = "recording"

    def __init__(self) -> None:
        self.created: list[tuple[str, int]] = []
        self.shutdowns: list[tuple[str, bool]] = []
        self._names: dict[int, str] = {}
        self._lock = threading.Lock()

    def create_pool(self, workers: int, name: str) -> cf.Executor:
        executor = cf.ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)
        self.created.append((name, workers))
        self._names[id(executor)] = name
        return executor

    def is_broken_error(self, exc: BaseException) -> bool:
        return isinstance(exc, PoolGoneError)

    def shutdown_pool(self, executor: cf.Executor, *, revoke: bool) -> None:
        # Called from the manager's own short-lived thread, never the loop.
        assert threading.current_thread() is not threading.main_thread()
        with self._lock:
            self.shutdowns.append((self._names[id(executor)], revoke))
        executor.shutdown(wait=not revoke, cancel_futures=True)


def lose_pool() -> None:
    raise PoolGoneError("the engine dropped this pool")


async def test_backend_custom_object_runs_leases() -> None:
    backend = RecordingBackend()
    assert isinstance(backend, PoolBackend)
    prefix = unique_prefix()
    manager = LeasedExecutorManager(
        backend=backend, max_pools=2, workers_per_pool=3, name_prefix=prefix
    )
    assert manager.backend == "recording"
    assert not isinstance(manager.backend, ExecutorBackend)
    async with manager:
        assert manager.stats()["backend"] == "recording"
        async with await manager.acquire() as lease:
            name = await lease.run(lambda: threading.current_thread().name)
        assert name.startswith(f"{prefix}-1")
    assert backend.created == [(f"{prefix}-1", 3)]
    assert backend.shutdowns == [(f"{prefix}-1", False)]


async def test_backend_custom_revocation_asks_backend_to_revoke() -> None:
    backend = RecordingBackend()
    prefix = unique_prefix()
    manager = LeasedExecutorManager(
        backend=backend, max_pools=1, name_prefix=prefix, lease_grace_seconds=0
    )
    gate = Gate()
    async with manager:
        lease = await manager.acquire(lease_seconds=0.05)
        lease.executor.submit(gate)
        await wait_until(lambda: lease.state is LeaseState.REVOKED)
        await wait_until(lambda: (f"{prefix}-1", True) in backend.shutdowns)
        gate.open()
        async with await manager.acquire():
            pass
    # Revoked first, then shut down gently once its job was done.
    assert backend.shutdowns[:2] == [(f"{prefix}-1", True), (f"{prefix}-1", False)]
    assert backend.shutdowns[2:] == [(f"{prefix}-2", False)]


async def test_backend_custom_broken_error_retires_pool() -> None:
    backend = RecordingBackend()
    prefix = unique_prefix()
    manager = LeasedExecutorManager(backend=backend, max_pools=1, name_prefix=prefix)
    async with manager:
        async with await manager.acquire() as lease:
            with pytest.raises(PoolGoneError):
                await lease.run(lose_pool)
        # The backend said "broken": the pool is retired, never reused.
        await wait_until(lambda: manager.stats()["pools_retired"] == 1)
        async with await manager.acquire() as lease:
            name = await lease.run(lambda: threading.current_thread().name)
        assert name.startswith(f"{prefix}-2")
        # Not broken by the backend's rule: an ordinary error keeps the pool.
        async with await manager.acquire() as lease:
            with pytest.raises(cf.BrokenExecutor):
                await lease.run(_raise_broken_executor)
        await anyio.sleep(0.01)
        assert manager.stats()["pools_retired"] == 1


def _raise_broken_executor() -> None:
    raise cf.BrokenExecutor("only a built-in backend would call this broken")


async def test_backend_custom_executor_kwargs_are_refused() -> None:
    with pytest.raises(ValueError, match="initializer"):
        LeasedExecutorManager(
            backend=RecordingBackend(), max_pools=1, initializer=print
        )


async def test_backend_custom_class_instead_of_instance_is_refused() -> None:
    with pytest.raises(ValueError, match="backend"):
        LeasedExecutorManager(backend=RecordingBackend, max_pools=1)  # type: ignore[arg-type]  # the point


class FlakyBackend(RecordingBackend):
    """Refuses to create the next pool when told to, once."""

    name = "flaky"

    def __init__(self) -> None:
        super().__init__()
        self.fail_next = False

    def create_pool(self, workers: int, name: str) -> cf.Executor:
        if self.fail_next:
            self.fail_next = False
            raise OSError("out of descriptors, for now")
        return super().create_pool(workers, name)


async def test_backend_custom_failed_create_fails_the_waiter_it_was_for(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The only pool is revoked while a caller waits; making its replacement
    # fails. The waiter gets that error at once, not at the next size check
    # (an hour away here), and the manager goes on serving.
    backend = FlakyBackend()
    manager = LeasedExecutorManager(
        backend=backend,
        max_pools=1,
        name_prefix=unique_prefix(),
        lease_grace_seconds=0,
        check_interval=3600,
    )
    async with manager:
        lease = await manager.acquire(lease_seconds=0.2)
        backend.fail_next = True
        with anyio.fail_after(10), pytest.raises(OSError, match="for now"):
            await manager.acquire()
        assert lease.state is LeaseState.REVOKED
        with anyio.fail_after(10):
            async with await manager.acquire() as again:
                assert await again.run(sum, [2, 3]) == 5
        assert manager.waiting_count == 0
    assert any("pool.create_failed" in r.getMessage() for r in caplog.records)
