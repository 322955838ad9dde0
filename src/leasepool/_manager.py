"""The leased-executor manager.

Theory of operation
-------------------
The manager owns up to ``max_pools`` *pools* (one executor each). Every pool
it has created and not yet fully shut down is in ``_pools`` and counts against
``max_pools``, whatever its state; that single rule is what makes the bound real
across revocation. A pool moves through these states (see ``PoolState``)::

    IDLE ──acquire──▶ LEASED ──release, jobs done──▶ IDLE (or to a waiter)
                        │  └──release, jobs running──▶ DRAINING ──last job──▶ IDLE
                        └──revoked / broken / shrunk / stop──▶ RETIRING ──▶ gone

A DRAINING pool is still bound by its released lease's hard expiry: releasing is
no way around revocation, so at that time it is revoked like a leased one.

A RETIRING pool is shut down in the background by the supervisor: a revoked
process pool has its workers killed first; then the manager waits until no job
of the pool is unfinished (threads and interpreters cannot be killed, so a
revoked thread pool stays *quarantined* here until its running work returns),
joins the workers from a short-lived thread, and only then frees the slot. A
``stop()`` that is itself cancelled cuts this short: every retirement then
shuts its pool down by force and waits for no job.

A pool knows the one lease allowed to submit to it (its *holder*); the check
and the job count change together under the pool's lock, so a submit from
another thread racing a release either lands first (and the release drains) or
is refused with ``LeaseExpiredError``, never reaching the pool's next holder.

Waiters queue FIFO. A freed pool is handed straight to the oldest waiter (left
in its parker before it is woken), so a later ``wait=False`` caller can never
slip in ahead of it; a waiter cancelled after being handed a pool passes the
pool on. Idle pools and queued waiters therefore never coexist.

All manager state is touched only from the owning event loop's thread. The one
exception is each pool's job count (see ``_pool``), and the only message from
other threads into the loop is "pool went idle" or "scale changed", sent with
``Runtime.call_soon_threadsafe``.

The supervisor is one task per started manager, spawned outside the caller's
task tree so that ``start()`` and ``stop()`` may come from different tasks. It
sleeps until the next soft expiry, hard expiry or sizing check, or until woken,
which is why revocation happens on time even when nothing else calls in.

Where each part lives, and why there. This module keeps the public facade
(construction, start/stop, introspection) and the paths a caller waits on and
that are measured per call: acquire and the waiter queue, granting, release
and the hand-off of a freed pool. They run inline here, with the tables they
touch held as plain attributes, so the split adds no call to them (granting
reads the supervisor's next wake-up through one attribute, nothing more).
The pool tables (``_pools``, ``_idle``, ``_draining`` above) belong to a
``PoolSet`` (``_pool_set``), which also creates pools and shuts them down
without waiting. Everything on the supervisor's clock rather than a caller's
(expiry and revocation, sizing, and retiring pools, quarantine included) is a
``Supervisor`` (``_supervisor``), which works on the same tables, this
manager's live leases and its waiter queue. Neither refers back to the
manager. The constructor's arguments are checked in ``_settings``, the size
signal is turned into a pool count in ``_sizing``, ``stats()`` is shaped in
``_stats`` from values passed to it, and the short-lived shutdown thread is
started by ``_threads``.
"""

from __future__ import annotations

import enum
import itertools
import logging
import threading
import warnings
import weakref
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Any, TypeVar

import anyio
import anyio.abc
from anyio.lowlevel import checkpoint_if_cancelled

from ._backends import ExecutorBackend, PoolBackend
from ._errors import (
    LeaseUnavailableError,
    not_started,
    stopped_while_waiting,
    wrong_loop,
)
from ._lease import ExecutorLease, LeaseState, make_lease
from ._log import GuardedLogger
from ._pool import Pool, PoolState
from ._pool_set import PoolSet
from ._process_logging import ProcessLoggingConfig
from ._runtime import Parker, Runtime, current_runtime
from ._settings import check_settings
from ._stats import ManagerStatistics, build_stats, statistics_from_stats
from ._supervisor import Supervisor
from ._validation import check_duration, check_optional_duration

__all__ = ["LeasedExecutorManager", "ManagerStatistics"]

T = TypeVar("T")


class _State(enum.Enum):
    STOPPED = "stopped"
    RUNNING = "running"
    STOPPING = "stopping"


class LeasedExecutorManager:
    """Hands out time-limited leases on a bounded set of executor pools.

    Construct it with keyword arguments, then use ``async with manager:`` or
    ``await manager.start()`` … ``await manager.stop()``. Once started it
    belongs to the event loop (or trio run) that started it.

    Args:
        backend: ``"thread"``, ``"process"``, ``"interpreter"`` (Python 3.14+),
            an :class:`ExecutorBackend`, or an object following the
            :class:`PoolBackend` protocol.
        max_pools: The most pools alive at once, leased, idle, draining or
            quarantined alike.
        min_pools: Pools kept even when the size signal says fewer.
        units_per_pool: How many units of ``size_provider``'s signal one pool
            serves.
        size_provider: A cheap synchronous callable returning the current load
            (for example queue depth); ``None`` keeps ``min_pools``.
        check_interval: Seconds between reads of the size signal.
        default_lease_seconds: Lease length when ``acquire`` gives none.
        lease_grace_seconds: Seconds after soft expiry before revocation; may
            be 0.
        workers_per_pool: Workers (threads, processes, interpreters) per pool.
        name_prefix: Start of pool and thread names.
        logger: Where the manager logs; the ``leasepool.manager`` logger if
            ``None``.
        process_logging: Forwarding of process workers' log records; see
            :class:`ProcessLoggingConfig`. Not to be combined with the
            ``forward_process_logs``/``process_log_*`` shortcuts.
        forward_process_logs: Shortcut for ``ProcessLoggingConfig(enabled=True)``.
        process_log_level: Shortcut for the config's ``level``.
        process_log_target_logger: Shortcut for the config's ``target_logger``.
        clear_process_log_handlers: Shortcut for ``clear_child_handlers``.
        **executor_kwargs: Passed to every executor's constructor (for example
            ``initializer``, ``mp_context``, ``max_tasks_per_child``).
    """

    def __init__(
        self,
        *,
        backend: str | ExecutorBackend | PoolBackend = "thread",
        max_pools: int,
        min_pools: int = 1,
        units_per_pool: int = 10,
        size_provider: Callable[[], float] | None = None,
        check_interval: float = 120.0,
        default_lease_seconds: float = 300.0,
        lease_grace_seconds: float = 15.0,
        workers_per_pool: int = 4,
        name_prefix: str = "leasepool",
        logger: logging.Logger | None = None,
        process_logging: ProcessLoggingConfig | None = None,
        forward_process_logs: bool = False,
        process_log_level: int = logging.INFO,
        process_log_target_logger: logging.Logger | None = None,
        clear_process_log_handlers: bool = True,
        **executor_kwargs: Any,
    ) -> None:
        settings = check_settings(
            backend=backend,
            max_pools=max_pools,
            min_pools=min_pools,
            units_per_pool=units_per_pool,
            size_provider=size_provider,
            check_interval=check_interval,
            default_lease_seconds=default_lease_seconds,
            lease_grace_seconds=lease_grace_seconds,
            workers_per_pool=workers_per_pool,
            name_prefix=name_prefix,
            logger=logger,
            process_logging=process_logging,
            forward_process_logs=forward_process_logs,
            process_log_level=process_log_level,
            process_log_target_logger=process_log_target_logger,
            clear_process_log_handlers=clear_process_log_handlers,
            executor_kwargs=executor_kwargs,
        )
        # Unpacked: the hot paths read these as plain attributes.
        self._max_pools = settings.max_pools
        self._min_pools = settings.min_pools
        self._units_per_pool = settings.units_per_pool
        self._workers_per_pool = settings.workers_per_pool
        self._default_lease_seconds = settings.default_lease_seconds
        self._grace_seconds = settings.grace_seconds
        self._name_prefix = settings.name_prefix
        self._log = log = GuardedLogger(settings.logger)
        self._process_logging = settings.process_logging
        self._backend = settings.backend
        self._kind = settings.kind

        self._state = _State.STOPPED
        # Started and not yet asked to stop: what a ResourceWarning at garbage
        # collection reports (a run that ends under a started manager stops
        # it, but the program never said so and may rely on it elsewhere).
        self._needs_stop = False
        self._runtime: Runtime | None = None
        self._leases: dict[str, ExecutorLease] = {}
        # Parked acquirers; the pool handed to one is left in its ``value``.
        self._waiters: deque[Parker] = deque()
        self._pool_set = pool_set = PoolSet(
            settings, log, weakref.WeakMethod(self._on_pool_idle)
        )
        # The pool set's tables, never rebound: read here without a hop.
        self._pools = pool_set.pools
        self._idle = pool_set.idle
        self._draining = pool_set.draining
        self._supervisor = Supervisor(
            settings, log, pool_set, self._leases, self._waiters
        )
        self._lease_numbers = itertools.count(1)
        self._granted = 0
        self._released = 0
        self._waited = 0

    # -- lifecycle ----------------------------------------------------------

    async def start(self) -> None:
        """Create the initial pools and the supervisor; a no-op when started.

        A start that raises (cancelled, say) leaves the manager stopped.
        """
        await checkpoint_if_cancelled()
        supervisor = self._supervisor
        if self._state is not _State.STOPPED:
            runtime = self._runtime
            if runtime is None or not runtime.is_current():
                raise wrong_loop("this manager")
            if self._state is _State.RUNNING:
                return
            assert supervisor.done is not None
            await supervisor.done.wait()
        runtime = current_runtime()
        self._runtime = runtime
        self._state = _State.RUNNING
        try:
            supervisor.begin(runtime)
        except BaseException:
            self._state = _State.STOPPED
            self._runtime = None
            raise
        ready = anyio.Event()
        runtime.spawn_system_task(
            lambda: self._supervise(ready), name=f"{self._name_prefix}-supervisor"
        )
        # Shielded: the supervisor sets ``ready`` in its first step, and a
        # start cancelled after spawning it would leave a manager that the
        # caller's ``async with`` never stops.
        with anyio.CancelScope(shield=True):
            await ready.wait()
        self._needs_stop = True
        self._log.info(
            "manager.started backend=%s runtime=%s pools=%d max_pools=%d",
            self._backend.name,
            runtime.name,
            len(self._pools),
            self._max_pools,
        )

    async def stop(self) -> None:
        """Shut every pool down and wait for it; a no-op when stopped.

        Waiters are woken with :class:`LeasePoolNotStartedError`, leases stop
        taking work, queued jobs are cancelled and running ones are waited for,
        so that no thread or process of the manager is left when this returns.

        If the caller is cancelled while this waits, the stop turns forceful
        before the cancellation goes on: running jobs are no longer waited for
        (process workers are killed; threads finish on their own), and the
        manager is stopped when the cancellation propagates.
        """
        await self._stop(force=False)

    async def _stop(self, *, force: bool) -> None:
        self._needs_stop = False
        if self._state is _State.STOPPED:
            return
        runtime = self._runtime
        if runtime is None or not runtime.is_current():
            raise wrong_loop("this manager")
        supervisor = self._supervisor
        done = supervisor.done
        assert done is not None
        if self._state is _State.RUNNING:
            self._state = _State.STOPPING
            supervisor.running = False
            self._log.info("manager.stopping backend=%s", self._backend.name)
            self._end_leases()
            while self._waiters:
                self._waiters.popleft().wake()
            supervisor.wake()
        if force:
            supervisor.abandon()
        try:
            await done.wait()
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True):
                supervisor.abandon()
                await done.wait()
            raise

    def _end_leases(self, *, abandoned: bool = False) -> None:
        for lease in self._leases.values():
            lease._state = LeaseState.RELEASED
            lease._abandoned = abandoned
            lease._pool.drop_holder()
        self._leases.clear()
        self._draining.clear()

    async def __aenter__(self) -> LeasedExecutorManager:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Ctrl-C (or sys.exit) must let the program end promptly: do not wait
        # for running jobs, kill process workers instead.
        force = exc_type is not None and issubclass(
            exc_type, KeyboardInterrupt | SystemExit
        )
        await self._stop(force=force)

    # -- leases -------------------------------------------------------------

    async def acquire(
        self,
        *,
        lease_seconds: float | None = None,
        owner: str | None = None,
        wait: bool = True,
        timeout: float | None = None,
    ) -> ExecutorLease:
        """Lease one pool, waiting in FIFO order while all are taken.

        Args:
            lease_seconds: Time until soft expiry; the manager's
                ``default_lease_seconds`` if ``None``.
            owner: A label for logs and ``stats()``.
            wait: ``False`` raises :class:`LeaseUnavailableError` at once
                instead of waiting.
            timeout: Seconds to wait before ``TimeoutError``; ``None`` waits
                as long as it takes (an enclosing ``anyio.fail_after`` still
                applies).

        When a pool is free the call only checks for cancellation and returns
        without yielding to other tasks, like ``acquire_nowait``.

        Raises:
            LeasePoolNotStartedError: The manager is not running, or was
                stopped while this call waited.
        """
        seconds = self._check_acquire_args(lease_seconds, owner, wait, timeout)
        runtime = self._check_running()
        if wait and self._waiters:
            # Others are queued first: wait behind them. Parking checks for
            # cancellation itself, so the checkpoint below is not repeated.
            return self._grant(await self._wait_for_pool(timeout), seconds, owner)
        await runtime.checkpoint_if_cancelled()
        pool = self._take_pool()
        if pool is None:
            if not wait:
                raise self._unavailable()
            pool = await self._wait_for_pool(timeout)
        # A free pool is granted without yielding to the scheduler: the caller
        # is still cancellable above, and a yield here would cost a full loop
        # pass on the hottest path for no change in who gets the pool.
        return self._grant(pool, seconds, owner)

    def acquire_nowait(
        self, *, lease_seconds: float | None = None, owner: str | None = None
    ) -> ExecutorLease:
        """Lease a pool if one is free now, else raise LeaseUnavailableError."""
        seconds = self._check_acquire_args(lease_seconds, owner, False, None)
        self._check_running()
        pool = self._take_pool()
        if pool is None:
            raise self._unavailable()
        return self._grant(pool, seconds, owner)

    @asynccontextmanager
    async def lease(
        self,
        *,
        lease_seconds: float | None = None,
        owner: str | None = None,
        wait: bool = True,
        timeout: float | None = None,
    ) -> AsyncIterator[ExecutorLease]:
        """Acquire a lease for the body of an ``async with`` block."""
        lease = await self.acquire(
            lease_seconds=lease_seconds, owner=owner, wait=wait, timeout=timeout
        )
        try:
            yield lease
        finally:
            self._release_lease(lease)

    async def release(self, lease_id: str | ExecutorLease) -> None:
        """Release the lease with this id (or the lease itself).

        Ids of unknown or ended leases are ignored, so a release after a
        revocation is harmless.
        """
        if isinstance(lease_id, ExecutorLease):
            if lease_id._manager is not self:
                raise ValueError(f"lease_id {lease_id!r} is a lease of another manager")
            self._release_lease(lease_id)
            return
        if not isinstance(lease_id, str):
            raise ValueError(
                f"lease_id must be a lease id string or a lease, got {lease_id!r}"
            )
        lease = self._leases.get(lease_id)
        if lease is not None:
            self._release_lease(lease)

    def _check_acquire_args(
        self,
        lease_seconds: float | None,
        owner: str | None,
        wait: bool,
        timeout: float | None,
    ) -> float:
        if lease_seconds is None:
            seconds = self._default_lease_seconds
        else:
            seconds = check_duration("lease_seconds", lease_seconds)
        if owner is not None and not isinstance(owner, str):
            raise ValueError(f"owner must be a string or None, got {owner!r}")
        if not isinstance(wait, bool):
            raise ValueError(f"wait must be True or False, got {wait!r}")
        check_optional_duration("timeout", timeout, allow_zero=True)
        return seconds

    def _check_running(self) -> Runtime:
        if self._state is not _State.RUNNING:
            raise not_started("this manager")
        runtime = self._runtime
        if runtime is None or not runtime.is_current():
            raise wrong_loop("this manager")
        return runtime

    def _unavailable(self) -> LeaseUnavailableError:
        return LeaseUnavailableError(
            f"all {self._max_pools} pools are leased"
            + (f" and {len(self._waiters)} callers wait" if self._waiters else "")
        )

    def _take_pool(self) -> Pool | None:
        if self._waiters:
            return None  # they are first in line
        if self._idle:
            pool = self._idle.pop()
            pool.state = PoolState.LEASED
            return pool
        if len(self._pools) < self._max_pools:
            runtime = self._runtime
            assert runtime is not None
            pool = self._pool_set.new(runtime)
            pool.state = PoolState.LEASED
            return pool
        return None

    async def _wait_for_pool(self, timeout: float | None) -> Pool:
        assert self._runtime is not None
        waiter = self._runtime.parker()
        self._waiters.append(waiter)
        self._waited += 1
        try:
            if timeout is None:
                await waiter.wait()
            else:
                with anyio.fail_after(timeout):
                    await waiter.wait()
        except BaseException:
            pool = waiter.value
            if isinstance(pool, Pool):
                # Handed a pool in the same instant as the cancellation: pass
                # it on rather than lose it.
                waiter.value = None
                self._pool_free(pool)
            elif pool is None:
                try:
                    self._waiters.remove(waiter)
                except ValueError:
                    pass  # already woken by stop()
            raise
        handed = waiter.value
        if type(handed) is not Pool:
            if handed is None or self._state is not _State.RUNNING:
                raise stopped_while_waiting("this manager")
            # The supervisor could not make a pool for this waiter: the error
            # a caller finding the slot free would have had.
            raise handed
        return handed

    def _grant(self, pool: Pool, seconds: float, owner: str | None) -> ExecutorLease:
        assert self._runtime is not None
        lease = make_lease(
            self,
            pool,
            lease_id=f"lease-{next(self._lease_numbers)}",
            owner=owner,
            lease_seconds=seconds,
            grace_seconds=self._grace_seconds,
            leased_at=self._runtime.time(),
        )
        pool.hold(lease)
        self._leases[lease.lease_id] = lease
        self._granted += 1
        supervisor = self._supervisor
        if lease.soft_expires_at < supervisor.next_wake:
            supervisor.wake()
        if self._log.isEnabledFor(logging.DEBUG):
            self._log.debug(
                "lease.granted lease_id=%s owner=%s pool=%s seconds=%s",
                lease.lease_id,
                owner,
                pool.name,
                seconds,
            )
        return lease

    def _release_lease(self, lease: ExecutorLease) -> None:
        if lease._state is not LeaseState.ACTIVE:
            return
        runtime = self._runtime
        if runtime is None or not runtime.is_current():
            raise wrong_loop("this lease's manager")
        lease._state = LeaseState.RELEASED
        del self._leases[lease.lease_id]
        self._released += 1
        pool = lease._pool
        if self._log.isEnabledFor(logging.DEBUG):
            self._log.debug(
                "lease.released lease_id=%s owner=%s pool=%s running=%d",
                lease.lease_id,
                lease.owner,
                pool.name,
                pool.running,
            )
        idle = pool.release_holder()
        if pool.state is not PoolState.LEASED:
            return
        if idle:
            self._pool_free(pool)
        else:
            pool.state = PoolState.DRAINING
            self._draining[pool] = lease

    # -- pools and the supervisor -------------------------------------------

    def _on_pool_idle(self, pool: Pool) -> None:
        # Called on the loop thread when a watched pool's last job is done.
        if pool.state is PoolState.DRAINING:
            self._pool_free(pool)
        elif pool.idle_event is not None:
            pool.idle_event.set()

    def _pool_free(self, pool: Pool) -> None:
        """Hand a pool with no unfinished job to the next waiter, or idle it."""
        self._draining.pop(pool, None)
        if pool.broken or self._state is not _State.RUNNING:
            why = "broken" if pool.broken else "stop"
            self._supervisor.retire(pool, revoke=False, why=why)
            return
        if self._waiters:
            waiter = self._waiters.popleft()
            pool.state = PoolState.LEASED
            waiter.value = pool
            waiter.wake()
        else:
            pool.state = PoolState.IDLE
            self._idle.append(pool)

    async def _supervise(self, ready: anyio.Event) -> None:
        """Run the supervisor task, then leave the manager stopped.

        The body of the system task ``start()`` spawns. Whatever ends it (a
        stop, an error, the run going away), the manager is stopped after.
        """
        supervisor = self._supervisor
        clean = False
        try:
            clean = await supervisor.run(ready)
        finally:
            # Ended by the run going away, not by stop(): their holders (and
            # the program) never let go of them, which they report when
            # collected.
            self._end_leases(abandoned=self._needs_stop)
            for waiter in self._waiters:
                waiter.wake()
            self._waiters.clear()
            supervisor.end()
            self._state = _State.STOPPED
            self._runtime = None
            if supervisor.done is not None:
                supervisor.done.set()
            self._log.info(
                "manager.stopped backend=%s clean=%s", self._backend.name, clean
            )

    # -- sizing -------------------------------------------------------------

    def notify_scale_changed(self) -> None:
        """Ask for the size signal to be read now; safe from any thread."""
        supervisor = self._supervisor
        supervisor.scale_dirty = True
        runtime = self._runtime
        if runtime is None or self._state is not _State.RUNNING:
            return
        if threading.get_ident() == runtime.thread_id and runtime.is_current():
            supervisor.wake()
        else:
            runtime.call_soon_threadsafe(supervisor.wake)

    def desired_executor_count(self) -> int:
        """Return the pool count the size signal asks for right now."""
        return self._supervisor.desired()

    # -- introspection ------------------------------------------------------

    @property
    def backend(self) -> ExecutorBackend | str:
        """The built-in backend kind, or a custom backend's ``name``."""
        return self._kind if self._kind is not None else self._backend.name

    @property
    def max_pools(self) -> int:
        """The most pools alive at once."""
        return self._max_pools

    @property
    def min_pools(self) -> int:
        """Pools kept even when the size signal asks for fewer."""
        return self._min_pools

    @property
    def workers_per_pool(self) -> int:
        """Workers in each pool."""
        return self._workers_per_pool

    @property
    def started(self) -> bool:
        """Whether the manager is running (started and not stopping)."""
        return self._state is _State.RUNNING

    @property
    def available_count(self) -> int:
        """Idle pools, free to lease without waiting."""
        return len(self._idle)

    @property
    def leased_count(self) -> int:
        """Pools not free: leased, draining, or quarantined after revocation."""
        return len(self._pools) - len(self._idle)

    @property
    def total_count(self) -> int:
        """Every pool alive, all counted against ``max_pools``."""
        return len(self._pools)

    @property
    def waiting_count(self) -> int:
        """Callers queued in ``acquire``."""
        return len(self._waiters)

    def _now(self) -> float:
        runtime = self._runtime
        return runtime.time() if runtime is not None else 0.0

    def stats(self) -> dict[str, Any]:
        """Return counts, settings and one entry per live lease, as a dict."""
        return build_stats(
            now=self._now(),
            backend=str(self._backend.name),
            started=self._state is _State.RUNNING,
            desired=self.desired_executor_count(),
            max_pools=self._max_pools,
            min_pools=self._min_pools,
            units_per_pool=self._units_per_pool,
            workers_per_pool=self._workers_per_pool,
            pools=list(self._pools.values()),
            available=len(self._idle),
            waiting=len(self._waiters),
            leases=[(lease, lease._pool) for lease in self._leases.values()],
            leases_granted=self._granted,
            leases_released=self._released,
            leases_revoked=self._supervisor.revoked,
            leases_waited=self._waited,
            pools_retired=self._pool_set.retired,
            peak_pools=self._pool_set.peak,
        )

    def statistics(self) -> ManagerStatistics:
        """Return a frozen snapshot of the manager's counts."""
        return statistics_from_stats(self.stats())

    def __del__(self) -> None:
        # getattr: __init__ may have refused its arguments before setting it.
        if getattr(self, "_needs_stop", False):
            warnings.warn(
                f"{self!r} was started and never stopped; use 'async with' or "
                "'await manager.stop()'",
                ResourceWarning,
                source=self,
                stacklevel=1,
            )

    def __repr__(self) -> str:
        state = "" if self._state is _State.RUNNING else f" {self._state.value}"
        return (
            f"<LeasedExecutorManager {self._backend.name}{state} "
            f"{self.leased_count}/{self._max_pools} leased, "
            f"{len(self._waiters)} waiting>"
        )
