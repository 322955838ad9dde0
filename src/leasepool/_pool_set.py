"""The manager's pools, kept in tables by state, and how they are made and ended.

The manager and its supervisor share these tables (see the theory of operation
in ``_manager``). :class:`PoolSet` owns them so that neither side owns the
other's state: the manager's lease paths move pools between ``idle`` and
leased and fill ``draining``; the supervisor retires pools and grows the set.
The set itself is passive. It changes nothing on its own, holds no reference
to the manager (only a weak one to its "pool went idle" callback) and so keeps
a stopped manager free of reference cycles.

The containers are created once and only ever changed in place, never
rebound: the manager keeps its own references to them, which spares its hot
paths an attribute hop per call.
"""

from __future__ import annotations

import itertools
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING

from ._backends import PoolBackend
from ._log import GuardedLogger
from ._pool import Pool
from ._runtime import Runtime
from ._settings import ManagerSettings

if TYPE_CHECKING:
    from ._lease import ExecutorLease

__all__ = ["PoolSet"]


class PoolSet:
    """Every pool of one manager that is not yet fully shut down.

    Attributes:
        pools: Every pool created and not yet shut down, by name. All of them
            count against ``max_pools``, whatever their state: that is what
            keeps the bound real across revocation.
        idle: Pools free to lease, the most recently freed last.
        draining: Pools of released leases whose jobs still run, each with the
            lease whose hard expiry still bounds it.
        retiring: How many pools in ``pools`` are being retired.
        retired: Pools retired since construction, for ``stats()``.
        peak: The most pools alive at once since construction.
    """

    def __init__(
        self,
        settings: ManagerSettings,
        log: GuardedLogger,
        on_idle: weakref.WeakMethod[Callable[[Pool], None]],
    ) -> None:
        """Set up empty tables.

        Args:
            settings: The manager's settings; the backend, workers per pool and
                name prefix are taken from them.
            log: The manager's logger.
            on_idle: The manager's handler for "this watched pool's last job
                is done", called on the event loop's thread. Weak: a job's
                future, which a user may keep, must not keep the manager alive.
        """
        self.backend: PoolBackend = settings.backend
        self.workers = settings.workers_per_pool
        self.name_prefix = settings.name_prefix
        self.log = log
        self.on_idle = on_idle
        self.pools: dict[str, Pool] = {}
        self.idle: list[Pool] = []
        self.draining: dict[Pool, ExecutorLease] = {}
        self.retiring = 0
        self.retired = 0
        self.peak = 0
        self.numbers = itertools.count(1)

    def new(self, runtime: Runtime) -> Pool:
        """Create a pool, count it in ``pools`` and return it, still IDLE.

        The caller sets its state and puts it where it belongs. The pool
        reports going idle to the manager through ``runtime``, from whichever
        thread finished its last job.
        """
        name = f"{self.name_prefix}-{next(self.numbers)}"
        executor = self.backend.create_pool(self.workers, name)
        on_idle = self.on_idle

        def notify_idle(pool: Pool) -> None:
            method = on_idle()
            if method is not None:
                runtime.call_soon_threadsafe(method, pool)

        pool = Pool(name, executor, self.backend, notify_idle)
        pools = self.pools
        pools[name] = pool
        self.peak = max(self.peak, len(pools))
        self.log.debug("pool.created pool=%s workers=%d", name, self.workers)
        return pool

    def open_backend(self) -> bool:
        """Call the backend's optional ``open`` hook; say whether it had one.

        Errors propagate: a backend that cannot open fails ``start()``.
        """
        open_hook = getattr(self.backend, "open", None)
        if open_hook is None:
            return False
        open_hook(self.log.logger)
        return True

    def close_backend(self) -> None:
        """Call the backend's optional ``close`` hook, logging its errors."""
        close_hook = getattr(self.backend, "close", None)
        if close_hook is not None:
            try:
                close_hook()
            except Exception:
                self.log.exception("backend.close_failed backend=%s", self.backend.name)

    def shutdown_quietly(self, pool: Pool) -> None:
        """Ask a pool to shut down without waiting; log, never raise, errors.

        Its holder loses the right to submit first, so no job lands after.
        """
        pool.drop_holder()
        try:
            pool.executor.shutdown(wait=False, cancel_futures=True)
        except Exception:
            self.log.exception("pool.shutdown_failed pool=%s", pool.name)

    def shutdown_now(self) -> None:
        """Shut every pool down without waiting: the event loop is going away."""
        for pool in list(self.pools.values()):
            self.shutdown_quietly(pool)
        self.pools.clear()
        self.idle.clear()
        self.retiring = 0
