"""The work grinder: many small calls, run in leased batches.

Theory of operation
-------------------
Callers add *items* (one call each) to a FIFO queue. Background tasks, one
*lane* per allowed concurrent batch, live from ``start()`` to ``stop()``
(spawned like the manager's supervisor, outside the caller's task tree). The
lane holding the dispatch lock sleeps until the queue holds
``batch_size_threshold`` live items (or is full under ``max_pending``) or its
oldest item is ``max_wait_seconds`` old, leases a pool, and only then takes up
to a threshold of items, so that items cancelled while it waited never reach a
pool. It then runs that batch under its lease and gives the lease back when
the batch ends, while the next lane looks for the next batch.

An item moves through these states (WAITING only for calls from other
threads, until the loop queues them)::

    (WAITING ─▶) PENDING ─taken─▶ BATCHED ─claimed─▶ RUNNING ─outcome─▶ DONE
                    │                │                  │
                    └─── cancel ─────┴─▶ CANCELLED ◀────┘ stop(cancel_pending)

A batch is a :class:`~leasepool._grinder_batch.Batch`; how its calls reach
the pool (runner threads, pickled chunks, one job per call) and what runs off
the event loop is told in :mod:`leasepool._grinder_batch`. Items are the
callers' :class:`~leasepool._grinder_handle.GrinderHandle` objects.

Outcomes come back to the event loop in groups: workers append ``(item, ok,
value)`` to the batch's ``finished`` deque, and the loop applies them when a
job ends (a runner, a chunk, a single call) and, for a thread batch that runs
long, every few milliseconds; a quick thread batch costs one wake-up in all.
Callers wait on *cohort* events: the items queued one after another share one
event per ``batch_size_threshold`` of them, which lines cohorts up with
batches, so one ``set()`` wakes a batch's callers. A caller woken with its
cohort while its own call is still out (a cohort split by a cancellation, a
long batch handed over in parts) waits on an event of its own from then on.
All grinder state is touched only on the event loop's thread, except the claim
of an item by a runner (under the batch's lock) and the inbox of
``submit_from_thread`` (under its lock).

A batch waits for its items no longer than its lease lives: once the lease is
revoked, items not yet started fail with :class:`LeaseExpiredError`, the slot
is freed, and items still running in a thread that cannot be stopped get their
outcome whenever they finish (or fail when the grinder stops).
"""

from __future__ import annotations

import concurrent.futures as cf
import enum
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from contextvars import copy_context
from types import TracebackType
from typing import Any, TypeVar

import anyio
from anyio.lowlevel import (
    cancel_shielded_checkpoint,
    checkpoint,
    checkpoint_if_cancelled,
)

from ._backends import ExecutorBackend
from ._errors import (
    LeasePoolError,
    LeaseUnavailableError,
    grinder_full,
    lease_gone,
    not_started,
    stopped_while_waiting,
    wrong_loop,
)
from ._grinder_batch import (
    Batch,
    claim_rest,
    copy_exception,
    run_thread_calls,
    send_units,
)
from ._grinder_handle import (
    BATCHED,
    CANCELLED,
    DONE,
    MAKE_HANDLE,
    PENDING,
    RUNNING,
    WAITING,
    GrinderHandle,
    GrinderStatistics,
    Item,
)
from ._lease import ExecutorLease
from ._log import GuardedLogger
from ._manager import LeasedExecutorManager
from ._runtime import Runtime, current_runtime
from ._validation import check_duration, check_positive_int

__all__ = ["WorkGrinder"]

T = TypeVar("T")

_module_log = logging.getLogger("leasepool.grinder")

# How long past a lease's hard expiry a batch waits for the manager to revoke
# it before looking again; the supervisor revokes on time, so this is slack for
# a busy loop, not a policy.
_REVOKE_SLACK = 0.05

# A thread batch starts with one runner job; if it has not finished after this
# many seconds, its calls are slow enough to be worth spreading over every
# worker of the pool. Quick calls (the common case) never pay for waking more
# threads than one.
_SPREAD_AFTER = 0.001

# While a thread batch runs, its finished calls reach their callers this often
# (in seconds), or up to _FLUSH_MAX apart when none finished lately; a quick
# batch hands them all over when it ends, with no wake-up per call.
_FLUSH_EVERY = 0.005
_FLUSH_MAX = 0.05

# Chunks per worker on the process and interpreter backends: two lets a worker
# that drew quick items take a second chunk while a slow one finishes, at the
# price of one more message per worker.
_CHUNKS_PER_WORKER = 2


class _State(enum.Enum):
    STOPPED = "stopped"
    RUNNING = "running"
    STOPPING = "stopping"


class _SpaceWaiter:
    """A caller (or a thread's item) waiting for room under ``max_pending``."""

    __slots__ = ("event", "granted", "item")

    def __init__(self, item: Item | None) -> None:
        self.item = item  # set for submit_from_thread: no task waits for it
        self.event = anyio.Event() if item is None else None
        self.granted = False


# TODO: ~1,100 lines in one class; its queue, lanes and counters share state on
# the per-call path, and a split must not add calls there (measure first).
class WorkGrinder:
    """Collects many small synchronous calls and runs them in leased batches.

    A batch starts when ``batch_size_threshold`` calls are queued or the oldest
    has waited ``max_wait_seconds``; it runs under one lease of
    ``executor_manager``, owned ``f"{owner_prefix}-batch-{n}"``. Use it as
    ``async with grinder:`` or ``await grinder.start()`` … ``await
    grinder.stop()``, inside a started manager; once started it belongs to the
    event loop (or trio run) that started it.

    The submitting methods take the call as ``fn, *args, **kwargs`` and keep the
    keywords ``owner`` (a label for the call) and ``wait`` for themselves. To
    pass keywords of those names to ``fn``, use :meth:`submit_call` /
    :meth:`enqueue_call`, which take ``args`` and ``kwargs`` as plain values,
    or bind them with ``functools.partial``.

    On a thread pool every call runs in a copy of the ``contextvars`` context of
    the code that submitted it. On process and interpreter pools calls travel
    pickled, a chunk of them per message, and must be picklable top-level
    callables, as with any process pool.

    Args:
        executor_manager: The manager whose pools run the batches.
        max_wait_seconds: The longest a queued call waits for its batch to
            start when fewer than ``batch_size_threshold`` calls are queued.
        batch_size_threshold: Queued calls that start a batch at once; also
            the most calls one batch takes.
        lease_seconds: Length of each batch's lease. A batch still running at
            its hard expiry is revoked: its calls not yet started fail with
            :class:`LeaseExpiredError`.
        owner_prefix: Start of each batch lease's owner label.
        logger: Where the grinder logs; the ``leasepool.grinder`` logger if
            ``None``.
        max_concurrent_batches: Batches allowed to run at once, each on its own
            lease; raise it with the manager's ``max_pools`` for throughput.
        max_pending: The most calls queued and not yet in a batch; past it
            submitters wait, or with ``wait=False`` get
            :class:`GrinderFullError`. A full queue starts a batch at once,
            like the threshold. ``None`` leaves the queue unbounded.
    """

    def __init__(
        self,
        *,
        executor_manager: LeasedExecutorManager,
        max_wait_seconds: float = 10.0,
        batch_size_threshold: int = 20,
        lease_seconds: float = 60.0,
        owner_prefix: str = "work-grinder",
        logger: logging.Logger | None = None,
        max_concurrent_batches: int = 1,
        max_pending: int | None = None,
    ) -> None:
        if not isinstance(executor_manager, LeasedExecutorManager):
            raise ValueError(
                "executor_manager must be a LeasedExecutorManager, "
                f"got {executor_manager!r}"
            )
        self._manager = executor_manager
        self._max_wait = check_duration("max_wait_seconds", max_wait_seconds)
        self._threshold = check_positive_int(
            "batch_size_threshold", batch_size_threshold
        )
        self._lease_seconds = check_duration("lease_seconds", lease_seconds)
        if not isinstance(owner_prefix, str) or not owner_prefix:
            raise ValueError(
                f"owner_prefix must be a non-empty string, got {owner_prefix!r}"
            )
        self._owner_prefix = owner_prefix
        if logger is not None and not isinstance(logger, logging.Logger):
            raise ValueError(f"logger must be a logging.Logger or None, got {logger!r}")
        self._log = GuardedLogger(logger if logger is not None else _module_log)
        self._max_batches = check_positive_int(
            "max_concurrent_batches", max_concurrent_batches
        )
        self._max_pending = (
            None
            if max_pending is None
            else check_positive_int("max_pending", max_pending)
        )
        # Queued calls that start a batch at once: a full queue does too, or a
        # max_pending below the threshold would leave it to max_wait_seconds.
        self._trigger = min(self._threshold, self._max_pending or self._threshold)

        self._state = _State.STOPPED
        self._runtime: Runtime | None = None
        self._cancelling = False
        self._queue: deque[Item] = deque()
        self._live = 0  # PENDING items in ``_queue``; the rest are cancelled
        # The event the newest queued items share, and how many share it (see
        # the module docstring).
        self._cohort: anyio.Event | None = None
        self._cohort_size = 0
        self._space_waiters: deque[_SpaceWaiter] = deque()
        self._reserved = 0  # room granted to woken space waiters, not yet used
        self._batches: set[Batch] = set()
        self._stranded: set[Item] = set()  # still running after their batch
        self._batch_count = 0
        self._mode = "thread"
        # Only a thread can run a call inside its submitter's context.
        self._copies_context = True
        self._workers = 1
        self._dispatch_lock: anyio.Lock | None = None
        self._wake: anyio.Event | None = None
        self._wants_items = False  # a lane sleeps until calls arrive
        self._acquire_scope: anyio.CancelScope | None = None
        self._done: anyio.Event | None = None
        self._inbox: list[tuple[Item, bool]] = []
        self._inbox_lock = threading.Lock()
        self._inbox_scheduled = False
        self._submitted = 0
        self._completed = 0
        self._failed = 0
        self._cancelled = 0

    # -- lifecycle ----------------------------------------------------------

    async def start(self) -> None:
        """Start taking calls; a no-op when started.

        Raises:
            LeasePoolNotStartedError: The executor manager is not running.
        """
        if self._state is not _State.STOPPED:
            self._check_loop()
            if self._state is _State.RUNNING:
                return
            assert self._done is not None
            await self._done.wait()
        manager = self._manager
        if not manager.started:
            raise not_started("the grinder's executor manager")
        runtime = current_runtime()
        kind = manager.backend
        # By identity: a user's backend may call itself "thread" and still run
        # its jobs somewhere else.
        if kind is ExecutorBackend.THREAD:
            self._mode = "thread"
        elif kind is ExecutorBackend.PROCESS:
            self._mode = "chunks"
        else:
            self._mode = "items"
        self._copies_context = self._mode == "thread"
        self._workers = manager.workers_per_pool
        self._runtime = runtime
        self._state = _State.RUNNING
        self._cancelling = False
        self._done = anyio.Event()
        # fast_acquire: the lock is held by one lane at a time and almost never
        # contended, so an uncontended acquire need not yield to the loop.
        self._dispatch_lock = anyio.Lock(fast_acquire=True)
        ready = anyio.Event()
        runtime.spawn_system_task(
            lambda: self._main(ready), name=f"{self._owner_prefix}-lanes"
        )
        await ready.wait()
        self._log.info(
            "grinder.started owner_prefix=%s backend=%s runtime=%s threshold=%d",
            self._owner_prefix,
            kind,
            runtime.name,
            self._threshold,
        )

    async def stop(self, cancel_pending: bool = False) -> None:
        """Stop taking calls, finish or cancel the queued ones, then stop.

        By default every queued call still runs (batches start at once, without
        waiting for ``max_wait_seconds``). With ``cancel_pending=True`` queued
        calls are cancelled, a wait for a lease is abandoned, and running
        batches are halted: their calls not yet started are cancelled, and
        calls already running in a worker finish there with their outcome
        discarded. Calling it again while stopping may escalate to cancelling.
        A no-op when stopped.
        """
        if not isinstance(cancel_pending, bool):
            raise ValueError(
                f"cancel_pending must be True or False, got {cancel_pending!r}"
            )
        if self._state is _State.STOPPED:
            return
        self._check_loop()
        done = self._done
        assert done is not None
        if self._state is _State.RUNNING:
            self._state = _State.STOPPING
            self._log.info(
                "grinder.stopping owner_prefix=%s pending=%d cancel_pending=%s",
                self._owner_prefix,
                self._live,
                cancel_pending,
            )
            while self._space_waiters:
                waiter = self._space_waiters.popleft()
                if waiter.event is not None:
                    waiter.event.set()
                elif waiter.item is not None:
                    self._fail(waiter.item, stopped_while_waiting("this grinder"))
        if cancel_pending and not self._cancelling:
            self._cancelling = True
            self._cancel_everything()
        self._poke()
        await done.wait()

    async def __aenter__(self) -> WorkGrinder:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def started(self) -> bool:
        """Whether the grinder takes calls (started and not stopping)."""
        return self._state is _State.RUNNING

    # -- submitting ---------------------------------------------------------

    async def submit(
        self,
        fn: Callable[..., T],
        /,
        *args: object,
        owner: str | None = None,
        wait: bool = True,
        **kwargs: object,
    ) -> T:
        """Run ``fn(*args, **kwargs)`` in a batch; return its result.

        The function's own exception is raised as is. Cancelling the caller
        cancels the call if it has not started; a call already running finishes
        in its worker, its outcome discarded.

        Args:
            fn: The synchronous callable to run.
            *args: Its positional arguments.
            owner: A label for the call, kept on its handle.
            wait: ``False`` raises :class:`GrinderFullError` at once instead of
                waiting while ``max_pending`` calls are queued.
            **kwargs: Its keyword arguments, except ``owner`` and ``wait``
                (see :meth:`submit_call`).

        Raises:
            LeasePoolNotStartedError: The grinder is not running, or stopped
                while this call waited for room.
            concurrent.futures.CancelledError: ``stop(cancel_pending=True)``
                cancelled the call.
        """
        item = self._admit_fast(fn, args, kwargs, owner, wait)
        if item is None:
            item = await self._admit_slow(fn, args, kwargs, owner, wait)
        event = item._event
        assert event is not None  # every queued item has one
        try:
            # _grinder_handle._settled(), inlined (keep the two alike): one more
            # coroutine per call is measurable on this per-call hot path.
            while True:
                await event.wait()
                state = item._state
                if state is DONE or state is CANCELLED:
                    break
                event = item._event
                assert event is not None
                if event.is_set():
                    event = item._event = anyio.Event()
        except BaseException:
            self._cancel_item(item, "its caller was cancelled")
            raise
        result: T = item.result()
        return result

    async def submit_call(
        self,
        fn: Callable[..., T],
        args: Iterable[object] = (),
        kwargs: Mapping[str, object] | None = None,
        *,
        owner: str | None = None,
        wait: bool = True,
    ) -> T:
        """Like :meth:`submit`, with the call's arguments given as values.

        Here ``kwargs`` may hold any names, ``owner`` and ``wait`` included.
        """
        call = _Call(fn, tuple(args), dict(kwargs or {}))
        return await self.submit(call, owner=owner, wait=wait)

    async def enqueue(
        self,
        fn: Callable[..., T],
        /,
        *args: object,
        owner: str | None = None,
        wait: bool = True,
        **kwargs: object,
    ) -> GrinderHandle[T]:
        """Queue ``fn(*args, **kwargs)`` and return its handle at once.

        Waits only while ``max_pending`` calls are queued (or, with
        ``wait=False``, raises :class:`GrinderFullError`). The arguments are
        those of :meth:`submit`. Like any trio-style async call it is a
        checkpoint: a caller cancelled on entry queues nothing.
        """
        await checkpoint_if_cancelled()
        item = self._admit_fast(fn, args, kwargs, owner, wait)
        if item is None:
            return await self._admit_slow(fn, args, kwargs, owner, wait)
        await cancel_shielded_checkpoint()
        return item

    async def enqueue_call(
        self,
        fn: Callable[..., T],
        args: Iterable[object] = (),
        kwargs: Mapping[str, object] | None = None,
        *,
        owner: str | None = None,
        wait: bool = True,
    ) -> GrinderHandle[T]:
        """Like :meth:`enqueue`, with the call's arguments given as values."""
        call = _Call(fn, tuple(args), dict(kwargs or {}))
        return await self.enqueue(call, owner=owner, wait=wait)

    def submit_from_thread(
        self,
        fn: Callable[..., T],
        /,
        *args: object,
        owner: str | None = None,
        wait: bool = True,
        **kwargs: object,
    ) -> cf.Future[T]:
        """Queue a call from another thread; return a ``concurrent.futures.Future``.

        Never blocks the calling thread. Cancelling the future cancels the call
        if it has not started. While ``max_pending`` calls are queued the call
        waits for room on the event loop, or with ``wait=False`` the future
        fails with :class:`GrinderFullError`. On thread pools the call runs in
        a copy of the calling thread's ``contextvars`` context.

        Raises:
            RuntimeError: Called from the grinder's own event loop thread,
                where ``await grinder.submit(...)`` is the way.
            LeasePoolNotStartedError: The grinder is not running.
        """
        runtime = self._runtime
        if runtime is not None and threading.get_ident() == runtime.thread_id:
            raise RuntimeError(
                "submit_from_thread() cannot be called from the grinder's own "
                "event loop thread; use 'await grinder.submit(...)' there"
            )
        if runtime is None or self._state is not _State.RUNNING:
            raise not_started("this grinder")
        _check_call(fn, owner, wait)
        ctx = copy_context() if self._copies_context else None
        item: Item = GrinderHandle(MAKE_HANDLE, self, fn, args, kwargs, owner, ctx)
        item._state = WAITING
        future: cf.Future[T] = cf.Future()
        item._future = future

        def on_done(done: cf.Future[T]) -> None:
            # Runs wherever the future finished; only a cancel needs the loop.
            if done.cancelled():
                # cf.wait() and as_completed() see a cancelled future only
                # once it is notified, which no executor will do for this one.
                done.set_running_or_notify_cancel()
                if item._state is not CANCELLED:
                    runtime.call_soon_threadsafe(
                        self._cancel_item, item, "its future was cancelled"
                    )

        future.add_done_callback(on_done)
        with self._inbox_lock:
            self._inbox.append((item, wait))
            schedule = not self._inbox_scheduled
            self._inbox_scheduled = True
        if schedule and not runtime.call_soon_threadsafe(self._drain_inbox):
            self._drain_inbox()  # the loop is gone: fail what it never took
        return future

    # -- introspection ------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Return counts and settings as a dict.

        Call it before start, after stop, or on the owning event loop; from
        other threads use :meth:`stats_from_thread`.
        """
        if self._state is not _State.STOPPED:
            self._check_loop()
        return self._stats_now()

    async def astats(self) -> dict[str, Any]:
        """Return :meth:`stats` from a task of the owning event loop."""
        stats = self.stats()
        await checkpoint()
        return stats

    def stats_from_thread(self, timeout: float | None = None) -> dict[str, Any]:
        """Return :meth:`stats` from another thread, waiting for the loop.

        Args:
            timeout: Seconds to wait for the event loop to answer; ``None``
                waits as long as the grinder runs.

        Raises:
            RuntimeError: Called from the grinder's own event loop thread.
            TimeoutError: The loop did not answer in time.
        """
        if timeout is not None:
            check_duration("timeout", timeout, allow_zero=True)
        runtime = self._runtime
        if runtime is None:
            return self._stats_now()
        if threading.get_ident() == runtime.thread_id:
            raise RuntimeError(
                "stats_from_thread() cannot be called from the grinder's own "
                "event loop thread; use stats() there"
            )
        future: cf.Future[dict[str, Any]] = cf.Future()

        def collect() -> None:
            if future.set_running_or_notify_cancel():
                future.set_result(self._stats_now())

        if not runtime.call_soon_threadsafe(collect):
            return self._stats_now()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            # Wait in slices: should the loop end without running ``collect``,
            # the grinder is stopped and its counts can be read directly.
            step = 0.1
            if deadline is not None:
                step = min(step, max(0.0, deadline - time.monotonic()))
            try:
                return future.result(step)
            except TimeoutError:
                if self._runtime is not runtime:
                    return self._stats_now()
                if deadline is not None and time.monotonic() >= deadline:
                    raise TimeoutError(
                        f"the grinder's event loop did not answer in {timeout}s"
                    ) from None

    def statistics(self) -> GrinderStatistics:
        """Return a frozen snapshot of the counts in :meth:`stats`."""
        s = self.stats()
        return GrinderStatistics(
            **{name: s[name] for name in GrinderStatistics.__dataclass_fields__}
        )

    def _stats_now(self) -> dict[str, Any]:
        runtime = self._runtime
        oldest = 0.0
        head = self._oldest()
        if runtime is not None and head is not None:
            oldest = max(0.0, runtime.time() - head._enqueued_at)
        in_flight = sum(1 for b in self._batches for i in b.items if not i.done())
        return {
            "started": self._state is _State.RUNNING,
            "stopping": self._state is _State.STOPPING,
            "pending": self._live,
            "running_batches": len(self._batches),
            "in_flight": in_flight,
            "waiting_for_space": len(self._space_waiters),
            "oldest_wait_seconds": oldest,
            "batches": self._batch_count,
            "submitted": self._submitted,
            "completed": self._completed,
            "failed": self._failed,
            "cancelled": self._cancelled,
            "batch_size_threshold": self._threshold,
            "max_wait_seconds": self._max_wait,
            "lease_seconds": self._lease_seconds,
            "max_concurrent_batches": self._max_batches,
            "max_pending": self._max_pending,
            "owner_prefix": self._owner_prefix,
        }

    def __repr__(self) -> str:
        state = "" if self._state is _State.RUNNING else f" {self._state.value}"
        return (
            f"<WorkGrinder {self._owner_prefix}{state} {self._live} pending, "
            f"{len(self._batches)}/{self._max_batches} batches running>"
        )

    # -- admission (loop thread) --------------------------------------------

    def _check_loop(self) -> None:
        runtime = self._runtime
        if runtime is None or not runtime.is_current():
            raise wrong_loop("this grinder")

    def _admit_fast(
        self,
        fn: Callable[..., Any],
        args: tuple[object, ...],
        kwargs: dict[str, object],
        owner: str | None,
        wait: bool,
    ) -> Item | None:
        """Queue the call if there is room now; ``None`` means wait for room."""
        runtime = self._runtime
        if runtime is None or not runtime.is_current():
            if self._state is _State.STOPPED:
                raise not_started("this grinder")
            raise wrong_loop("this grinder")
        if self._state is not _State.RUNNING:
            raise not_started("this grinder")
        if not self._manager.started:
            raise not_started("the grinder's executor manager")
        if owner is not None or wait is not True or not callable(fn):
            _check_call(fn, owner, wait)
        limit = self._max_pending
        if limit is not None and (
            self._space_waiters or self._live + self._reserved >= limit
        ):
            if not wait:
                raise grinder_full(limit)
            return None
        ctx = copy_context() if self._copies_context else None
        item: Item = GrinderHandle(MAKE_HANDLE, self, fn, args, kwargs, owner, ctx)
        self._push(item, runtime)
        return item

    async def _admit_slow(
        self,
        fn: Callable[..., Any],
        args: tuple[object, ...],
        kwargs: dict[str, object],
        owner: str | None,
        wait: bool,
    ) -> Item:
        """Wait in FIFO order for room under ``max_pending``, then queue."""
        # Copied before waiting: the call belongs to its caller's context as it
        # was when submitted.
        ctx = copy_context() if self._copies_context else None
        waiter = _SpaceWaiter(None)
        assert waiter.event is not None
        self._space_waiters.append(waiter)
        try:
            await waiter.event.wait()
        except BaseException:
            if waiter.granted:
                self._reserved -= 1
                self._grant_space()
            else:
                try:
                    self._space_waiters.remove(waiter)
                except ValueError:
                    pass  # already woken by stop()
            raise
        if waiter.granted:
            self._reserved -= 1
        if not waiter.granted or self._state is not _State.RUNNING:
            raise stopped_while_waiting("this grinder")
        runtime = self._runtime
        assert runtime is not None
        item: Item = GrinderHandle(MAKE_HANDLE, self, fn, args, kwargs, owner, ctx)
        self._push(item, runtime)
        return item

    def _push(self, item: Item, runtime: Runtime) -> None:
        item._state = PENDING
        item._enqueued_at = runtime.time()
        cohort = self._cohort
        if cohort is None or self._cohort_size >= self._trigger:
            cohort = self._cohort = anyio.Event()
            self._cohort_size = 0
        self._cohort_size += 1
        item._event = cohort
        self._queue.append(item)
        self._live += 1
        self._submitted += 1
        if self._wants_items and (self._live >= self._trigger or self._live == 1):
            self._poke()

    def _grant_space(self) -> None:
        limit = self._max_pending
        if limit is None:
            return
        waiters = self._space_waiters
        while waiters and self._live + self._reserved < limit:
            waiter = waiters.popleft()
            waiter.granted = True
            if waiter.item is not None:
                assert self._runtime is not None
                self._push(waiter.item, self._runtime)
            else:
                assert waiter.event is not None
                self._reserved += 1
                waiter.event.set()

    def _drain_inbox(self) -> None:
        """Queue the calls other threads submitted (loop thread)."""
        with self._inbox_lock:
            inbox, self._inbox = self._inbox, []
            self._inbox_scheduled = False
        runtime = self._runtime
        limit = self._max_pending
        for item, wait in inbox:
            if item._state is not WAITING:
                continue  # its future was cancelled meanwhile
            if self._state is not _State.RUNNING or runtime is None:
                self._fail(item, not_started("this grinder"))
            elif limit is not None and (
                self._space_waiters or self._live + self._reserved >= limit
            ):
                if wait:
                    self._space_waiters.append(_SpaceWaiter(item))
                else:
                    self._fail(item, grinder_full(limit))
            else:
                self._push(item, runtime)

    # -- cancellation and outcomes (loop thread) ----------------------------

    def _cancel_item(self, item: Item, why: str) -> bool:
        """Cancel an item that has not started; tell whether it is cancelled."""
        state = item._state
        if state is PENDING:
            self._live -= 1
            queue = self._queue
            # Cheap removal at either end; elsewhere it stays behind as garbage
            # that _take() skips, compacted once it outweighs the live items.
            if queue[-1] is item:
                queue.pop()
            elif queue[0] is item:
                queue.popleft()
            elif len(queue) > 64 and len(queue) > 2 * self._live + 1:
                item._state = CANCELLED
                self._queue = deque(i for i in queue if i._state is PENDING)
            self._settle_cancelled(item, why)
            self._grant_space()
            return True
        if state is BATCHED:
            batch = item._batch
            assert batch is not None
            with batch.lock:
                if item._state is not BATCHED:
                    return False  # a worker claimed it a moment ago
                item._state = CANCELLED
            self._settle_cancelled(item, why)
            return True
        if state is WAITING:
            for waiter in self._space_waiters:
                if waiter.item is item:
                    self._space_waiters.remove(waiter)
                    break
            self._settle_cancelled(item, why)
            return True
        return state is CANCELLED

    def _settle_cancelled(self, item: Item, why: str) -> None:
        item._state = CANCELLED
        item._value = why
        item._batch = None
        self._cancelled += 1
        event = item._event
        if event is not None:
            event.set()
        future = item._future
        if future is not None:
            future.cancel()

    def _fail(self, item: Item, exc: BaseException) -> None:
        """Settle an item with an exception, unless it is settled already."""
        self._settle(item, False, exc)

    def _settle(self, item: Item, ok: bool, value: Any) -> None:
        """Publish an item's outcome, unless it is settled already."""
        if self._apply(item, ok, value):
            event = item._event
            if event is not None:
                event.set()

    def _apply(self, item: Item, ok: bool, value: Any) -> bool:
        """Record an outcome; the caller wakes the item's waiters.

        Returns ``False``, doing nothing, if the item was settled already.
        """
        state = item._state
        if state is DONE or state is CANCELLED:
            return False
        item._state = DONE
        item._ok = ok
        item._value = value
        item._batch = None  # no cycle left for the garbage collector to find
        if ok:
            self._completed += 1
        else:
            self._failed += 1
        future = item._future
        if future is not None:
            try:
                if ok:
                    future.set_result(value)
                else:
                    future.set_exception(value)
            except cf.InvalidStateError:
                pass  # cancelled from its thread a moment ago
        return True

    def _flush(self, batch: Batch) -> int:
        """Apply the outcomes workers have reported so far (loop thread).

        Consecutive items mostly share a cohort event: it is set once, and
        its waiters run only after this whole group is applied.
        """
        finished = batch.finished
        apply = self._apply
        stranded = self._stranded
        woken = None
        count = len(finished)
        while finished:
            item, ok, value = finished.popleft()
            if apply(item, ok, value):
                event = item._event
                if event is not woken and event is not None:
                    event.set()
                    woken = event
            if stranded:
                stranded.discard(item)
        return count

    def _job_ended(self, batch: Batch) -> None:
        batch.outstanding -= 1
        if batch.outstanding <= 0:
            # Woken first, the lane can start the next batch before the
            # callers of this one resume (asyncio runs them in this order;
            # trio may not).
            batch.done.set()
        self._flush(batch)

    def _cancel_everything(self) -> None:
        queue, self._queue = self._queue, deque()
        self._live = 0
        for item in queue:
            if item._state is PENDING:
                self._settle_cancelled(item, "cancelled by stop(cancel_pending=True)")
        scope = self._acquire_scope
        if scope is not None:
            scope.cancel()
        for batch in self._batches:
            if batch.scope is not None:
                batch.scope.cancel()

    def _oldest(self) -> Item | None:
        queue = self._queue
        while queue and queue[0]._state is not PENDING:
            queue.popleft()
        return queue[0] if queue else None

    # -- lanes --------------------------------------------------------------

    def _poke(self) -> None:
        wake = self._wake
        if wake is not None:
            self._wants_items = False
            wake.set()

    async def _sleep(self, deadline: float) -> None:
        """Sleep until ``deadline``, or until new calls or stop() poke us."""
        self._wants_items = True
        self._wake = wake = anyio.Event()
        try:
            with anyio.CancelScope(deadline=deadline):
                await wake.wait()
        finally:
            self._wake = None
            self._wants_items = False

    async def _main(self, ready: anyio.Event) -> None:
        clean = False
        try:
            async with anyio.create_task_group() as tg:
                # More lanes than pools could never run a batch.
                manager_pools = self._manager.max_pools
                for _ in range(min(self._max_batches, manager_pools)):
                    tg.start_soon(self._lane)
                ready.set()
            clean = True
        except Exception:
            self._log.exception("grinder.failed owner_prefix=%s", self._owner_prefix)
        finally:
            ready.set()
            self._state = _State.STOPPED
            leftovers = [item for b in self._batches for item in b.items]
            leftovers += self._stranded
            leftovers += self._queue
            for item in leftovers:
                if self._cancelling:
                    if not item.done():
                        self._settle_cancelled(item, "cancelled by stop()")
                else:
                    self._fail(item, stopped_while_waiting("this grinder"))
            self._drain_inbox()  # fails what other threads sent meanwhile
            self._batches.clear()
            self._stranded.clear()
            self._queue.clear()
            self._live = 0
            self._reserved = 0
            self._cohort = None  # it belongs to this run's event loop
            self._runtime = None
            if self._done is not None:
                self._done.set()
            self._log.info(
                "grinder.stopped owner_prefix=%s batches=%d clean=%s",
                self._owner_prefix,
                self._batch_count,
                clean,
            )

    async def _lane(self) -> None:
        """Start batches and run them, one at a time, until the grinder stops.

        There is one lane per allowed concurrent batch. Only the lane holding
        the dispatch lock looks for the next batch, so batches start in order
        and none before its trigger. A lane starts its next batch in the same
        step that ends its last one, usually before the callers of that batch
        resume, so that the pool is not left idle while the loop wakes them.
        """
        lock = self._dispatch_lock
        assert lock is not None
        while True:
            async with lock:
                batch = await self._next_batch()
            if batch is None:
                return
            await self._run_batch(batch)

    async def _next_batch(self) -> Batch | None:
        """Wait for a batch's trigger, lease a pool, and take its calls."""
        runtime = self._runtime
        assert runtime is not None
        while not self._cancelling:
            running = self._state is _State.RUNNING
            if not self._live:
                if not running:
                    return None  # drained
                await self._sleep(math.inf)
                continue
            if self._live < self._trigger and running:
                head = self._oldest()
                assert head is not None
                due = head._enqueued_at + self._max_wait
                if runtime.time() < due:
                    await self._sleep(due)
                    continue
            number = self._batch_count + 1
            lease = await self._lease(f"{self._owner_prefix}-batch-{number}")
            if lease is None:
                continue
            items = self._take()
            if not items:  # all cancelled while we waited for the lease
                await lease.release()
                continue
            self._batch_count = number
            batch = Batch(number, lease, items, runtime)
            for item in items:
                item._batch = batch
            self._batches.add(batch)
            if self._log.isEnabledFor(logging.DEBUG):
                self._log.debug(
                    "batch.started owner=%s lease_id=%s calls=%d",
                    lease.owner,
                    lease.lease_id,
                    len(items),
                )
            return batch
        return None

    async def _lease(self, owner: str) -> ExecutorLease | None:
        """Lease a pool for a batch; ``None`` if stop() or a failure intervened.

        A failure to lease (the manager stopped, say) will not pass by itself:
        it fails every queued call, so that callers hear of it at once.
        """
        manager = self._manager
        seconds = self._lease_seconds
        try:
            try:
                return manager.acquire_nowait(lease_seconds=seconds, owner=owner)
            except LeaseUnavailableError:
                pass
            with anyio.CancelScope() as scope:
                self._acquire_scope = scope
                return await manager.acquire(lease_seconds=seconds, owner=owner)
        except Exception as exc:
            self._log.warning(
                "batch.lease_failed owner=%s calls=%d error=%r", owner, self._live, exc
            )
            first = True
            while self._live:
                for item in self._take():
                    self._fail(item, copy_exception(exc, first=first))
                    first = False
        finally:
            self._acquire_scope = None
        return None  # stop(cancel_pending=True) cancelled the wait

    def _take(self) -> list[Item]:
        """Take up to a threshold of the oldest queued items, in FIFO order."""
        queue = self._queue
        limit = self._threshold
        items: list[Item] = []
        append = items.append
        while queue and len(items) < limit:
            item = queue.popleft()
            if item._state is PENDING:
                item._state = BATCHED
                append(item)
        self._live -= len(items)
        if not queue:
            self._cohort = None
        elif items:
            self._split_cohort(items[-1]._event)
        self._grant_space()
        return items

    def _split_cohort(self, taken: anyio.Event | None) -> None:
        """Give queued items that share the taken batch's cohort one of their own.

        Cohorts line up with batches unless a cancellation shifted the queue;
        without this the rest of such a cohort would wake with this batch.
        """
        fresh = None
        moved = 0
        for item in self._queue:
            if item._event is not taken:
                break
            if fresh is None:
                fresh = anyio.Event()
            item._event = fresh
            moved += 1
        if fresh is not None and self._cohort is taken:
            self._cohort = fresh
            self._cohort_size = moved

    # -- batches ------------------------------------------------------------

    async def _run_batch(self, batch: Batch) -> None:
        lease = batch.lease
        try:
            with anyio.CancelScope() as scope:
                batch.scope = scope
                if self._cancelling:
                    scope.cancel()
                self._send(batch)
                await self._watch_batch(batch)
        except Exception:
            self._log.exception("batch.failed number=%d", batch.number)
        finally:
            with anyio.CancelScope(shield=True):
                try:
                    self._end_batch(batch)
                except Exception:
                    self._log.exception("batch.end_failed number=%d", batch.number)
                await lease.release()
            self._batches.discard(batch)
            if self._log.isEnabledFor(logging.DEBUG):
                self._log.debug(
                    "batch.ended owner=%s lease_id=%s",
                    lease.owner,
                    lease.lease_id,
                )

    async def _watch_batch(self, batch: Batch) -> None:
        """Wait for a batch to end, or for its lease to be revoked.

        A thread batch that is still running after ``_SPREAD_AFTER`` gets a
        runner for every worker, and from then on its finished calls are
        handed to their callers every ``_FLUSH_EVERY`` seconds while calls keep
        finishing, backing off to ``_FLUSH_MAX`` in quiet spells.
        """
        lease = batch.lease
        expiry = lease.hard_expires_at
        poll = math.inf
        interval = _FLUSH_EVERY
        if self._mode == "thread":
            poll = anyio.current_time() + _SPREAD_AFTER
        done = batch.done
        while not done.is_set():
            with anyio.CancelScope(deadline=min(expiry, poll)):
                await done.wait()
            if done.is_set():
                return
            now = anyio.current_time()
            if now >= poll:
                spare = min(len(batch.todo), self._workers - batch.runners)
                if spare > 0:
                    self._add_runners(batch, spare)
                if self._flush(batch):
                    interval = _FLUSH_EVERY
                else:
                    interval = min(interval * 2, _FLUSH_MAX)
                poll = now + interval
            if now >= expiry:
                if not lease.active:
                    return  # revoked: do not wait for calls still running
                expiry = now + _REVOKE_SLACK

    def _end_batch(self, batch: Batch) -> None:
        """Halt a batch: settle what never ran, keep track of what still runs."""
        unclaimed = claim_rest(batch)
        cancel = self._cancelling
        if cancel:
            for future in batch.futures:
                future.cancel()
        # Their done callbacks refer to the batch: let plain reference counting
        # free both.
        batch.futures.clear()
        self._flush(batch)
        lease = batch.lease
        for item in unclaimed:
            if cancel:
                self._settle_cancelled(item, "cancelled by stop(cancel_pending=True)")
            elif not lease.active:
                self._fail(item, lease_gone(lease.lease_id, lease.state.value))
            else:
                never = f"batch {batch.number} ended before this call was started"
                self._fail(item, LeasePoolError(never))
        for item in batch.items:
            if item._state is RUNNING:
                if cancel:
                    self._settle_cancelled(
                        item, "cancelled by stop(cancel_pending=True) while running"
                    )
                else:
                    self._stranded.add(item)

    def _send(self, batch: Batch) -> None:
        """Hand a batch's calls to its lease's pool."""
        items = batch.items
        if self._mode == "thread":
            # One runner first: quick calls are done before a second worker
            # could even wake up. _run_batch adds the rest if the batch lasts.
            self._add_runners(batch, 1)
            return
        if self._mode == "chunks":
            size = math.ceil(len(items) / (self._workers * _CHUNKS_PER_WORKER))
            units = [items[i : i + size] for i in range(0, len(items), size)]
        else:
            units = [[item] for item in items]
        batch.outstanding = len(units)
        # Submitting may block (starting worker processes, a bounded queue in
        # a user's executor): never on the event loop.
        threading.Thread(
            target=send_units,
            args=(batch, units, self._mode == "chunks", self._job_ended),
            name=f"{self._owner_prefix}-batch-{batch.number}-submit",
            daemon=True,
        ).start()

    def _add_runners(self, batch: Batch, count: int) -> None:
        """Start ``count`` more jobs sharing a thread batch's calls."""
        runtime = batch.runtime
        submit = batch.lease.executor.submit
        job_ended = self._job_ended

        def on_done(_: cf.Future[None]) -> None:
            runtime.call_soon_threadsafe(job_ended, batch)

        for _ in range(count):
            try:
                future = submit(run_thread_calls, batch)
            except Exception as exc:
                if not batch.runners:  # nothing will run: every call fails alike
                    unclaimed = claim_rest(batch)
                    for item in unclaimed:
                        copied = copy_exception(exc, first=item is unclaimed[0])
                        self._fail(item, copied)
                break
            batch.runners += 1
            batch.outstanding += 1
            batch.futures.append(future)
            future.add_done_callback(on_done)
        if batch.outstanding <= 0:
            batch.done.set()


class _Call:
    """``fn(*args, **kwargs)`` as one picklable callable, for ``*_call`` methods."""

    __slots__ = ("args", "fn", "kwargs")

    def __init__(
        self,
        fn: Callable[..., Any],
        args: tuple[object, ...],
        kwargs: dict[str, object],
    ) -> None:
        self.fn = fn
        self.args = args
        self.kwargs = kwargs

    def __call__(self) -> Any:
        return self.fn(*self.args, **self.kwargs)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_Call, (self.fn, self.args, self.kwargs))

    def __repr__(self) -> str:
        return f"_Call({self.fn!r}, {self.args!r}, {self.kwargs!r})"


def _check_call(fn: object, owner: object, wait: object) -> None:
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {fn!r}")
    if owner is not None and not isinstance(owner, str):
        raise ValueError(f"owner must be a string or None, got {owner!r}")
    if not isinstance(wait, bool):
        raise ValueError(f"wait must be True or False, got {wait!r}")
