"""Soft expiry, revocation on time, quarantine, draining, and the real bound."""

from __future__ import annotations

import logging
import threading

import anyio
import pytest

from _helpers import (
    PATIENCE,
    Gate,
    make_manager,
    stat_is,
    unique_prefix,
    wait_until,
    worker_threads,
)
from leasepool import LeaseExpiredError, LeaseState, LeaseUnavailableError

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]


def messages(caplog: pytest.LogCaptureFixture, event: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage().startswith(event + " ")]


async def test_lease_revoked_at_hard_expiry_with_no_other_call(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="leasepool")
    manager = make_manager(lease_grace_seconds=0.1)
    async with manager:
        lease = await manager.acquire(lease_seconds=0.1, owner="slow")
        executor = lease.executor
        assert lease.soft_expires_at == pytest.approx(lease.leased_at + 0.1)
        assert lease.hard_expires_at == pytest.approx(lease.soft_expires_at + 0.1)
        # Nothing calls into the manager while the lease runs out.
        await wait_until(lambda: lease.state is not LeaseState.ACTIVE)
        assert anyio.current_time() >= lease.hard_expires_at
        assert lease.state is LeaseState.REVOKED
        with pytest.raises(LeaseExpiredError, match="revoked"):
            await lease.run(int)
        with pytest.raises(LeaseExpiredError, match="revoked"):
            executor.submit(int)
        await lease.release()  # harmless after revocation
        stats = manager.stats()
        assert stats["leases_revoked"] == 1
        assert stats["leases"] == []
        # The revoked pool is never reused.
        await wait_until(lambda: manager.stats()["pools_retired"] == 1)
        async with await manager.acquire() as fresh:
            assert manager.stats()["leases"][0]["pool"] != f"{lease!r}"
            assert fresh.lease_id != lease.lease_id
    (grace,) = messages(caplog, "lease.grace")
    assert grace.levelno == logging.WARNING
    (revoked,) = messages(caplog, "lease.revoked")
    assert revoked.levelno == logging.WARNING
    assert "owner=slow" in revoked.getMessage()


async def test_lease_zero_grace_revokes_at_soft_expiry() -> None:
    manager = make_manager(lease_grace_seconds=0)
    async with manager:
        lease = await manager.acquire(lease_seconds=0.05)
        assert lease.hard_expires_at == lease.soft_expires_at
        await wait_until(lambda: lease.state is LeaseState.REVOKED)


async def test_lease_default_seconds_come_from_manager() -> None:
    manager = make_manager(default_lease_seconds=7, lease_grace_seconds=2)
    async with manager:
        lease = await manager.acquire()
        assert lease.lease_seconds == 7
        assert lease.grace_seconds == 2
        assert lease.hard_expires_at - lease.leased_at == pytest.approx(9)


async def test_lease_revoked_pool_is_quarantined_until_its_job_returns() -> None:
    prefix = unique_prefix()
    manager = make_manager(name_prefix=prefix, lease_grace_seconds=0)
    gate = Gate()
    async with manager:
        lease = await manager.acquire(lease_seconds=0.1)
        results: list[object] = []

        async def run_slow() -> None:
            # Threads cannot be stopped: the job's own caller still gets the
            # job's result once it returns.
            results.append(await lease.run(gate, "late result"))

        served = anyio.Event()

        async def waiter() -> None:
            async with await manager.acquire(owner="next") as fresh:
                results.append(await fresh.run(lambda: threading.current_thread().name))
                served.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(run_slow)
            await wait_until(gate.entered.is_set)
            tg.start_soon(waiter)
            await wait_until(lambda: lease.state is LeaseState.REVOKED)
            await wait_until(lambda: manager.stats()["quarantined"] == 1)
            stats = manager.stats()
            assert stats["quarantined_jobs"] == 1
            assert stats["quarantined_pools"][0]["revoked"] is True
            # The bound holds: the waiter waits while the job still runs.
            assert stats["total"] == 1
            assert stats["waiting"] == 1
            assert len(worker_threads(prefix)) == 1
            await anyio.sleep(0.05)
            assert not served.is_set()
            gate.open()
            with anyio.fail_after(PATIENCE):
                await served.wait()
        assert results[0] == "late result"
        assert str(results[1]).startswith(f"{prefix}-2_")
        assert manager.stats()["quarantined"] == 0


async def test_lease_revocation_cancels_queued_jobs_clearly() -> None:
    manager = make_manager(lease_grace_seconds=0)
    gate = Gate()
    queued = Gate()
    async with manager:
        lease = await manager.acquire(lease_seconds=0.2)
        outcome: list[BaseException] = []

        async def run_queued() -> None:
            try:
                await lease.run(queued)
            except LeaseExpiredError as exc:
                outcome.append(exc)

        running = lease.executor.submit(gate, "ran")
        async with anyio.create_task_group() as tg:
            tg.start_soon(run_queued)
            await wait_until(lambda: lease.state is LeaseState.REVOKED)
            await wait_until(lambda: bool(outcome))
            gate.open()
        assert "cancelled before it started" in str(outcome[0])
        assert running.result(timeout=PATIENCE) == "ran"
        assert queued.calls == 0


async def test_lease_waiter_served_once_revoked_pool_work_is_gone() -> None:
    manager = make_manager(max_pools=2, lease_grace_seconds=0)
    gates = [Gate(), Gate()]
    async with manager:
        leases = [await manager.acquire(lease_seconds=0.1) for _ in range(2)]
        for lease, gate in zip(leases, gates, strict=True):
            lease.executor.submit(gate)
        got: list[str] = []

        async def waiter(n: int) -> None:
            async with await manager.acquire(owner=f"w{n}"):
                got.append(f"w{n}")
                await anyio.sleep(0.01)

        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter, 0)
            await wait_until(lambda: manager.waiting_count == 1)
            tg.start_soon(waiter, 1)
            await wait_until(lambda: manager.stats()["quarantined"] == 2)
            assert manager.total_count == 2
            assert got == []
            gates[1].open()
            await wait_until(lambda: got == ["w0"])
            gates[0].open()
        assert got == ["w0", "w1"]


async def test_lease_bound_holds_across_revocations() -> None:
    prefix = unique_prefix()
    max_pools, workers = 2, 2
    manager = make_manager(
        max_pools=max_pools,
        workers_per_pool=workers,
        name_prefix=prefix,
        lease_grace_seconds=0,
    )
    peaks = {"pools": 0, "threads": 0}
    stop_sampling = anyio.Event()

    async def sample() -> None:
        while not stop_sampling.is_set():
            peaks["pools"] = max(peaks["pools"], manager.total_count)
            peaks["threads"] = max(peaks["threads"], len(worker_threads(prefix)))
            await anyio.sleep(0.001)

    async def misbehave(gate: Gate) -> None:
        lease = await manager.acquire(lease_seconds=0.03)
        try:
            for _ in range(workers):
                lease.executor.submit(gate)
        except LeaseExpiredError:
            pass  # a loaded machine may revoke it before the jobs are in
        # Never released: revocation takes the lease back.

    async with manager, anyio.create_task_group() as tg:
        tg.start_soon(sample)
        for round_number in range(1, 4):
            gates = [Gate() for _ in range(4)]
            async with anyio.create_task_group() as round_tg:
                for gate in gates:
                    round_tg.start_soon(misbehave, gate)
                # Two leases hold both slots; two wait behind quarantined pools.
                await wait_until(lambda: manager.stats()["quarantined"] >= 1)
                for gate in gates:
                    await anyio.sleep(0.02)
                    gate.open()
            await wait_until(stat_is(manager, "leases_revoked", 4 * round_number))
            await wait_until(lambda: manager.stats()["quarantined"] == 0)
        stop_sampling.set()
    stats = manager.stats()
    assert stats["leases_revoked"] == 12
    assert 0 < peaks["pools"] <= max_pools
    assert 0 < peaks["threads"] <= max_pools * workers
    assert stats["peak_pools"] <= max_pools


async def test_lease_release_drains_before_reuse() -> None:
    manager = make_manager(workers_per_pool=2)
    gate = Gate()
    async with manager:
        lease = await manager.acquire()
        future = lease.executor.submit(gate, 5)
        await wait_until(gate.entered.is_set)
        await lease.release()
        assert manager.stats()["draining"] == 1
        with pytest.raises(LeaseUnavailableError):
            manager.acquire_nowait()
        gate.open()
        assert future.result(timeout=PATIENCE) == 5
        await wait_until(lambda: manager.available_count == 1)
        assert manager.stats()["draining"] == 0
        async with await manager.acquire() as again:
            assert await again.run(int, "3") == 3


async def test_lease_released_drain_still_ends_at_hard_expiry(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="leasepool")
    prefix = unique_prefix()
    manager = make_manager(name_prefix=prefix, lease_grace_seconds=0)
    gate = Gate()
    async with manager:
        lease = await manager.acquire(lease_seconds=0.1)
        lease.executor.submit(gate)
        await lease.release()
        assert manager.stats()["draining"] == 1
        # Releasing is no way around revocation: at hard expiry the pool is
        # revoked like any other, and never reused.
        await wait_until(lambda: manager.stats()["quarantined"] == 1)
        assert manager.stats()["draining"] == 0
        assert messages(caplog, "lease.drain_revoked")
        gate.open()
        async with await manager.acquire() as fresh:
            name = await fresh.run(lambda: threading.current_thread().name)
        assert name.startswith(f"{prefix}-2_")
