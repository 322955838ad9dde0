"""Small tools shared by the core tests: gates for jobs, polling, thread counts."""

from __future__ import annotations

import itertools
import re
import threading
from collections.abc import Callable
from typing import Any

import anyio

from leasepool import LeasedExecutorManager

# Every bounded wait in the tests uses this; far above any honest latency, so
# that a slow machine never fails a test, yet a hang fails within seconds.
PATIENCE = 5.0

_prefixes = itertools.count(1)


def unique_prefix() -> str:
    """Return a name prefix no other test uses, so thread counts stay private."""
    return f"lptest{next(_prefixes)}x"


def make_manager(**kwargs: Any) -> LeasedExecutorManager:
    """Build a small thread-backed manager with a private name prefix."""
    kwargs.setdefault("max_pools", 1)
    kwargs.setdefault("workers_per_pool", 1)
    kwargs.setdefault("name_prefix", unique_prefix())
    return LeasedExecutorManager(**kwargs)


async def wait_until(
    predicate: Callable[[], object], *, timeout: float = PATIENCE
) -> None:
    """Poll ``predicate`` until it is true; fail with TimeoutError after timeout.

    Used only where the thing awaited happens on a worker thread, which has no
    event to await from the loop without borrowing a thread.
    """
    with anyio.fail_after(timeout):
        # ASYNC110: the condition changes on worker threads; there is no
        # event to await that would not itself borrow a thread.
        while not predicate():  # noqa: ASYNC110
            await anyio.sleep(0.002)


def stat_is(
    manager: LeasedExecutorManager, key: str, value: object
) -> Callable[[], bool]:
    """A predicate for :func:`wait_until`: ``manager.stats()[key] == value``."""
    return lambda: bool(manager.stats()[key] == value)


class Gate:
    """A job that blocks its worker until the test opens the gate.

    ``entered`` is set once a worker runs the job; ``opened`` lets it return.
    The wait is bounded so that a failing test cannot strand a worker forever.
    """

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.opened = threading.Event()
        self.calls = 0
        self.finished = 0
        self._lock = threading.Lock()

    def __call__(self, value: Any = None) -> Any:
        with self._lock:
            self.calls += 1
        self.entered.set()
        if not self.opened.wait(PATIENCE * 2):
            raise TimeoutError("the test never opened the gate")
        with self._lock:
            self.finished += 1
        return value

    def open(self) -> None:
        self.opened.set()


def manager_threads(prefix: str) -> list[str]:
    """Names of live threads the manager with ``prefix`` started (any kind)."""
    return [t.name for t in threading.enumerate() if t.name.startswith(prefix + "-")]


def worker_threads(prefix: str) -> list[str]:
    """Names of live pool worker threads (``<prefix>-<pool>_<n>``)."""
    pattern = re.compile(re.escape(prefix) + r"-\d+_\d+$")
    return [t.name for t in threading.enumerate() if pattern.match(t.name)]


async def wait_threads_gone(prefix: str) -> None:
    """Wait until no thread named after ``prefix`` is alive."""
    await wait_until(lambda: not manager_threads(prefix))
