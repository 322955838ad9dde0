"""The grinder's queue: admission of calls, until a batch takes them.

A :class:`CallQueue` holds everything a call meets before it starts: the checks
that admit it, the FIFO of ``PENDING`` items, the ``max_pending`` limit with
the callers waiting for room, the inbox of calls from other threads, and the
withdrawal of a call that has not started. It is also the grinder's lifecycle
state (:class:`State`) and its binding to an event loop, because admission is
what that state governs: a running grinder takes calls, a stopping one only
drains them.

Why an object of its own: a ``submit`` touches this state and nothing else
until its call is queued, so with it all here the per-call path makes the
calls it made when this was part of the grinder: :meth:`CallQueue.admit`,
then ``_push``. The batch engine (:mod:`leasepool._grinder_engine`) reads the
queue, takes batches from it and sleeps on it; the queue knows nothing of
leases or pools.

Cohorts
-------
Callers wait on *cohort* events: items queued one after another share one
event per ``batch_size_threshold`` of them (fewer under a small
``max_pending``), which lines cohorts up with batches, so one ``set()`` wakes a
batch's callers. When a batch takes only part of a cohort (a cancellation
shifted the queue), the rest of it gets an event of its own here, and a caller
woken with its cohort while its own call is still out waits on an event of
its own from then on (see :mod:`leasepool._grinder_handle`).

Room under ``max_pending``
--------------------------
Callers waiting for room queue up in FIFO order. Room is *granted* to the
head waiter when the queue shrinks (a batch takes items, a call is withdrawn):
a waiting task is woken and its room *reserved* until it queues its call, so
that a newcomer cannot take the room meanwhile; a thread's call waiting for
room has no task, and is queued at once.
"""

from __future__ import annotations

import concurrent.futures as cf
import enum
import threading
from collections import deque
from collections.abc import Callable
from contextvars import copy_context
from typing import Any, TypeVar

import anyio

from ._errors import grinder_full, not_started, stopped_while_waiting, wrong_loop
from ._grinder_handle import (
    BATCHED,
    CANCELLED,
    MAKE_HANDLE,
    PENDING,
    WAITING,
    GrinderHandle,
    Item,
    Tally,
)
from ._manager import LeasedExecutorManager
from ._runtime import Runtime

__all__ = ["CallQueue", "State"]

T = TypeVar("T")


class State(enum.Enum):
    """Where a grinder stands: its lifecycle, as admission sees it."""

    STOPPED = "stopped"
    RUNNING = "running"  # takes calls
    STOPPING = "stopping"  # takes none; its lanes drain the queue


class _SpaceWaiter:
    """A caller (or a thread's item) waiting for room under ``max_pending``."""

    __slots__ = ("event", "granted", "item")

    def __init__(self, item: Item | None) -> None:
        self.item = item  # set for submit_from_thread: no task waits for it
        self.event = anyio.Event() if item is None else None
        self.granted = False


class CallQueue:
    """The calls of one grinder that no batch has taken yet.

    Everything here runs on the event loop's thread, except
    :meth:`admit_from_thread` and the inbox it fills (under ``_inbox_lock``).

    Args:
        manager: The grinder's executor manager; a call is refused while it
            is not running.
        tally: Where withdrawn and refused calls are settled.
        threshold: ``batch_size_threshold``: the most items a batch takes.
        max_pending: The most ``PENDING`` items, or ``None`` for no limit.
    """

    def __init__(
        self,
        manager: LeasedExecutorManager,
        tally: Tally,
        threshold: int,
        max_pending: int | None,
    ) -> None:
        self._manager = manager
        self._tally = tally
        self._threshold = threshold
        self.max_pending = max_pending
        # Queued calls that start a batch at once: a full queue does too, or a
        # max_pending below the threshold would leave it to max_wait_seconds.
        self.trigger = min(threshold, max_pending or threshold)
        self.state = State.STOPPED
        self.runtime: Runtime | None = None  # the loop of the current run
        # Only a thread can run a call inside its submitter's context.
        self.copies_context = True
        self.items: deque[Item] = deque()
        self.live = 0  # PENDING items in ``items``; the rest are cancelled
        # The event the newest queued items share, and how many share it.
        self._cohort: anyio.Event | None = None
        self._cohort_size = 0
        self.space_waiters: deque[_SpaceWaiter] = deque()
        self.reserved = 0  # room granted to woken space waiters, not yet used
        self._wake: anyio.Event | None = None
        self._wants_items = False  # a lane sleeps until calls arrive
        self._inbox: list[tuple[Item, bool]] = []
        self._inbox_lock = threading.Lock()
        self._inbox_scheduled = False
        self.submitted = 0

    # -- lifecycle ----------------------------------------------------------

    def open(self, runtime: Runtime, copies_context: bool) -> None:
        """Start taking calls on ``runtime``'s event loop."""
        self.runtime = runtime
        self.copies_context = copies_context
        self.state = State.RUNNING

    def check_loop(self) -> None:
        """Raise unless called on the event loop of the current run."""
        runtime = self.runtime
        if runtime is None or not runtime.is_current():
            raise wrong_loop("this grinder")

    def stop_accepting(self) -> None:
        """Take no more calls; those waiting for room are refused."""
        self.state = State.STOPPING
        waiters = self.space_waiters
        while waiters:
            waiter = waiters.popleft()
            if waiter.event is not None:
                waiter.event.set()  # its task raises, seeing no room granted
            elif waiter.item is not None:
                self._tally.fail(waiter.item, stopped_while_waiting("this grinder"))

    def cancel_all(self) -> None:
        """Cancel every queued call, for ``stop(cancel_pending=True)``."""
        items, self.items = self.items, deque()
        self.live = 0
        settle_cancelled = self._tally.settle_cancelled
        for item in items:
            if item._state is PENDING:
                settle_cancelled(item, "cancelled by stop(cancel_pending=True)")

    def close(self) -> None:
        """Forget this run: its items are settled and its loop is gone."""
        self.items.clear()
        self.live = 0
        self.reserved = 0
        self._cohort = None  # it belongs to this run's event loop
        self.runtime = None

    # -- admission (loop thread) --------------------------------------------

    def admit(
        self,
        fn: Callable[..., Any],
        args: tuple[object, ...],
        kwargs: dict[str, object],
        owner: str | None,
        wait: bool,
    ) -> Item | None:
        """Queue the call if there is room now; ``None`` means wait for room."""
        runtime = self.runtime
        if runtime is None or not runtime.is_current():
            if self.state is State.STOPPED:
                raise not_started("this grinder")
            raise wrong_loop("this grinder")
        if self.state is not State.RUNNING:
            raise not_started("this grinder")
        if not self._manager.started:
            raise not_started("the grinder's executor manager")
        if owner is not None or wait is not True or not callable(fn):
            _check_call(fn, owner, wait)
        limit = self.max_pending
        if limit is not None and (
            self.space_waiters or self.live + self.reserved >= limit
        ):
            if not wait:
                raise grinder_full(limit)
            return None
        ctx = copy_context() if self.copies_context else None
        item: Item = GrinderHandle(MAKE_HANDLE, self, fn, args, kwargs, owner, ctx)
        self._push(item, runtime)
        return item

    async def admit_when_room(
        self,
        fn: Callable[..., Any],
        args: tuple[object, ...],
        kwargs: dict[str, object],
        owner: str | None,
    ) -> Item:
        """Wait in FIFO order for room under ``max_pending``, then queue."""
        # Copied before waiting: the call belongs to its caller's context as it
        # was when submitted.
        ctx = copy_context() if self.copies_context else None
        waiter = _SpaceWaiter(None)
        assert waiter.event is not None
        self.space_waiters.append(waiter)
        try:
            await waiter.event.wait()
        except BaseException:
            if waiter.granted:
                self.reserved -= 1
                self._grant_space()
            else:
                try:
                    self.space_waiters.remove(waiter)
                except ValueError:
                    pass  # already woken by stop()
            raise
        if waiter.granted:
            self.reserved -= 1
        if not waiter.granted or self.state is not State.RUNNING:
            raise stopped_while_waiting("this grinder")
        runtime = self.runtime
        assert runtime is not None
        item: Item = GrinderHandle(MAKE_HANDLE, self, fn, args, kwargs, owner, ctx)
        self._push(item, runtime)
        return item

    def _push(self, item: Item, runtime: Runtime) -> None:
        item._state = PENDING
        item._enqueued_at = runtime.time()
        cohort = self._cohort
        if cohort is None or self._cohort_size >= self.trigger:
            cohort = self._cohort = anyio.Event()
            self._cohort_size = 0
        self._cohort_size += 1
        item._event = cohort
        self.items.append(item)
        self.live += 1
        self.submitted += 1
        if self._wants_items and (self.live >= self.trigger or self.live == 1):
            self.poke()

    def _grant_space(self) -> None:
        limit = self.max_pending
        if limit is None:
            return
        waiters = self.space_waiters
        while waiters and self.live + self.reserved < limit:
            waiter = waiters.popleft()
            waiter.granted = True
            if waiter.item is not None:
                assert self.runtime is not None
                self._push(waiter.item, self.runtime)
            else:
                assert waiter.event is not None
                self.reserved += 1
                waiter.event.set()

    # -- calls from other threads -------------------------------------------

    def admit_from_thread(
        self,
        fn: Callable[..., T],
        args: tuple[object, ...],
        kwargs: dict[str, object],
        owner: str | None,
        wait: bool,
    ) -> cf.Future[T]:
        """Hand a call from another thread to the loop; see ``submit_from_thread``.

        The item waits in the inbox (state ``WAITING``) until the loop drains
        it; one ``call_soon_threadsafe`` drains every call that arrived
        before it ran.
        """
        runtime = self.runtime
        if runtime is not None and threading.get_ident() == runtime.thread_id:
            raise RuntimeError(
                "submit_from_thread() cannot be called from the grinder's own "
                "event loop thread; use 'await grinder.submit(...)' there"
            )
        if runtime is None or self.state is not State.RUNNING:
            raise not_started("this grinder")
        _check_call(fn, owner, wait)
        ctx = copy_context() if self.copies_context else None
        item: Item = GrinderHandle(MAKE_HANDLE, self, fn, args, kwargs, owner, ctx)
        item._state = WAITING
        future: cf.Future[T] = cf.Future()
        item._future = future
        cancel = self.cancel

        def on_done(done: cf.Future[T]) -> None:
            # Runs wherever the future finished; only a cancel needs the loop.
            if done.cancelled():
                # cf.wait() and as_completed() see a cancelled future only
                # once it is notified, which no executor will do for this one.
                done.set_running_or_notify_cancel()
                if item._state is not CANCELLED:
                    runtime.call_soon_threadsafe(
                        cancel, item, "its future was cancelled"
                    )

        future.add_done_callback(on_done)
        with self._inbox_lock:
            self._inbox.append((item, wait))
            schedule = not self._inbox_scheduled
            self._inbox_scheduled = True
        if schedule and not runtime.call_soon_threadsafe(self.drain_inbox):
            self.drain_inbox()  # the loop is gone: fail what it never took
        return future

    def drain_inbox(self) -> None:
        """Queue the calls other threads submitted (loop thread)."""
        with self._inbox_lock:
            inbox, self._inbox = self._inbox, []
            self._inbox_scheduled = False
        runtime = self.runtime
        limit = self.max_pending
        fail = self._tally.fail
        for item, wait in inbox:
            if item._state is not WAITING:
                continue  # its future was cancelled meanwhile
            if self.state is not State.RUNNING or runtime is None:
                fail(item, not_started("this grinder"))
            elif limit is not None and (
                self.space_waiters or self.live + self.reserved >= limit
            ):
                if wait:
                    self.space_waiters.append(_SpaceWaiter(item))
                else:
                    fail(item, grinder_full(limit))
            else:
                self._push(item, runtime)

    # -- withdrawal (loop thread) -------------------------------------------

    def cancel(self, item: Item, why: str) -> bool:
        """Cancel an item that has not started; tell whether it is cancelled.

        A ``BATCHED`` item is withdrawn from its batch under the batch's lock,
        racing the workers that claim items there.
        """
        state = item._state
        if state is PENDING:
            self.live -= 1
            items = self.items
            # Cheap removal at either end; elsewhere it stays behind as garbage
            # that take() skips, compacted once it outweighs the live items.
            if items[-1] is item:
                items.pop()
            elif items[0] is item:
                items.popleft()
            elif len(items) > 64 and len(items) > 2 * self.live + 1:
                item._state = CANCELLED
                self.items = deque(i for i in items if i._state is PENDING)
            self._tally.settle_cancelled(item, why)
            self._grant_space()
            return True
        if state is BATCHED:
            batch = item._batch
            assert batch is not None
            with batch.lock:
                if item._state is not BATCHED:
                    return False  # a worker claimed it a moment ago
                item._state = CANCELLED
            self._tally.settle_cancelled(item, why)
            return True
        if state is WAITING:
            for waiter in self.space_waiters:
                if waiter.item is item:
                    self.space_waiters.remove(waiter)
                    break
            self._tally.settle_cancelled(item, why)
            return True
        return state is CANCELLED

    # -- what the lanes see (loop thread) -----------------------------------

    def oldest(self) -> Item | None:
        """Return the oldest ``PENDING`` item, dropping cancelled ones ahead."""
        items = self.items
        while items and items[0]._state is not PENDING:
            items.popleft()
        return items[0] if items else None

    def take(self) -> list[Item]:
        """Take up to a threshold of the oldest queued items, in FIFO order.

        The items taken are ``BATCHED``; the room they leave goes to callers
        waiting for it.
        """
        items = self.items
        limit = self._threshold
        taken: list[Item] = []
        append = taken.append
        while items and len(taken) < limit:
            item = items.popleft()
            if item._state is PENDING:
                item._state = BATCHED
                append(item)
        self.live -= len(taken)
        if not items:
            self._cohort = None
        elif taken:
            self._split_cohort(taken[-1]._event)
        self._grant_space()
        return taken

    def _split_cohort(self, taken: anyio.Event | None) -> None:
        """Give queued items that share the taken batch's cohort one of their own.

        Cohorts line up with batches unless a cancellation shifted the queue;
        without this the rest of such a cohort would wake with this batch.
        """
        fresh = None
        moved = 0
        for item in self.items:
            if item._event is not taken:
                break
            if fresh is None:
                fresh = anyio.Event()
            item._event = fresh
            moved += 1
        if fresh is not None and self._cohort is taken:
            self._cohort = fresh
            self._cohort_size = moved

    async def sleep(self, deadline: float) -> None:
        """Sleep until ``deadline``, or until new calls or :meth:`poke` wake us.

        New calls wake a sleeping lane only when they might start a batch: the
        first one (its ``max_wait_seconds`` begins) and each that reaches the
        trigger, not every one.
        """
        self._wants_items = True
        self._wake = wake = anyio.Event()
        try:
            with anyio.CancelScope(deadline=deadline):
                await wake.wait()
        finally:
            self._wake = None
            self._wants_items = False

    def poke(self) -> None:
        """Wake the lane sleeping in :meth:`sleep`, if any."""
        wake = self._wake
        if wake is not None:
            self._wants_items = False
            wake.set()


def _check_call(fn: object, owner: object, wait: object) -> None:
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {fn!r}")
    if owner is not None and not isinstance(owner, str):
        raise ValueError(f"owner must be a string or None, got {owner!r}")
    if not isinstance(wait, bool):
        raise ValueError(f"wait must be True or False, got {wait!r}")
