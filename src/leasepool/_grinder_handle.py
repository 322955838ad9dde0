"""The handle of one call queued on a grinder, how it is settled, and stats.

To the grinder an *item* (one queued call) is its :class:`GrinderHandle`: the
call, its state and, in time, its outcome live on the handle itself, so that
queuing a call makes one object. The states are drawn in the theory of
operation of :mod:`leasepool._grinder`. Only the grinder moves an item from
state to state, on its event loop's thread, except that a batch's worker
claims an item (``BATCHED`` to ``RUNNING``) under the batch's lock.

:class:`Tally` *settles* items (``DONE`` or ``CANCELLED``: outcome recorded,
waiters woken, a thread's future resolved) and counts how they ended. The
queue (:mod:`leasepool._grinder_queue`) and the batch engine
(:mod:`leasepool._grinder_engine`) both settle items, so the settling lives
here, beside the states it ends, rather than in either of them.

The handle is public, so what the grinder's modules share of it keeps a
leading underscore (``item._state``, ``item._event``, ...): those slots are
the grinder's, not the user's.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextvars
import enum
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar, final

import anyio

if TYPE_CHECKING:
    from ._grinder_batch import Batch
    from ._grinder_queue import CallQueue

__all__ = [
    "BATCHED",
    "CANCELLED",
    "DONE",
    "MAKE_HANDLE",
    "PENDING",
    "RUNNING",
    "WAITING",
    "GrinderHandle",
    "GrinderStatistics",
    "Item",
    "ItemState",
    "Tally",
]

T = TypeVar("T")


class ItemState(enum.Enum):
    """Where a queued call stands; the moves are drawn in ``_grinder``'s docstring."""

    WAITING = "waiting"  # from a thread: not in the queue yet
    PENDING = "pending"
    BATCHED = "batched"
    RUNNING = "running"
    DONE = "done"
    CANCELLED = "cancelled"


# Bound once: the hot paths compare states by identity.
WAITING = ItemState.WAITING
PENDING = ItemState.PENDING
BATCHED = ItemState.BATCHED
RUNNING = ItemState.RUNNING
DONE = ItemState.DONE
CANCELLED = ItemState.CANCELLED

MAKE_HANDLE = object()  # only the grinder holds this key to the constructor


@final
class GrinderHandle(Generic[T]):
    """The pending outcome of one call queued on a :class:`WorkGrinder`.

    Handles come from ``await grinder.enqueue(...)``; do not construct them.
    ``await handle`` waits for the call and returns its result or raises its
    exception; cancelling the task that awaits does not cancel the call (use
    :meth:`cancel`), so several tasks may await one handle. The methods that
    change or wait on the handle belong to the grinder's event loop; the ones
    that only look (:meth:`done`, :meth:`cancelled`, :meth:`result`,
    :meth:`exception`) work anywhere.
    """

    __slots__ = (
        "_args",
        "_batch",
        "_ctx",
        "_enqueued_at",
        "_event",
        "_fn",
        "_future",
        "_kwargs",
        "_ok",
        "_queue",
        "_state",
        "_value",
        "owner",
    )

    def __init__(
        self,
        key: object,
        queue: CallQueue,
        fn: Callable[..., T],
        args: tuple[object, ...],
        kwargs: dict[str, object],
        owner: str | None,
        ctx: contextvars.Context | None,
    ) -> None:
        if key is not MAKE_HANDLE:
            raise TypeError("grinder handles are made by WorkGrinder.enqueue()")
        self._queue = queue  # where the call was queued: it can withdraw it
        self._fn = fn
        self._args = args
        self._kwargs = kwargs
        self._ctx = ctx
        self.owner = owner
        self._state = PENDING
        self._ok = False
        # The result or exception once DONE; why it was cancelled once CANCELLED.
        self._value: Any = None
        self._event: anyio.Event | None = None
        self._future: cf.Future[T] | None = None
        self._batch: Batch | None = None
        self._enqueued_at = 0.0

    def done(self) -> bool:
        """Whether the call has an outcome or was cancelled."""
        state = self._state
        return state is DONE or state is CANCELLED

    def cancelled(self) -> bool:
        """Whether the call was cancelled before it produced an outcome."""
        return self._state is CANCELLED

    def cancel(self) -> bool:
        """Cancel the call unless it has started; return whether it is cancelled.

        A queued call leaves the queue at once (``stats()["pending"]`` drops);
        a call already handed to a batch but not started is skipped by it. A
        call that is running or done cannot be cancelled. Call it on the
        grinder's event loop.
        """
        state = self._state
        if state is CANCELLED or state is DONE:
            return state is CANCELLED
        self._queue.check_loop()
        return self._queue.cancel(self, "cancelled by its handle")

    def result(self) -> T:
        """Return the call's result now, or raise its exception.

        Raises:
            concurrent.futures.InvalidStateError: The call has not finished.
            concurrent.futures.CancelledError: The call was cancelled.
        """
        if self._state is DONE:
            if self._ok:
                result: T = self._value
                return result
            raise self._value
        if self._state is CANCELLED:
            raise cf.CancelledError(self._value)
        raise cf.InvalidStateError(f"{self!r} has not finished")

    def exception(self) -> BaseException | None:
        """Return the call's exception, or ``None`` if it returned normally.

        Raises:
            concurrent.futures.InvalidStateError: The call has not finished.
            concurrent.futures.CancelledError: The call was cancelled.
        """
        if self._state is DONE:
            return None if self._ok else self._value
        if self._state is CANCELLED:
            raise cf.CancelledError(self._value)
        raise cf.InvalidStateError(f"{self!r} has not finished")

    async def wait(self) -> T:
        """Wait for the call's outcome; the same as ``await handle``."""
        if not self.done():
            self._queue.check_loop()
            await _settled(self)
        return self.result()

    def __await__(self) -> Generator[Any, Any, T]:
        return self.wait().__await__()

    def __repr__(self) -> str:
        owner = f" owner={self.owner!r}" if self.owner is not None else ""
        name = getattr(self._fn, "__qualname__", None) or repr(self._fn)
        return f"<GrinderHandle {name}{owner} {self._state.value}>"


# The grinder's own name for items: a handle is what callers see of them.
Item = GrinderHandle[Any]


async def _settled(item: Item) -> None:
    """Wait until ``item`` is done or cancelled (on the grinder's loop).

    ``WorkGrinder.submit`` runs a copy of this loop inline, to spare its
    callers a coroutine each; a change here belongs there too.
    """
    event = item._event
    assert event is not None  # every queued item has one
    while True:
        await event.wait()
        state = item._state
        if state is DONE or state is CANCELLED:
            return
        event = item._event
        assert event is not None
        if event.is_set():
            # Woken with cohort-mates while this call is still out: wait on
            # an event of its own from now on.
            event = item._event = anyio.Event()


class Tally:
    """Settles items and counts how they ended (on the grinder's loop).

    An item is settled once: the first outcome wins, and one that arrives
    later (a call that finished after ``stop(cancel_pending=True)`` cancelled
    it, say) is dropped. The counts live as long as the grinder, across
    restarts.
    """

    __slots__ = ("cancelled", "completed", "failed")

    def __init__(self) -> None:
        self.completed = 0
        self.failed = 0
        self.cancelled = 0

    def settle_cancelled(self, item: Item, why: str) -> None:
        """Settle an item as cancelled, for the reason ``why``."""
        item._state = CANCELLED
        item._value = why
        item._batch = None
        self.cancelled += 1
        event = item._event
        if event is not None:
            event.set()
        future = item._future
        if future is not None:
            future.cancel()

    def fail(self, item: Item, exc: BaseException) -> None:
        """Settle an item with an exception, unless it is settled already."""
        self.settle(item, False, exc)

    def settle(self, item: Item, ok: bool, value: Any) -> None:
        """Publish an item's outcome, unless it is settled already."""
        if self.apply(item, ok, value):
            event = item._event
            if event is not None:
                event.set()

    def apply(self, item: Item, ok: bool, value: Any) -> bool:
        """Record an outcome; the caller wakes the item's waiters.

        Leaving the wake-up to the caller lets the batch engine set a cohort's
        event once for a whole group of outcomes.

        Returns:
            ``False``, having done nothing, if the item was settled already.
        """
        state = item._state
        if state is DONE or state is CANCELLED:
            return False
        item._state = DONE
        item._ok = ok
        item._value = value
        item._batch = None  # no cycle left for the garbage collector to find
        if ok:
            self.completed += 1
        else:
            self.failed += 1
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


@dataclass(frozen=True, slots=True)
class GrinderStatistics:
    """A snapshot of a grinder's counts, the typed twin of ``stats()``."""

    started: bool
    stopping: bool
    pending: int
    running_batches: int
    in_flight: int
    waiting_for_space: int
    oldest_wait_seconds: float
    batches: int
    submitted: int
    completed: int
    failed: int
    cancelled: int
    batch_size_threshold: int
    max_wait_seconds: float
    lease_seconds: float
    max_concurrent_batches: int
    max_pending: int | None
