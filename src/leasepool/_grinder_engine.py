"""The grinder's batch engine: lanes that lease pools and run batches on them.

A :class:`BatchEngine` turns the queue's items into leased batches and their
outcomes back into settled items. It runs one *lane* per allowed concurrent
batch, all in one task group that lives from the grinder's ``start()`` to its
``stop()``. The lane holding the dispatch lock sleeps on the queue until a
batch is due (see :mod:`leasepool._grinder`), leases a pool, takes the batch's
items, sends them to the pool, watches the batch until it ends or its lease
is revoked, and ends it: what never ran is settled, the lease given back.
When the lanes end, the engine settles whatever they left behind.

Why an object of its own: none of this runs per call on the submitting side.
It meets the per-call path only where outcomes are applied, which happens in
groups (:meth:`BatchEngine._flush`), one :meth:`Tally.apply` call per item as
before the split.

Outcomes
--------
Outcomes come back to the event loop in groups: workers append ``(item, ok,
value)`` to the batch's ``finished`` deque (see :mod:`leasepool._grinder_batch`)
and the loop applies them when a job ends (a runner, a chunk, a single call)
and, for a thread batch that runs long, every few milliseconds; a quick thread
batch costs one wake-up in all. Consecutive items mostly share a cohort event,
set once per group.

A batch waits for its items no longer than its lease lives: once the lease is
revoked, items not yet started fail with :class:`LeaseExpiredError`, the slot
is freed, and items still running in a thread that cannot be stopped are
*stranded*: they get their outcome whenever they finish (or fail when the
grinder stops).
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import math
import threading

import anyio

from ._backends import ExecutorBackend
from ._errors import (
    LeasePoolError,
    LeaseUnavailableError,
    lease_gone,
    stopped_while_waiting,
)
from ._grinder_batch import (
    Batch,
    claim_rest,
    copy_exception,
    run_thread_calls,
    send_units,
)
from ._grinder_handle import RUNNING, Item, Tally
from ._grinder_queue import CallQueue, State
from ._lease import ExecutorLease
from ._log import GuardedLogger
from ._manager import LeasedExecutorManager

__all__ = ["BatchEngine"]

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


class BatchEngine:
    """The lanes of one grinder and the batches they run (loop thread).

    Args:
        manager: The manager whose pools run the batches.
        queue: Where the batches' items come from.
        tally: Where outcomes are settled.
        log: The grinder's logger.
        max_wait: ``max_wait_seconds``: how long a short batch may wait.
        lease_seconds: Length of each batch's lease.
        owner_prefix: Start of each batch lease's owner label.
        max_batches: ``max_concurrent_batches``: how many lanes run.
    """

    def __init__(
        self,
        *,
        manager: LeasedExecutorManager,
        queue: CallQueue,
        tally: Tally,
        log: GuardedLogger,
        max_wait: float,
        lease_seconds: float,
        owner_prefix: str,
        max_batches: int,
    ) -> None:
        self._manager = manager
        self._queue = queue
        self._tally = tally
        self._log = log
        self._max_wait = max_wait
        self._lease_seconds = lease_seconds
        self._owner_prefix = owner_prefix
        self._max_batches = max_batches
        # How batches reach the pool: "thread" (runner jobs), "chunks" (a few
        # pickled chunks per batch) or "items" (one job per call).
        self.mode = "thread"
        self._workers = 1
        self.batches: set[Batch] = set()
        self.stranded: set[Item] = set()  # still running after their batch
        self.batch_count = 0
        self.cancelling = False  # stop(cancel_pending=True) was called
        self._dispatch_lock: anyio.Lock | None = None
        self._acquire_scope: anyio.CancelScope | None = None

    # -- lifecycle ----------------------------------------------------------

    def open(self) -> None:
        """Get ready for a run on the manager's current pools."""
        kind = self._manager.backend
        # By identity: a user's backend may call itself "thread" and still run
        # its jobs somewhere else.
        if kind is ExecutorBackend.THREAD:
            self.mode = "thread"
        elif kind is ExecutorBackend.PROCESS:
            self.mode = "chunks"
        else:
            self.mode = "items"
        self._workers = self._manager.workers_per_pool
        self.cancelling = False
        # fast_acquire: the lock is held by one lane at a time and almost never
        # contended, so an uncontended acquire need not yield to the loop.
        self._dispatch_lock = anyio.Lock(fast_acquire=True)

    async def run(self, ready: anyio.Event, done: anyio.Event) -> None:
        """Run the lanes until the grinder stops, then settle what they left.

        Sets ``ready`` once the lanes are started and ``done`` once the
        grinder is stopped. Calls still queued, in a batch or stranded are
        cancelled after ``stop(cancel_pending=True)`` and fail otherwise (the
        lanes failed, or a stranded call is still running): no caller is left
        waiting on a stopped grinder. A failure is logged, not raised, since
        nobody awaits this task.
        """
        queue = self._queue
        tally = self._tally
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
            queue.state = State.STOPPED
            leftovers = [item for b in self.batches for item in b.items]
            leftovers += self.stranded
            leftovers += queue.items
            for item in leftovers:
                if self.cancelling:
                    if not item.done():
                        tally.settle_cancelled(item, "cancelled by stop()")
                else:
                    tally.fail(item, stopped_while_waiting("this grinder"))
            queue.drain_inbox()  # fails what other threads sent meanwhile
            self.batches.clear()
            self.stranded.clear()
            queue.close()
            done.set()
            self._log.info(
                "grinder.stopped owner_prefix=%s batches=%d clean=%s",
                self._owner_prefix,
                self.batch_count,
                clean,
            )

    def cancel(self) -> None:
        """Cancel queued calls, a wait for a lease, and running batches."""
        self.cancelling = True
        self._queue.cancel_all()
        scope = self._acquire_scope
        if scope is not None:
            scope.cancel()
        for batch in self.batches:
            if batch.scope is not None:
                batch.scope.cancel()

    # -- lanes --------------------------------------------------------------

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
        queue = self._queue
        runtime = queue.runtime
        assert runtime is not None
        while not self.cancelling:
            running = queue.state is State.RUNNING
            if not queue.live:
                if not running:
                    return None  # drained
                await queue.sleep(math.inf)
                continue
            if queue.live < queue.trigger and running:
                head = queue.oldest()
                assert head is not None
                due = head._enqueued_at + self._max_wait
                if runtime.time() < due:
                    await queue.sleep(due)
                    continue
            number = self.batch_count + 1
            lease = await self._lease(f"{self._owner_prefix}-batch-{number}")
            if lease is None:
                continue
            items = queue.take()
            if not items:  # all cancelled while we waited for the lease
                await lease.release()
                continue
            self.batch_count = number
            batch = Batch(number, lease, items, runtime)
            for item in items:
                item._batch = batch
            self.batches.add(batch)
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
        queue = self._queue
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
                "batch.lease_failed owner=%s calls=%d error=%r", owner, queue.live, exc
            )
            first = True
            while queue.live:
                for item in queue.take():
                    self._tally.fail(item, copy_exception(exc, first=first))
                    first = False
        finally:
            self._acquire_scope = None
        return None  # stop(cancel_pending=True) cancelled the wait

    # -- batches ------------------------------------------------------------

    async def _run_batch(self, batch: Batch) -> None:
        lease = batch.lease
        try:
            with anyio.CancelScope() as scope:
                batch.scope = scope
                if self.cancelling:
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
            self.batches.discard(batch)
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
        if self.mode == "thread":
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
        cancel = self.cancelling
        if cancel:
            for future in batch.futures:
                future.cancel()
        # Their done callbacks refer to the batch: let plain reference counting
        # free both.
        batch.futures.clear()
        self._flush(batch)
        lease = batch.lease
        tally = self._tally
        for item in unclaimed:
            if cancel:
                tally.settle_cancelled(item, "cancelled by stop(cancel_pending=True)")
            elif not lease.active:
                tally.fail(item, lease_gone(lease.lease_id, lease.state.value))
            else:
                never = f"batch {batch.number} ended before this call was started"
                tally.fail(item, LeasePoolError(never))
        for item in batch.items:
            if item._state is RUNNING:
                if cancel:
                    tally.settle_cancelled(
                        item, "cancelled by stop(cancel_pending=True) while running"
                    )
                else:
                    self.stranded.add(item)

    def _send(self, batch: Batch) -> None:
        """Hand a batch's calls to its lease's pool."""
        items = batch.items
        if self.mode == "thread":
            # One runner first: quick calls are done before a second worker
            # could even wake up. _watch_batch adds the rest if the batch lasts.
            self._add_runners(batch, 1)
            return
        if self.mode == "chunks":
            size = math.ceil(len(items) / (self._workers * _CHUNKS_PER_WORKER))
            units = [items[i : i + size] for i in range(0, len(items), size)]
        else:
            units = [[item] for item in items]
        batch.outstanding = len(units)
        # Submitting may block (starting worker processes, a bounded queue in
        # a user's executor): never on the event loop.
        threading.Thread(
            target=send_units,
            args=(batch, units, self.mode == "chunks", self._job_ended),
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
                        self._tally.fail(item, copied)
                break
            batch.runners += 1
            batch.outstanding += 1
            batch.futures.append(future)
            future.add_done_callback(on_done)
        if batch.outstanding <= 0:
            batch.done.set()

    # -- outcomes -----------------------------------------------------------

    def _flush(self, batch: Batch) -> int:
        """Apply the outcomes workers have reported so far (loop thread).

        Consecutive items mostly share a cohort event: it is set once, and
        its waiters run only after this whole group is applied.
        """
        finished = batch.finished
        apply = self._tally.apply
        stranded = self.stranded
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
