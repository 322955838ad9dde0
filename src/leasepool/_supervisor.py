"""The manager's supervisor: the work no caller waits for.

One :class:`Supervisor` per manager does everything that happens in the
background, on one task per started manager: it revokes leases (and drains of
released leases) at their hard expiry, reads the size signal and grows or
shrinks the idle pools, and retires pools, waiting for a revoked thread pool's
running jobs (its *quarantine*) before it frees the slot. The manager keeps the
lease paths that callers wait on (acquire, release, the waiter queue) and calls
in here only for what is rare: a broken pool to retire, an earlier expiry to
wake up for, a stop.

Why this split: these are the parts of the state machine (see ``_manager``)
that run on the supervisor's clock rather than a caller's, and they share its
task group, its wake-up event and its deadlines. The pool tables they change
are in :class:`PoolSet`; the live leases and the waiter queue are the
manager's, handed over as shared containers. Nothing here refers back to the
manager, so a stopped manager is freed without the cyclic collector.

While the manager runs, ``running`` mirrors its RUNNING state: the manager sets
both together, in ``start()``, ``stop()`` and when the supervisor ends.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable

import anyio
import anyio.abc

from ._lease import ExecutorLease, LeaseState
from ._log import GuardedLogger
from ._pool import Pool, PoolState
from ._pool_set import PoolSet
from ._runtime import Parker, Runtime
from ._settings import ManagerSettings
from ._sizing import desired_pool_count
from ._threads import run_in_thread

__all__ = ["Supervisor"]


class Supervisor:
    """Expiry, sizing and retirement for one manager, on a task of its own.

    Attributes:
        runtime: The running manager's runtime; ``None`` while stopped.
        running: Whether the manager is running (started, not stopping).
        target: The pool count sizing last asked for.
        revoked: Leases revoked since construction, for ``stats()``.
        next_wake: When the supervisor next wakes by itself; a lease granted
            with an earlier soft expiry must wake it.
        scale_dirty: Set by ``notify_scale_changed``: read the signal now.
        done: Set when the supervisor of the latest start has ended.
    """

    def __init__(
        self,
        settings: ManagerSettings,
        log: GuardedLogger,
        pools: PoolSet,
        leases: dict[str, ExecutorLease],
        waiters: deque[Parker],
    ) -> None:
        """Set up a stopped supervisor.

        Args:
            settings: The manager's settings (sizing and backend).
            log: The manager's logger.
            pools: The manager's pool tables.
            leases: The manager's live leases by id, shared, not copied.
            waiters: The manager's queue of parked acquirers, shared.
        """
        self.backend = settings.backend
        self.max_pools = settings.max_pools
        self.min_pools = settings.min_pools
        self.units_per_pool = settings.units_per_pool
        self.size_provider = settings.size_provider
        self.check_interval = settings.check_interval
        self.name_prefix = settings.name_prefix
        self.log = log
        self.pools = pools
        self.leases = leases
        self.waiters = waiters
        self.runtime: Runtime | None = None
        self.running = False
        self.target = settings.min_pools
        self.revoked = 0
        self.tg: anyio.abc.TaskGroup | None = None
        # Scopes of running retirements, cancelled when a stop() is cancelled.
        self.retire_scopes: set[anyio.CancelScope] = set()
        # Pools waiting for the supervisor to start their retirement.
        self.retire_requests: list[tuple[Pool, bool]] = []
        self.abandoned = False
        self.wake_event: anyio.Event | None = None
        self.done: anyio.Event | None = None
        self.next_wake = math.inf
        self.next_size_check = math.inf
        self.scale_dirty = False

    # -- lifecycle ----------------------------------------------------------

    def begin(self, runtime: Runtime) -> None:
        """Open the backend and create the initial pools for a start.

        On failure everything created is shut down again, the supervisor is
        left stopped, and the error propagates.
        """
        self.runtime = runtime
        self.running = True
        self.next_wake = math.inf
        self.scale_dirty = False
        self.abandoned = False
        self.done = anyio.Event()
        opened = False
        try:
            opened = self.pools.open_backend()
            self.resize(runtime.time())
        except BaseException:
            self.running = False
            self.runtime = None
            self.pools.shutdown_now()
            if opened:
                self.pools.close_backend()
            raise

    async def run(self, ready: anyio.Event) -> bool:
        """Supervise until the manager stops, then retire every pool.

        Sets ``ready`` once retirements can be started. Returns whether every
        retirement waited for its jobs (``False`` after a forced stop or an
        error, which is logged, not raised).
        """
        clean = False
        try:
            async with anyio.create_task_group() as tg:
                self.tg = tg
                ready.set()
                await self._watch(tg)
                for pool in list(self.pools.pools.values()):
                    self.retire(pool, revoke=False, why="stop")
                while self.pools.pools:
                    self.wake_event = wake = anyio.Event()
                    self._start_retirements(tg)
                    await wake.wait()
                self.wake_event = None
            clean = not self.abandoned
        except Exception:
            self.log.exception("manager.supervisor_failed")
        finally:
            self.tg = None
            self.wake_event = None
            self.retire_requests.clear()
            ready.set()
        return clean

    def end(self) -> None:
        """Shut down what is left without waiting, once the supervisor ended."""
        if self.pools.pools:
            self.pools.shutdown_now()
        self.pools.close_backend()
        self.running = False
        self.runtime = None

    def wake(self) -> None:
        """Make the supervisor run a pass now (from the loop's thread only)."""
        if self.wake_event is not None:
            self.wake_event.set()

    def abandon(self) -> None:
        """Stop waiting for running jobs: every retirement shuts down by force."""
        self.abandoned = True
        for scope in list(self.retire_scopes):
            scope.cancel()

    async def _watch(self, tg: anyio.abc.TaskGroup) -> None:
        runtime = self.runtime
        assert runtime is not None
        while self.running:
            self._start_retirements(tg)
            now = runtime.time()
            self._expire(now)
            self._expire_drains(now)
            if self.scale_dirty or now >= self.next_size_check:
                self.resize(now)
            deadline = self.next_size_check
            for lease in self.leases.values():
                due = (
                    lease.hard_expires_at
                    if lease._grace_logged
                    else lease.soft_expires_at
                )
                deadline = min(deadline, due)
            for lease in self.pools.draining.values():
                deadline = min(deadline, lease.hard_expires_at)
            self.next_wake = deadline
            self.wake_event = wake = anyio.Event()
            if self.retire_requests:  # asked for while this pass ran
                continue
            with anyio.CancelScope(deadline=deadline):
                await wake.wait()

    # -- expiry -------------------------------------------------------------

    def _expire(self, now: float) -> None:
        for lease in list(self.leases.values()):
            if now >= lease.hard_expires_at:
                self._revoke(lease)
            elif now >= lease.soft_expires_at and not lease._grace_logged:
                lease._grace_logged = True
                self.log.warning(
                    "lease.grace lease_id=%s owner=%s revoked_in=%.3fs",
                    lease.lease_id,
                    lease.owner,
                    lease.hard_expires_at - now,
                )

    def _expire_drains(self, now: float) -> None:
        """Hold a released lease's running jobs to its hard expiry, too.

        Releasing a lease must not be a way around revocation: a job that
        outlives its lease's hard expiry gets its pool revoked (processes are
        killed; a thread pool is quarantined until the job returns).
        """
        draining = self.pools.draining
        for pool, lease in list(draining.items()):
            if now >= lease.hard_expires_at:
                del draining[pool]
                pool.revoked = True
                self.log.warning(
                    "lease.drain_revoked lease_id=%s owner=%s pool=%s running=%d",
                    lease.lease_id,
                    lease.owner,
                    pool.name,
                    pool.running,
                )
                self.retire(pool, revoke=True, why="revoked")

    def _revoke(self, lease: ExecutorLease) -> None:
        lease._state = LeaseState.REVOKED
        lease._pool.drop_holder()
        del self.leases[lease.lease_id]
        self.revoked += 1
        pool = lease._pool
        pool.revoked = True
        self.log.warning(
            "lease.revoked lease_id=%s owner=%s pool=%s running=%d",
            lease.lease_id,
            lease.owner,
            pool.name,
            pool.running,
        )
        if pool.state in (PoolState.LEASED, PoolState.DRAINING):
            self.retire(pool, revoke=True, why="revoked")

    # -- sizing -------------------------------------------------------------

    def desired(self) -> int:
        """Return the pool count the size signal asks for right now."""
        return desired_pool_count(
            self.size_provider,
            self.log,
            min_pools=self.min_pools,
            max_pools=self.max_pools,
            units_per_pool=self.units_per_pool,
        )

    def resize(self, now: float) -> None:
        """Read the size signal, retire idle pools above it, fill up to it.

        Leased and draining pools are never retired because the target shrank.
        """
        self.scale_dirty = False
        self.next_size_check = now + self.check_interval
        target = self.desired()
        if target != self.target:
            self.log.info("sizing.target old=%d new=%d", self.target, target)
        self.target = target
        pools = self.pools
        excess = len(pools.pools) - pools.retiring - target
        while excess > 0 and pools.idle:
            self.retire(pools.idle[0], revoke=False, why="shrink")
            excess -= 1
        self._fill()

    def _fill(self) -> None:
        """Serve waiters from free slots, then grow idle pools to the target.

        Called only while the manager runs. A new pool has never run a job
        and so is never broken or draining: it goes straight to the oldest
        waiter, or to the idle pools, as the manager's own hand-off would. A
        pool that cannot be made fails the oldest waiter with the error.
        """
        runtime = self.runtime
        assert runtime is not None
        pools = self.pools
        table = pools.pools
        waiters = self.waiters
        while waiters and len(table) < self.max_pools:
            try:
                pool = pools.new(runtime)
            except Exception as exc:
                # The oldest waiter gets the error it would have had calling
                # with the slot free, rather than waiting for a size check.
                self.log.exception("pool.create_failed backend=%s", self.backend.name)
                waiter = waiters.popleft()
                waiter.value = exc
                waiter.wake()
                continue
            pool.state = PoolState.LEASED
            waiter = waiters.popleft()
            waiter.value = pool
            waiter.wake()
        try:
            while (
                len(table) - pools.retiring < self.target
                and len(table) < self.max_pools
            ):
                pool = pools.new(runtime)
                pool.state = PoolState.IDLE
                pools.idle.append(pool)
        except Exception:
            self.log.exception("pool.create_failed backend=%s", self.backend.name)

    # -- retirement ---------------------------------------------------------

    def retire(self, pool: Pool, *, revoke: bool, why: str) -> None:
        """Take a pool out of circulation for good and have it shut down.

        Args:
            pool: The pool, in any state; one already retiring is left alone.
            revoke: Whether to stop what can be stopped first (queued work,
                process workers) and quarantine the rest.
            why: ``"broken"``, ``"revoked"``, ``"shrink"`` or ``"stop"``; the
                first two are logged as warnings.
        """
        if pool.state is PoolState.RETIRING:
            return
        pools = self.pools
        if pool.state is PoolState.IDLE:
            pools.idle.remove(pool)
        pools.draining.pop(pool, None)
        pool.drop_holder()
        pool.state = PoolState.RETIRING
        pools.retiring += 1
        level = logging.WARNING if why in ("broken", "revoked") else logging.DEBUG
        self.log.log(level, "pool.retiring pool=%s reason=%s", pool.name, why)
        if self.tg is None:  # the supervisor is gone: no one to wait for it
            pools.shutdown_quietly(pool)
            pools.pools.pop(pool.name, None)
            pools.retiring -= 1
            pools.retired += 1
        else:
            # Started by the supervisor, not here: this may run as a bare loop
            # callback (a pool going idle), where no task exists to spawn from.
            self.retire_requests.append((pool, revoke))
            self.wake()

    def _start_retirements(self, tg: anyio.abc.TaskGroup) -> None:
        requests = self.retire_requests
        while requests:
            pool, revoke = requests.pop(0)
            tg.start_soon(self._retire_task, pool, revoke)

    async def _retire_task(self, pool: Pool, revoke: bool) -> None:
        shutdown = self.backend.shutdown_pool
        pools = self.pools
        scope = anyio.CancelScope()
        self.retire_scopes.add(scope)
        finished = False
        try:
            with scope:
                if self.abandoned:
                    scope.cancel()
                if revoke:
                    # Stop what can be stopped (queued work; process workers),
                    # then keep the pool counted while its jobs still run.
                    await self._in_thread(lambda: shutdown(pool.executor, revoke=True))
                    await self._wait_idle(pool)
                # Gently: queued work is cancelled, running work waited for.
                await self._in_thread(lambda: shutdown(pool.executor, revoke=False))
                # A custom backend may return before its jobs are done.
                await self._wait_idle(pool)
            if scope.cancelled_caught:
                # A cancelled stop(): shut down by force, wait for no job.
                with anyio.CancelScope(shield=True):
                    await self._in_thread(lambda: shutdown(pool.executor, revoke=True))
            finished = True
        except Exception:
            finished = True
            self.log.exception("pool.shutdown_failed pool=%s", pool.name)
        finally:
            self.retire_scopes.discard(scope)
            if not finished:
                # The event loop is going away under us: nothing can be
                # awaited any more, so ask without waiting.
                pools.shutdown_quietly(pool)
            if pools.pools.pop(pool.name, None) is not None:
                pools.retiring -= 1
            pools.retired += 1
            self.log.debug("pool.retired pool=%s", pool.name)
            if self.running:
                self._fill()
            self.wake()

    async def _wait_idle(self, pool: Pool) -> None:
        if not pool.idle_or_watch():
            pool.idle_event = event = anyio.Event()
            await event.wait()

    async def _in_thread(self, fn: Callable[[], None]) -> None:
        """Run blocking shutdown work on a thread of its own; see run_in_thread."""
        assert self.runtime is not None
        await run_in_thread(self.runtime, fn, name=f"{self.name_prefix}-shutdown")
