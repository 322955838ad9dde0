"""Leases: time-limited hold on one pool, and the executor proxy they hand out."""

from __future__ import annotations

import concurrent.futures as cf
import enum
import warnings
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, ParamSpec, TypeVar, final

from ._errors import job_cancelled, lease_gone, wrong_loop

if TYPE_CHECKING:
    from ._manager import LeasedExecutorManager
    from ._pool import Pool

__all__ = ["ExecutorLease", "LeaseState"]

P = ParamSpec("P")
T = TypeVar("T")

_MAKE_LEASE = object()  # only the manager holds this key to the constructor


class LeaseState(enum.Enum):
    """Where a lease is in its life. Grace is not a state: it is a time window."""

    ACTIVE = "active"
    RELEASED = "released"
    REVOKED = "revoked"


@final
class ExecutorLease:
    """A time-limited hold on one pool of a :class:`LeasedExecutorManager`.

    Leases come from ``await manager.acquire()`` (or ``manager.lease()``); do not
    construct them yourself. A lease runs work until it is released or, at
    ``hard_expires_at``, revoked; after that every new ``run``/``submit`` raises
    :class:`LeaseExpiredError`. Times are seconds on the event loop's monotonic
    clock, the one ``anyio.current_time()`` reads.
    """

    __slots__ = (
        "__weakref__",
        "_abandoned",
        "_executor",
        "_grace_logged",
        "_manager",
        "_pool",
        "_state",
        "grace_seconds",
        "hard_expires_at",
        "lease_id",
        "lease_seconds",
        "leased_at",
        "owner",
        "soft_expires_at",
    )

    def __init__(
        self,
        key: object,
        manager: LeasedExecutorManager,
        pool: Pool,
        *,
        lease_id: str,
        owner: str | None,
        lease_seconds: float,
        grace_seconds: float,
        leased_at: float,
    ) -> None:
        if key is not _MAKE_LEASE:
            raise TypeError("leases are made by LeasedExecutorManager.acquire()")
        self._manager = manager
        self._pool = pool
        self._state = LeaseState.ACTIVE
        # Set when a run ended under its unstopped manager while it was active.
        self._abandoned = False
        self._grace_logged = False
        self.lease_id = lease_id
        self.owner = owner
        self.lease_seconds = lease_seconds
        self.grace_seconds = grace_seconds
        self.leased_at = leased_at
        self.soft_expires_at = leased_at + lease_seconds
        self.hard_expires_at = self.soft_expires_at + grace_seconds
        # Made on first use: the proxy and the lease refer to each other, and
        # a cycle made on every acquire would be garbage for the cyclic
        # collector on the hottest path, for a proxy most holders never use.
        self._executor: _LeaseExecutor | None = None

    @property
    def state(self) -> LeaseState:
        """``ACTIVE`` until released or revoked."""
        return self._state

    @property
    def active(self) -> bool:
        """Whether the lease still takes new work."""
        return self._state is LeaseState.ACTIVE

    @property
    def executor(self) -> cf.Executor:
        """A ``concurrent.futures.Executor`` that submits to the leased pool.

        Its ``submit`` (and so ``map``) may be called from any thread while the
        lease is active. Its ``shutdown`` raises ``RuntimeError``: the pool is
        the manager's, so give it back with :meth:`release` instead.
        """
        executor = self._executor
        if executor is None:
            executor = self._executor = _LeaseExecutor(self)
        return executor

    def _live_pool(self) -> Pool:
        if self._state is not LeaseState.ACTIVE:
            raise lease_gone(self.lease_id, self._state.value)
        return self._pool

    async def run(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn(*args, **kwargs)`` in the leased pool and return its result.

        The function's own exception is raised as is. Cancelling the caller
        cancels the job if it has not started; a job already running finishes
        in its worker, and the pool is not handed to anyone else until it does.
        No thread is borrowed to wait for the job.
        """
        pool = self._live_pool()
        runtime = self._manager._runtime
        if runtime is None or not runtime.is_current():
            raise wrong_loop("this lease's manager")
        submitted = pool.submit_unwrapped(self, fn, args, kwargs)
        if submitted is None:
            raise lease_gone(self.lease_id, self._state.value)
        fut, unwrap = submitted
        del submitted
        try:
            await runtime.wait_done(fut)
            return unwrap(fut)
        except cf.CancelledError:
            # Only the manager cancels this future (revocation or stop cancels
            # queued work): say so, rather than leak concurrent.futures' error.
            if not fut.cancelled():
                raise
            raise job_cancelled(self.lease_id, self._state.value) from None
        finally:
            # A raised error's traceback holds this frame, and the future may
            # hold the error: drop the future so that no cycle keeps the two
            # (and the pool behind them) alive until the next GC.
            del fut

    async def release(self) -> None:
        """Give the pool back to the manager; calling it again does nothing.

        Jobs still running keep the pool out of circulation until they end.
        """
        self._manager._release_lease(self)

    async def __aenter__(self) -> ExecutorLease:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._manager._release_lease(self)

    def __del__(self) -> None:
        # Never released: still active (nothing ended it), or ended only
        # because the run ended under its manager, which was never stopped.
        # A lease ended by stop() or revoked on time has nothing to report.
        # getattr: a refused construction never set them.
        if getattr(self, "_abandoned", False) or (
            getattr(self, "_state", None) is LeaseState.ACTIVE
        ):
            warnings.warn(
                f"{self!r} was never released; use 'async with' or "
                "'await lease.release()'",
                ResourceWarning,
                source=self,
                stacklevel=1,
            )

    def __repr__(self) -> str:
        owner = f" owner={self.owner!r}" if self.owner is not None else ""
        return f"<ExecutorLease {self.lease_id}{owner} {self._state.value}>"


@final
class _LeaseExecutor(cf.Executor):
    """The executor a lease shows its holder; the raw pool stays private."""

    __slots__ = ("_lease",)

    def __init__(self, lease: ExecutorLease) -> None:
        self._lease = lease

    def submit(
        self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs
    ) -> cf.Future[T]:
        lease = self._lease
        pool = lease._live_pool()
        try:
            fut = pool.submit(lease, fn, args, kwargs)
        except RuntimeError:
            # The pool was shut down between the check and the submit: the
            # lease was revoked or the manager stopped from the loop thread.
            if not lease.active:
                raise lease_gone(lease.lease_id, lease.state.value) from None
            raise
        if fut is None:  # released or revoked since the check above
            raise lease_gone(lease.lease_id, lease.state.value)
        return fut

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        raise RuntimeError(
            "a leased executor belongs to its manager and cannot be shut down; "
            "release the lease instead (await lease.release() or 'async with')"
        )

    def __repr__(self) -> str:
        return f"<leased executor of {self._lease!r}>"


def make_lease(
    manager: LeasedExecutorManager,
    pool: Pool,
    *,
    lease_id: str,
    owner: str | None,
    lease_seconds: float,
    grace_seconds: float,
    leased_at: float,
) -> ExecutorLease:
    return ExecutorLease(
        _MAKE_LEASE,
        manager,
        pool,
        lease_id=lease_id,
        owner=owner,
        lease_seconds=lease_seconds,
        grace_seconds=grace_seconds,
        leased_at=leased_at,
    )
