"""Leak checks for the stress tests: threads, child processes, fds and tasks.

A snapshot is taken before a scenario and compared with the live state after
it. Work that ends on its own (a pool's threads being joined, a worker process
being reaped) may lag the call that started it by a little, so the checks poll
up to a bound before they report anything.

Idle worker threads of anyio's and trio's own thread caches are not ours: both
keep them for a few seconds after use by design, so they are ignored.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.forkserver
import multiprocessing.resource_tracker
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio

__all__ = [
    "Leaks",
    "Snapshot",
    "assert_no_leaks",
    "find_leaks",
    "library_tasks",
    "poll_until",
    "snapshot",
    "task_count",
    "wait_no_leaks",
    "warm_up_process_machinery",
]

# Thread caches of the runtimes and of the test tools, not of leasepool.
_FOREIGN_THREADS = ("AnyIO worker thread", "Trio thread")


@dataclass(frozen=True)
class Snapshot:
    """What was alive when the snapshot was taken."""

    threads: frozenset[threading.Thread]
    children: frozenset[int]
    fds: frozenset[int]


@dataclass
class Leaks:
    """What is alive now and was not in the snapshot."""

    threads: list[str] = field(default_factory=list)
    children: list[int] = field(default_factory=list)
    fds: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.threads or self.children or self.fds)


def _open_fds() -> frozenset[int]:
    try:
        return frozenset(int(name) for name in os.listdir("/proc/self/fd"))
    except FileNotFoundError:  # not Linux: fds are not checked
        return frozenset()


def _fd_target(fd: int) -> str | None:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None  # closed since listed (the listing's own fd, say)


def warm_up_process_machinery() -> None:
    """Start multiprocessing's process-wide helpers before a snapshot.

    The forkserver and the resource tracker start on first use and stay for
    the life of the interpreter, each holding an fd; they are shared by every
    process pool, so they are not a leak of the library.
    """
    if "forkserver" in multiprocessing.get_all_start_methods():
        multiprocessing.forkserver.ensure_running()
    multiprocessing.resource_tracker.ensure_running()


def snapshot() -> Snapshot:
    """Record the threads, child processes and fds alive now."""
    return Snapshot(
        threads=frozenset(threading.enumerate()),
        children=frozenset(p.pid for p in multiprocessing.active_children() if p.pid),
        fds=_open_fds(),
    )


def find_leaks(before: Snapshot) -> Leaks:
    """Return what is alive now and was not alive at ``before``."""
    leaks = Leaks()
    for thread in threading.enumerate():
        if thread in before.threads or not thread.is_alive():
            continue
        if thread.name.startswith(_FOREIGN_THREADS):
            continue
        leaks.threads.append(thread.name)
    # active_children() also reaps children that have exited.
    for process in multiprocessing.active_children():
        if process.pid not in before.children:
            leaks.children.append(process.pid or -1)
    for fd in sorted(_open_fds() - before.fds):
        target = _fd_target(fd)
        if target is not None:
            leaks.fds.append(f"{fd} -> {target}")
    return leaks


def assert_no_leaks(before: Snapshot, *, timeout: float = 15.0) -> None:
    """Fail unless everything started since ``before`` is gone within ``timeout``.

    For synchronous code (between ``anyio.run`` calls, say): it blocks.
    """
    deadline = time.monotonic() + timeout
    while True:
        leaks = find_leaks(before)
        if not leaks:
            return
        if time.monotonic() >= deadline:
            raise AssertionError(f"left behind after {timeout}s: {leaks}")
        time.sleep(0.01)


async def poll_until(
    predicate: Callable[[], object], *, timeout: float, interval: float = 0.001
) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` passes; return it.

    For conditions changed by other threads (a worker starting a job, a thread
    exiting, a future being cancelled), which offer no event to wait on.
    """
    with anyio.move_on_after(timeout):
        while True:
            if predicate():
                return True
            await anyio.sleep(interval)
    return bool(predicate())


async def wait_no_leaks(before: Snapshot, *, timeout: float = 15.0) -> None:
    """Like :func:`assert_no_leaks`, but lets the event loop run while it polls."""
    await poll_until(lambda: not find_leaks(before), timeout=timeout, interval=0.01)
    leaks = find_leaks(before)
    if leaks:
        raise AssertionError(f"left behind after {timeout}s: {leaks}")


def task_count() -> int:
    """Count the live tasks of the running asyncio loop or trio run."""
    return len(_task_names())


def library_tasks(prefix: str) -> list[str]:
    """Name the tasks of the running loop or trio run whose name starts ``prefix``.

    The manager names its supervisor after ``name_prefix``; after ``stop()`` no
    such task may be left.
    """
    return [name for name in _task_names() if name.startswith(prefix)]


def _task_names() -> list[str]:
    trio: Any = sys.modules.get("trio")
    if trio is not None:
        try:
            root = trio.lowlevel.current_root_task()
        except RuntimeError:
            root = None
        if root is not None:
            names: list[str] = []
            stack = [root]
            while stack:
                task = stack.pop()
                names.append(task.name)
                for nursery in task.child_nurseries:
                    stack.extend(nursery.child_tasks)
            return names
    import asyncio

    return [t.get_name() for t in asyncio.all_tasks() if not t.done()]
