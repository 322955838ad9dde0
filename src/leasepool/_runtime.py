"""Runtime glue: the only module that touches asyncio or trio directly.

Everything else in leasepool is written against anyio. Three jobs need the native
event loop underneath, because anyio offers no public API for them that is cheap
enough for the per-call hot path:

* waking a task when a ``concurrent.futures.Future`` finishes on a worker,
  without borrowing a thread (or a limiter token) to wait for it;
* scheduling a callback onto the owning loop from any thread, in a way that
  becomes a silent no-op once the loop or trio run has ended (a job finishing
  after the loop must not raise or log on its worker thread);
* spawning the manager's supervisor as a task that lives from ``start()`` to
  ``stop()`` even when those are called from different tasks;
* parking a task until the loop thread wakes it exactly once (a lease waiter
  handed a pool), at the cost of one native future or task reschedule: an
  ``anyio.Event`` per waiter adds a backend lookup and two wrapper layers,
  a third of the time a contended hand-off takes.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar

import anyio.lowlevel

__all__ = ["Parker", "Runtime", "current_runtime"]

T = TypeVar("T")


class Parker:
    """One task's wait for one wake-up, both on the loop thread.

    ``wait()`` is cancellable like any checkpoint; ``wake()`` never blocks and
    is a no-op after the first call or once the waiting task was cancelled.
    A ``wake()`` before ``wait()`` makes ``wait()`` return at once. ``value``
    is free for the waker to leave something for the woken task.
    """

    __slots__ = ("value",)

    value: Any

    def wake(self) -> None:
        raise NotImplementedError

    async def wait(self) -> None:
        raise NotImplementedError


class Runtime:
    """The event loop (asyncio) or run (trio) that owns a started manager."""

    __slots__ = ("checkpoint_if_cancelled", "name", "thread_id")

    #: anyio's ``checkpoint_if_cancelled`` for this runtime, looked up once:
    #: the public function finds the backend again on every call, which is a
    #: measurable share of an uncontended ``acquire()``.
    checkpoint_if_cancelled: Callable[[], Awaitable[None]]

    name: str
    thread_id: int

    def is_current(self) -> bool:
        """Tell whether the calling code runs inside this loop or run."""
        raise NotImplementedError

    def call_soon_threadsafe(self, fn: Callable[..., object], *args: Any) -> bool:
        """Schedule ``fn(*args)`` on the loop from any thread.

        Returns ``False``, doing nothing, once the loop is closed or the run has
        finished: nobody is left to act on the call.
        """
        raise NotImplementedError

    async def wait_done(self, fut: Future[Any]) -> None:
        """Wait until ``fut`` is done without holding a thread.

        Cancelling the waiting task cancels ``fut`` if it has not started and
        returns promptly either way; work already running goes on in its worker.
        """
        raise NotImplementedError

    async def wait_future(self, fut: Future[T]) -> T:
        """Wait for ``fut`` like :meth:`wait_done`, then return its result."""
        await self.wait_done(fut)
        return fut.result()

    def spawn_system_task(
        self, fn: Callable[[], Coroutine[Any, Any, None]], name: str
    ) -> None:
        """Run ``fn()`` as a task not tied to the caller's task or cancel scope."""
        raise NotImplementedError

    def time(self) -> float:
        """Return the loop's clock, the one ``anyio.current_time()`` reads."""
        raise NotImplementedError

    def parker(self) -> Parker:
        """Return a new :class:`Parker` for a task of this runtime."""
        raise NotImplementedError


def _wake_asyncio(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class _AsyncioParker(Parker):
    __slots__ = ("_fut",)

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.value = None
        self._fut: asyncio.Future[None] = loop.create_future()

    def wake(self) -> None:
        if not self._fut.done():
            self._fut.set_result(None)

    async def wait(self) -> None:
        # A cancelled task cancels the future it awaits, so a later wake()
        # finds it done and does nothing.
        await self._fut


class _AsyncioRuntime(Runtime):
    __slots__ = ("_loop", "_tasks")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.name = "asyncio"
        self.thread_id = threading.get_ident()
        self.checkpoint_if_cancelled = _anyio_checkpoint_if_cancelled()
        self._loop = loop
        # Strong references: asyncio keeps only weak ones to running tasks.
        self._tasks: set[asyncio.Task[None]] = set()

    def is_current(self) -> bool:
        return asyncio._get_running_loop() is self._loop

    def call_soon_threadsafe(self, fn: Callable[..., object], *args: Any) -> bool:
        try:
            self._loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop is closed
            return False
        return True

    async def wait_done(self, fut: Future[Any]) -> None:
        loop = self._loop
        waiter: asyncio.Future[None] = loop.create_future()

        def on_done(_: Future[Any]) -> None:
            try:
                loop.call_soon_threadsafe(_wake_asyncio, waiter)
            except RuntimeError:  # the loop is closed: nobody is waiting
                pass

        fut.add_done_callback(on_done)
        try:
            await waiter
        except BaseException:
            fut.cancel()
            raise

    def spawn_system_task(
        self, fn: Callable[[], Coroutine[Any, Any, None]], name: str
    ) -> None:
        task = self._loop.create_task(fn(), name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def time(self) -> float:
        return self._loop.time()

    def parker(self) -> Parker:
        return _AsyncioParker(self._loop)


class _TrioParker(Parker):
    __slots__ = ("_lowlevel", "_task", "_woken")

    def __init__(self, lowlevel: Any) -> None:
        self.value = None
        self._lowlevel = lowlevel
        self._task: Any = None
        self._woken = False

    def wake(self) -> None:
        if self._woken:
            return
        self._woken = True
        task = self._task
        if task is not None:
            self._task = None
            self._lowlevel.reschedule(task)

    async def wait(self) -> None:
        if self._woken:
            return
        lowlevel = self._lowlevel
        self._task = lowlevel.current_task()
        await lowlevel.wait_task_rescheduled(self._abort)

    def _abort(self, _: object) -> object:
        # Cancelled before any wake(): forget the task so that a late wake()
        # cannot reschedule it a second time.
        self._task = None
        self._woken = True
        return self._lowlevel.Abort.SUCCEEDED


class _TrioRuntime(Runtime):
    __slots__ = ("_clock", "_lowlevel", "_token", "_trio")

    def __init__(self, trio: Any, token: Any) -> None:
        self.name = "trio"
        self.thread_id = threading.get_ident()
        self.checkpoint_if_cancelled = _anyio_checkpoint_if_cancelled()
        self._trio = trio
        self._lowlevel = trio.lowlevel
        self._token = token
        # The run's own clock, read directly: trio.current_time() works only
        # inside the run, and this must also answer stats() from elsewhere.
        self._clock = trio.lowlevel.current_clock()

    def is_current(self) -> bool:
        try:
            return bool(self._trio.lowlevel.current_trio_token() is self._token)
        except RuntimeError:
            return False

    def call_soon_threadsafe(self, fn: Callable[..., object], *args: Any) -> bool:
        try:
            self._token.run_sync_soon(fn, *args)
        except self._trio.RunFinishedError:
            return False
        return True

    async def wait_done(self, fut: Future[Any]) -> None:
        lowlevel = self._lowlevel
        task = lowlevel.current_task()
        aborted = False

        def wake() -> None:  # runs in the trio thread
            if not aborted:
                lowlevel.reschedule(task)

        def on_done(_: Future[Any]) -> None:  # runs in the worker thread
            try:
                self._token.run_sync_soon(wake)
            except self._trio.RunFinishedError:
                pass

        def abort(_: object) -> object:
            nonlocal aborted
            aborted = True
            fut.cancel()
            return lowlevel.Abort.SUCCEEDED

        fut.add_done_callback(on_done)
        await lowlevel.wait_task_rescheduled(abort)

    def spawn_system_task(
        self, fn: Callable[[], Coroutine[Any, Any, None]], name: str
    ) -> None:
        self._trio.lowlevel.spawn_system_task(fn, name=name)

    def time(self) -> float:
        return float(self._clock.current_time())

    def parker(self) -> Parker:
        return _TrioParker(self._lowlevel)


def _anyio_checkpoint_if_cancelled() -> Callable[[], Awaitable[None]]:
    try:
        from anyio._core._eventloop import get_async_backend
    except ImportError:  # a future anyio moved it: use the public function
        return anyio.lowlevel.checkpoint_if_cancelled
    return get_async_backend().checkpoint_if_cancelled


def current_runtime() -> Runtime:
    """Return the runtime of the calling task.

    trio is asked first: in trio's guest mode an asyncio loop is also running,
    but the calling code is trio's.
    """
    trio = sys.modules.get("trio")
    if trio is not None:
        try:
            token = trio.lowlevel.current_trio_token()
        except RuntimeError:
            pass
        else:
            return _TrioRuntime(trio, token)
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        raise RuntimeError(
            "leasepool must be used from a running asyncio event loop or trio run"
        ) from None
    return _AsyncioRuntime(loop)
