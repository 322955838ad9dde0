"""One executor under the manager's care, and the count of its unfinished jobs.

The job count is the one piece of manager state touched off the event loop:
jobs are submitted from the loop (``lease.run``) or any thread (the lease's
executor proxy) and finish on worker threads. It lives behind a small lock, and
the only thing a worker thread ever asks of the loop is "this pool just went
idle", sent with :meth:`Runtime.call_soon_threadsafe` and only when the manager
asked to be told.
"""

from __future__ import annotations

import concurrent.futures as cf
import enum
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from ._backends import PoolBackend
from ._process_pool import LeasedProcessPool, future_result

__all__ = ["Pool", "PoolState"]

T = TypeVar("T")


class PoolState(enum.Enum):
    IDLE = "idle"  # free to hand out
    LEASED = "leased"  # held by a live lease (or granted to a waiter)
    DRAINING = "draining"  # lease released, its jobs still running
    RETIRING = "retiring"  # never reused; counted until its workers are gone


class Pool:
    """An executor, its state, and how many of its jobs have not finished."""

    __slots__ = (
        "_holder",
        "_lock",
        "_notify_idle",
        "_watching",
        "backend",
        "broken",
        "executor",
        "idle_event",
        "name",
        "revoked",
        "running",
        "state",
    )

    def __init__(
        self,
        name: str,
        executor: cf.Executor,
        backend: PoolBackend,
        notify_idle: Callable[[Pool], object],
    ) -> None:
        self.name = name
        self.executor = executor
        self.backend = backend
        self.state = PoolState.IDLE
        self.running = 0
        self.broken = False
        self.revoked = False
        # Set by the manager while it waits for a retiring pool to go idle.
        self.idle_event: Any = None
        self._lock = threading.Lock()
        self._watching = False
        self._notify_idle = notify_idle
        # The lease allowed to submit. Checked and counted under the lock, so
        # that a submit racing a release from another thread either lands
        # before it (and the release drains) or is refused.
        self._holder: object | None = None

    def hold(self, holder: object) -> None:
        """Let ``holder`` (a lease) submit jobs to this pool."""
        with self._lock:
            self._holder = holder

    def drop_holder(self) -> None:
        """Refuse every further submit; jobs already counted go on."""
        with self._lock:
            self._holder = None

    def release_holder(self) -> bool:
        """Refuse further submits; tell whether the pool is idle, else watch it.

        After ``False`` the pool's ``notify_idle`` callback fires once, when the
        last unfinished job is done.
        """
        with self._lock:
            self._holder = None
            if self.running == 0:
                return True
            self._watching = True
            return False

    def submit(
        self,
        holder: object,
        fn: Callable[..., T],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> cf.Future[T] | None:
        """Submit a job for ``holder`` and count it until its future is done.

        Returns ``None``, submitting nothing, when ``holder`` no longer holds
        the pool.
        """
        submitted = self._submit(holder, fn, args, kwargs, unwrapped=False)
        return None if submitted is None else submitted[0]

    def submit_unwrapped(
        self,
        holder: object,
        fn: Callable[..., T],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> tuple[cf.Future[Any], Callable[[cf.Future[Any]], T]] | None:
        """Like :meth:`submit`, for a caller that waits for the job itself.

        Returns the future and the function that turns it, once done, into the
        job's result (or raises its error). A process pool hands back its
        executor's own future and leaves the unpacking of the worker's outcome
        to that function, run by the waiting task: one future per job, not
        two, on the path ``lease.run`` takes.
        """
        return self._submit(holder, fn, args, kwargs, unwrapped=True)

    def _submit(
        self,
        holder: object,
        fn: Callable[..., T],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        unwrapped: bool,
    ) -> tuple[cf.Future[Any], Callable[[cf.Future[Any]], T]] | None:
        if not callable(fn):
            # Found here, not as a TypeError deep in a worker later.
            raise TypeError(f"fn must be a callable, got {fn!r}")
        with self._lock:
            if holder is not self._holder:
                return None
            self.running += 1
        executor = self.executor
        try:
            if unwrapped and isinstance(executor, LeasedProcessPool):
                fut, unwrap = executor.submit_unwrapped(fn, args, kwargs)
            else:
                fut, unwrap = executor.submit(fn, *args, **kwargs), future_result
        except BaseException as exc:
            if self.backend.is_broken_error(exc):
                self.broken = True
            self._job_finished()
            raise
        fut.add_done_callback(self._on_done)
        return fut, unwrap

    def _on_done(self, fut: cf.Future[Any]) -> None:
        # Runs on a worker thread (or wherever the future was cancelled), on
        # every job: one look at the future's lock, not two.
        try:
            exc = fut.exception()
        except cf.CancelledError:
            exc = None
        if exc is not None and self.backend.is_broken_error(exc):
            self.broken = True
        self._job_finished()

    def _job_finished(self) -> None:
        with self._lock:
            self.running -= 1
            tell = self._watching and self.running == 0
            if tell:
                self._watching = False
        if tell:
            self._notify_idle(self)

    def idle_or_watch(self) -> bool:
        """Return ``True`` if no job is unfinished; else arrange to be told.

        After ``False``, the pool's ``notify_idle`` callback fires exactly once,
        when the last unfinished job is done.
        """
        with self._lock:
            if self.running == 0:
                return True
            self._watching = True
            return False

    def __repr__(self) -> str:
        return f"<Pool {self.name} {self.state.value} running={self.running}>"
