"""A grinder batch, and the code that runs its calls off the event loop.

A :class:`Batch` is what the event loop and the batch's workers share. Workers
claim items from its ``todo`` under its ``lock`` and append what each call
did, ``(item, ok, value)``, to its ``finished`` deque; the loop applies those
outcomes when a job ends, and for a long thread batch every few milliseconds
(see :mod:`leasepool._grinder_engine`). Nothing here waits for the loop.

How a batch reaches the pool depends on the backend:

* threads: *runner* jobs (:func:`run_thread_calls`) share the batch, each
  claiming the next item under the batch's lock, so items start in FIFO order
  and a slow item never holds up the rest; each item runs in the
  ``contextvars`` context copied when it was submitted. The grinder starts a
  batch with one runner (quick calls are done before a second thread could
  wake) and adds one per worker if the batch is still running shortly after.
  A runner stops claiming once the lease is gone or the batch is halted.
* processes: the batch is split into a few chunks; each chunk is one job (one
  message) running :func:`_run_chunk`. Every call and every outcome is
  pickled on its own, so one that cannot be pickled fails alone.
* interpreters and any other backend (a user's executor): one job per item.
  A subinterpreter gets functions its ``sys.path`` cannot import (from
  ``__main__``, say) only when they are the job itself, and a user's workers
  may not be able to import leasepool at all.

Except for runner jobs on a thread pool, submission happens on a short-lived
helper thread (:func:`send_units`), so that a slow ``submit`` (a process pool
starting workers, an executor with a bounded queue) never blocks the event
loop.
"""

from __future__ import annotations

import concurrent.futures as cf
import copy
import pickle
import threading
import traceback
from collections import deque
from collections.abc import Callable
from multiprocessing.reduction import ForkingPickler
from typing import Any

import anyio

from ._errors import lease_gone
from ._grinder_handle import BATCHED, RUNNING, Item
from ._lease import ExecutorLease
from ._runtime import Runtime

__all__ = ["Batch", "claim_rest", "copy_exception", "run_thread_calls", "send_units"]

# What a worker reports for one call: the item, whether it returned, and its
# result or exception. The loop applies it, unless the item was settled
# meanwhile (cancelled by stop, or failed when the grinder stopped).
_Outcome = tuple[Item, bool, Any]


class Batch:
    """One leased batch: its items, and what its workers and the loop share."""

    __slots__ = (
        "done",
        "finished",
        "futures",
        "halted",
        "items",
        "lease",
        "lock",
        "number",
        "outstanding",
        "runners",
        "runtime",
        "scope",
        "todo",
    )

    def __init__(
        self,
        number: int,
        lease: ExecutorLease,
        items: list[Item],
        runtime: Runtime,
    ) -> None:
        self.number = number
        self.lease = lease
        self.items = items
        self.runtime = runtime
        # Items no worker has claimed yet, FIFO; claims happen under ``lock``.
        self.todo: deque[Item] = deque(items)
        self.lock = threading.Lock()
        self.halted = False  # set under ``lock``: claim nothing more
        # Outcomes not yet applied on the loop (see the module docstring).
        self.finished: deque[_Outcome] = deque()
        self.futures: list[cf.Future[Any]] = []
        self.outstanding = 0  # jobs whose end the loop has not heard of
        self.runners = 0  # thread runner jobs started
        self.done = anyio.Event()
        self.scope: anyio.CancelScope | None = None


def copy_exception(exc: BaseException, *, first: bool) -> BaseException:
    """Give each of several callers an exception object of its own to raise."""
    if first:
        return exc
    try:
        clone = copy.copy(exc)
    except Exception:
        return exc
    clone.__traceback__ = None
    clone.__cause__ = exc.__cause__
    return clone


def claim_rest(batch: Batch) -> list[Item]:
    """Halt a batch and claim the calls no worker took, so none will."""
    with batch.lock:
        batch.halted = True
        rest = [item for item in batch.todo if item._state is BATCHED]
        batch.todo.clear()
        for item in rest:
            item._state = RUNNING
    return rest


# -- off the event loop ---------------------------------------------------------


def run_thread_calls(batch: Batch) -> None:
    """Run a thread batch's calls until none is left to claim (worker thread)."""
    lease = batch.lease
    lock = batch.lock
    todo = batch.todo
    finished = batch.finished
    while True:
        with lock:
            if batch.halted or not todo:
                return
            if not lease.active:  # revoked: the rest is new work, refused
                batch.halted = True
                return
            item = todo.popleft()
            if item._state is not BATCHED:
                continue  # cancelled while it waited
            item._state = RUNNING
        ctx = item._ctx
        assert ctx is not None  # thread mode always copies a context
        # The loop applies outcomes when this job ends, or when it next looks
        # at a long batch (see _watch_batch): no wake-up per call.
        try:
            value = ctx.run(item._fn, *item._args, **item._kwargs)
        except BaseException as exc:
            finished.append((item, False, exc))
        else:
            finished.append((item, True, value))


def send_units(
    batch: Batch,
    units: list[list[Item]],
    chunked: bool,
    job_ended: Callable[[Batch], None],
) -> None:
    """Submit a batch's jobs, one per chunk or per call (helper thread).

    A job that cannot be submitted fails only its own calls; the other jobs
    are still tried and get their real outcomes.
    """
    runtime = batch.runtime
    submit = batch.lease.executor.submit
    for unit in units:
        with batch.lock:
            claimed = [] if batch.halted else [i for i in unit if i._state is BATCHED]
            for item in claimed:
                item._state = RUNNING
        if claimed:
            _send_unit(batch, claimed, chunked, submit, job_ended)
        else:
            runtime.call_soon_threadsafe(job_ended, batch)


def _send_unit(
    batch: Batch,
    items: list[Item],
    chunked: bool,
    submit: Callable[..., cf.Future[Any]],
    job_ended: Callable[[Batch], None],
) -> None:
    runtime = batch.runtime
    try:
        if chunked:
            payloads, items = _pickle_calls(batch, items)
            if not items:
                runtime.call_soon_threadsafe(job_ended, batch)
                return
            future = submit(_run_chunk, payloads)
        else:
            item = items[0]
            future = submit(item._fn, *item._args, **item._kwargs)
    except BaseException as exc:
        for item in items:
            batch.finished.append(
                (item, False, copy_exception(exc, first=item is items[0]))
            )
        runtime.call_soon_threadsafe(job_ended, batch)
        return
    batch.futures.append(future)

    def on_done(done: cf.Future[Any]) -> None:
        _collect(batch, items, done, chunked)
        runtime.call_soon_threadsafe(job_ended, batch)

    future.add_done_callback(on_done)


def _collect(
    batch: Batch, items: list[Item], future: cf.Future[Any], chunked: bool
) -> None:
    """Turn a finished job into outcomes (on whichever thread finished it)."""
    finished = batch.finished
    exc: BaseException | None
    if future.cancelled():
        lease = batch.lease
        if lease.active:
            exc = cf.CancelledError("the job holding this call was cancelled")
        else:
            exc = lease_gone(lease.lease_id, lease.state.value)
    else:
        exc = future.exception()
    if exc is not None:
        for item in items:
            finished.append((item, False, copy_exception(exc, first=item is items[0])))
    elif chunked:
        for item, (ok, data) in zip(items, future.result(), strict=True):
            finished.append(_unpickle_outcome(item, ok, data))
    else:
        finished.append((items[0], True, future.result()))


def _pickle_calls(batch: Batch, items: list[Item]) -> tuple[list[bytes], list[Item]]:
    """Pickle each call on its own; report the ones that cannot be pickled.

    Returns the pickles and the items they belong to.
    """
    payloads: list[bytes] = []
    sent: list[Item] = []
    for item in items:
        try:
            call = (item._fn, item._args, item._kwargs)
            payloads.append(bytes(ForkingPickler.dumps(call)))
        except Exception as exc:
            # TODO: say which part failed (function, argument or keyword) in
            # a PicklingError, as lease.run does; the note names only the call,
            # and changing the error's type needs its tests reworked first.
            exc.add_note(f"leasepool: the call {item!r} could not be pickled")
            batch.finished.append((item, False, exc))
            continue
        sent.append(item)
    return payloads, sent


def _run_chunk(payloads: list[bytes]) -> list[tuple[bool, bytes]]:
    """Run a chunk of pickled calls in a worker process.

    Each call comes pickled on its own and each outcome goes back pickled on
    its own, so that one call, result or exception that does not survive the
    trip fails only its own call.
    """
    outcomes: list[tuple[bool, bytes]] = []
    for payload in payloads:
        try:
            fn, args, kwargs = pickle.loads(payload)
            value = fn(*args, **kwargs)
        except BaseException as exc:
            text = "".join(traceback.format_exception(exc)).rstrip()
            exc.add_note(f"traceback in the worker:\n{text}")
            outcomes.append((False, _dump_exception(exc)))
            continue
        try:
            outcomes.append((True, pickle.dumps(value)))
        except Exception as exc:
            exc.add_note(f"leasepool: the result {value!r:.200} could not be pickled")
            outcomes.append((False, _dump_exception(exc)))
    return outcomes


def _dump_exception(exc: BaseException) -> bytes:
    try:
        return pickle.dumps(exc)
    except Exception as why:
        stand_in = RuntimeError(
            f"{type(exc).__qualname__}: {exc} (raised in the worker; it could "
            f"not be pickled: {why!r})"
        )
        for note in getattr(exc, "__notes__", ()):
            stand_in.add_note(note)
        return pickle.dumps(stand_in)


def _unpickle_outcome(item: Item, ok: bool, data: bytes) -> _Outcome:
    try:
        value = pickle.loads(data)
    except Exception as exc:
        exc.add_note("leasepool: the worker's outcome could not be unpickled")
        return (item, False, exc)
    return (item, ok, value)
