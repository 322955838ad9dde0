"""The manager's statistics: the ``stats()`` dict and its typed twin.

The manager gathers its counts and live objects and passes them in as plain
values; this module only shapes them, so the report's layout lives in one place
and never reaches into the manager.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ._pool import PoolState

if TYPE_CHECKING:
    from ._lease import ExecutorLease
    from ._pool import Pool

__all__ = ["ManagerStatistics", "build_stats", "statistics_from_stats"]


@dataclass(frozen=True, slots=True)
class ManagerStatistics:
    """A snapshot of a manager's counts, the typed twin of ``stats()``."""

    backend: str
    started: bool
    desired: int
    max_pools: int
    min_pools: int
    units_per_pool: int
    workers_per_pool: int
    available: int
    leased: int
    total: int
    waiting: int
    draining: int
    quarantined: int
    quarantined_jobs: int
    leases_granted: int
    leases_released: int
    leases_revoked: int
    leases_waited: int
    pools_retired: int
    peak_pools: int


def build_stats(
    *,
    now: float,
    backend: str,
    started: bool,
    desired: int,
    max_pools: int,
    min_pools: int,
    units_per_pool: int,
    workers_per_pool: int,
    pools: Sequence[Pool],
    available: int,
    waiting: int,
    leases: Iterable[tuple[ExecutorLease, Pool]],
    leases_granted: int,
    leases_released: int,
    leases_revoked: int,
    leases_waited: int,
    pools_retired: int,
    peak_pools: int,
) -> dict[str, Any]:
    """Return the ``stats()`` dict for these counts.

    Args:
        now: The loop's clock, against which lease expiries are reported.
        pools: Every pool alive; retiring ones that still run jobs are the
            quarantined ones.
        available: How many of ``pools`` are idle.
        leases: Each live lease with the pool it holds.
    """
    retiring = [p for p in pools if p.state is PoolState.RETIRING]
    quarantined = [p for p in retiring if p.running]
    return {
        "backend": backend,
        "started": started,
        "desired": desired,
        "max_pools": max_pools,
        "min_pools": min_pools,
        "units_per_pool": units_per_pool,
        "workers_per_pool": workers_per_pool,
        "available": available,
        "leased": len(pools) - available,
        "total": len(pools),
        "waiting": waiting,
        "draining": sum(p.state is PoolState.DRAINING for p in pools),
        "quarantined": len(quarantined),
        "quarantined_jobs": sum(p.running for p in quarantined),
        "quarantined_pools": [
            {"pool": p.name, "running_jobs": p.running, "revoked": p.revoked}
            for p in quarantined
        ],
        "leases_granted": leases_granted,
        "leases_released": leases_released,
        "leases_revoked": leases_revoked,
        "leases_waited": leases_waited,
        "pools_retired": pools_retired,
        "peak_pools": peak_pools,
        "leases": [
            {
                "lease_id": lease.lease_id,
                "owner": lease.owner,
                "pool": pool.name,
                "running_jobs": pool.running,
                "seconds_until_soft_expiry": lease.soft_expires_at - now,
                "seconds_until_hard_expiry": lease.hard_expires_at - now,
            }
            for lease, pool in leases
        ],
    }


def statistics_from_stats(s: Mapping[str, Any]) -> ManagerStatistics:
    """Return the typed snapshot of a ``stats()`` dict."""
    return ManagerStatistics(
        backend=s["backend"],
        started=s["started"],
        desired=s["desired"],
        max_pools=s["max_pools"],
        min_pools=s["min_pools"],
        units_per_pool=s["units_per_pool"],
        workers_per_pool=s["workers_per_pool"],
        available=s["available"],
        leased=s["leased"],
        total=s["total"],
        waiting=s["waiting"],
        draining=s["draining"],
        quarantined=s["quarantined"],
        quarantined_jobs=s["quarantined_jobs"],
        leases_granted=s["leases_granted"],
        leases_released=s["leases_released"],
        leases_revoked=s["leases_revoked"],
        leases_waited=s["leases_waited"],
        pools_retired=s["pools_retired"],
        peak_pools=s["peak_pools"],
    )
