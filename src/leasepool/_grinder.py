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

Callers wait on events shared by a *cohort* of items queued one after another,
lined up with batches so that one ``set()`` wakes a batch's callers; outcomes
reach the loop in groups, not one wake-up per call. Grinder state is touched
only on the event loop's thread, except the claim of an item by a runner
(under the batch's lock) and the inbox of ``submit_from_thread`` (under the
inbox's lock).

Layout
------
This module is the public face: options, lifecycle, submitting, statistics.
The machinery is in objects of their own, each module one concept and telling
why it stands apart: :mod:`leasepool._grinder_queue` (the calls until
a batch takes them), :mod:`leasepool._grinder_engine` (lanes and batches),
:mod:`leasepool._grinder_handle` (the items, and the tally that settles them)
and :mod:`leasepool._grinder_batch` (what runs off the event loop). The seams
follow the per-call path, which stays as short as in one class: ``submit``
makes one call into the queue, and the engine one per outcome into the tally.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType
from typing import Any, TypeVar

import anyio
from anyio.lowlevel import (
    cancel_shielded_checkpoint,
    checkpoint,
    checkpoint_if_cancelled,
)

from ._errors import not_started
from ._grinder_engine import BatchEngine
from ._grinder_handle import CANCELLED, DONE, GrinderHandle, GrinderStatistics, Tally
from ._grinder_queue import CallQueue, State
from ._log import GuardedLogger
from ._manager import LeasedExecutorManager
from ._runtime import current_runtime
from ._validation import check_duration, check_positive_int

__all__ = ["WorkGrinder"]

T = TypeVar("T")

_module_log = logging.getLogger("leasepool.grinder")


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
            its hard expiry is revoked: on threads and interpreters its calls
            not yet started fail with :class:`LeaseExpiredError`; on processes,
            whose workers are killed, the unfinished calls of the batch fail
            with ``BrokenProcessPool`` saying the lease was revoked.
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
        self._tally = Tally()
        self._queue = CallQueue(
            executor_manager, self._tally, self._threshold, self._max_pending
        )
        self._engine = BatchEngine(
            manager=executor_manager,
            queue=self._queue,
            tally=self._tally,
            log=self._log,
            max_wait=self._max_wait,
            lease_seconds=self._lease_seconds,
            owner_prefix=owner_prefix,
            max_batches=self._max_batches,
        )
        self._done: anyio.Event | None = None  # set when the current run ends

    # -- lifecycle ----------------------------------------------------------

    async def start(self) -> None:
        """Start taking calls; a no-op when started.

        Raises:
            LeasePoolNotStartedError: The executor manager is not running.
        """
        queue = self._queue
        if queue.state is not State.STOPPED:
            queue.check_loop()
            if queue.state is State.RUNNING:
                return
            assert self._done is not None
            await self._done.wait()
        manager = self._manager
        if not manager.started:
            raise not_started("the grinder's executor manager")
        runtime = current_runtime()
        engine = self._engine
        engine.open()
        queue.open(runtime, copies_context=engine.mode == "thread")
        self._done = done = anyio.Event()
        ready = anyio.Event()
        runtime.spawn_system_task(
            lambda: engine.run(ready, done), name=f"{self._owner_prefix}-lanes"
        )
        await ready.wait()
        self._log.info(
            "grinder.started owner_prefix=%s backend=%s runtime=%s threshold=%d",
            self._owner_prefix,
            manager.backend,
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
        queue = self._queue
        if queue.state is State.STOPPED:
            return
        queue.check_loop()
        done = self._done
        assert done is not None
        if queue.state is State.RUNNING:
            self._log.info(
                "grinder.stopping owner_prefix=%s pending=%d cancel_pending=%s",
                self._owner_prefix,
                queue.live,
                cancel_pending,
            )
            queue.stop_accepting()
        if cancel_pending and not self._engine.cancelling:
            self._engine.cancel()
        queue.poke()
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
        return self._queue.state is State.RUNNING

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
        queue = self._queue
        item = queue.admit(fn, args, kwargs, owner, wait)
        if item is None:
            item = await queue.admit_when_room(fn, args, kwargs, owner)
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
            queue.cancel(item, "its caller was cancelled")
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
        queue = self._queue
        item = queue.admit(fn, args, kwargs, owner, wait)
        if item is None:
            return await queue.admit_when_room(fn, args, kwargs, owner)
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
        return self._queue.admit_from_thread(fn, args, kwargs, owner, wait)

    # -- introspection ------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Return counts and settings as a dict.

        Call it before start, after stop, or on the owning event loop; from
        other threads use :meth:`stats_from_thread`.
        """
        if self._queue.state is not State.STOPPED:
            self._queue.check_loop()
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
        runtime = self._queue.runtime
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
                if self._queue.runtime is not runtime:
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
        queue = self._queue
        engine = self._engine
        tally = self._tally
        runtime = queue.runtime
        oldest = 0.0
        head = queue.oldest()
        if runtime is not None and head is not None:
            oldest = max(0.0, runtime.time() - head._enqueued_at)
        in_flight = sum(1 for b in engine.batches for i in b.items if not i.done())
        return {
            "started": queue.state is State.RUNNING,
            "stopping": queue.state is State.STOPPING,
            "pending": queue.live,
            "running_batches": len(engine.batches),
            "in_flight": in_flight,
            "waiting_for_space": len(queue.space_waiters),
            "oldest_wait_seconds": oldest,
            "batches": engine.batch_count,
            "submitted": queue.submitted,
            "completed": tally.completed,
            "failed": tally.failed,
            "cancelled": tally.cancelled,
            "batch_size_threshold": self._threshold,
            "max_wait_seconds": self._max_wait,
            "lease_seconds": self._lease_seconds,
            "max_concurrent_batches": self._max_batches,
            "max_pending": self._max_pending,
            "owner_prefix": self._owner_prefix,
        }

    def __repr__(self) -> str:
        state = self._queue.state
        shown = "" if state is State.RUNNING else f" {state.value}"
        return (
            f"<WorkGrinder {self._owner_prefix}{shown} {self._queue.live} pending, "
            f"{len(self._engine.batches)}/{self._max_batches} batches running>"
        )


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
