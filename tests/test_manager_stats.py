"""What the manager reports: stats(), statistics(), counts, and its log events."""

from __future__ import annotations

import dataclasses
import logging

import anyio
import pytest

from _helpers import Gate, make_manager, wait_until
from leasepool import ManagerStatistics

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(20)]

CONTRACT_KEYS = {
    "backend",
    "desired",
    "max_pools",
    "min_pools",
    "available",
    "leased",
    "total",
    "workers_per_pool",
    "leases",
}


async def test_manager_stats_contents() -> None:
    manager = make_manager(
        max_pools=4,
        min_pools=2,
        workers_per_pool=3,
        lease_grace_seconds=5,
    )
    before = manager.stats()
    assert set(before) >= CONTRACT_KEYS
    assert before["total"] == 0
    assert before["leases"] == []
    async with manager:
        a = await manager.acquire(owner="alpha", lease_seconds=30)
        b = await manager.acquire(lease_seconds=60)
        stats = manager.stats()
        assert set(stats) >= CONTRACT_KEYS
        assert stats["backend"] == "thread"
        assert stats["desired"] == 2
        assert stats["max_pools"] == 4
        assert stats["min_pools"] == 2
        assert stats["workers_per_pool"] == 3
        assert stats["available"] == 0
        assert stats["leased"] == 2
        assert stats["total"] == 2
        assert stats["leases_granted"] == 2
        by_id = {entry["lease_id"]: entry for entry in stats["leases"]}
        assert set(by_id) == {a.lease_id, b.lease_id}
        alpha = by_id[a.lease_id]
        assert {
            "lease_id",
            "owner",
            "seconds_until_soft_expiry",
            "seconds_until_hard_expiry",
        } <= set(alpha)
        assert alpha["owner"] == "alpha"
        assert by_id[b.lease_id]["owner"] is None
        assert 29 < alpha["seconds_until_soft_expiry"] <= 30
        assert alpha["seconds_until_hard_expiry"] == pytest.approx(
            alpha["seconds_until_soft_expiry"] + 5
        )
        await a.release()
        stats = manager.stats()
        assert [entry["lease_id"] for entry in stats["leases"]] == [b.lease_id]
        assert stats["available"] == 1
        assert stats["leases_released"] == 1
    after = manager.stats()
    assert after["total"] == 0
    assert after["leases"] == []


async def test_manager_counts_match_stats() -> None:
    manager = make_manager(max_pools=3)
    async with manager:
        lease = await manager.acquire()
        stats = manager.stats()
        assert manager.available_count == stats["available"]
        assert manager.leased_count == stats["leased"]
        assert manager.total_count == stats["total"]
        assert manager.waiting_count == stats["waiting"]
        await lease.release()


async def test_manager_statistics_is_frozen_twin_of_stats() -> None:
    manager = make_manager(max_pools=2)
    async with manager:
        gate = Gate()
        lease = await manager.acquire()
        lease.executor.submit(gate)
        await lease.release()
        snapshot = manager.statistics()
        assert isinstance(snapshot, ManagerStatistics)
        assert snapshot.draining == 1
        assert snapshot.total == manager.stats()["total"]
        with pytest.raises(dataclasses.FrozenInstanceError):
            snapshot.total = 9  # type: ignore[misc]  # frozen on purpose
        gate.open()
        await wait_until(lambda: manager.statistics().draining == 0)
        # Every count and setting of stats() is in the record too.
        fields = {field.name for field in dataclasses.fields(ManagerStatistics)}
        plain = {k for k, v in manager.stats().items() if isinstance(v, int | str)}
        assert plain <= fields


async def test_manager_logs_stable_event_names(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="leasepool")
    manager = make_manager(lease_grace_seconds=0)
    async with manager:
        lease = await manager.acquire(owner="logged")
        await lease.release()
        doomed = await manager.acquire(lease_seconds=0.05)
        await wait_until(lambda: not doomed.active)
    levels: dict[str, set[int]] = {}
    for record in caplog.records:
        if record.name.startswith("leasepool"):
            event = record.getMessage().split(" ", 1)[0]
            levels.setdefault(event, set()).add(record.levelno)
    assert levels["manager.started"] == {logging.INFO}
    assert levels["manager.stopped"] == {logging.INFO}
    assert levels["lease.granted"] == {logging.DEBUG}
    assert levels["lease.released"] == {logging.DEBUG}
    assert levels["lease.revoked"] == {logging.WARNING}
    assert levels["pool.created"] == {logging.DEBUG}
    granted = [r for r in caplog.records if r.getMessage().startswith("lease.granted ")]
    assert "owner=logged" in granted[0].getMessage()
    # Nothing above DEBUG for an ordinary lease's life.
    noisy = [
        r
        for r in caplog.records
        if r.levelno > logging.INFO and "lease-1 " in r.getMessage() + " "
    ]
    assert noisy == []


async def test_manager_logs_to_given_logger(caplog: pytest.LogCaptureFixture) -> None:
    mine = logging.getLogger("my.app.pools")
    caplog.set_level(logging.DEBUG, logger="my.app.pools")
    async with make_manager(logger=mine) as manager, await manager.acquire():
        pass
    events = [
        r.getMessage().split(" ", 1)[0] for r in caplog.records if r.name == mine.name
    ]
    assert "manager.started" in events
    assert "lease.granted" in events


async def test_manager_stats_callable_any_time() -> None:
    manager = make_manager()
    assert manager.stats()["started"] is False
    async with manager:
        async with anyio.create_task_group() as tg:
            lease = await manager.acquire()
            tg.start_soon(manager.acquire)
            await wait_until(lambda: manager.stats()["waiting"] == 1)
            tg.cancel_scope.cancel()
        await lease.release()
        assert manager.stats()["started"] is True


async def test_manager_stats_expiry_is_right_when_read_off_the_loop() -> None:
    # A metrics thread reading stats() gets the run's own clock: trio's clock
    # has an offset of its own and cannot be asked from outside the run.
    manager = make_manager()
    async with manager, manager.lease(lease_seconds=100):
        entry = (await anyio.to_thread.run_sync(manager.stats))["leases"][0]
        assert 90 < entry["seconds_until_soft_expiry"] <= 100
        assert entry["seconds_until_hard_expiry"] >= entry["seconds_until_soft_expiry"]
