"""Executor backends: how a pool is made, recognised as broken, and shut down.

The manager knows nothing about threads, processes or interpreters; it talks to
a backend through :class:`PoolBackend`, a protocol small enough that a user can
wrap any ``concurrent.futures.Executor`` (loky, a distributed engine's executor)
and pass the object as ``backend=``.
"""

from __future__ import annotations

import concurrent.futures as cf
import enum
import inspect
import multiprocessing
import os
import signal
import sys
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

from ._errors import UnsupportedBackendError

__all__ = [
    "ExecutorBackend",
    "InterpreterBackend",
    "PoolBackend",
    "ProcessBackend",
    "ThreadBackend",
    "resolve_backend",
]


class ExecutorBackend(enum.StrEnum):
    """The built-in kinds of pool; strings are accepted case-insensitively."""

    THREAD = "thread"
    PROCESS = "process"
    INTERPRETER = "interpreter"


@runtime_checkable
class PoolBackend(Protocol):
    """What the manager needs from a kind of executor.

    ``shutdown`` may block: the manager calls it from a short-lived thread of
    its own, never on the event loop.
    """

    @property
    def name(self) -> str:
        """A short lower-case name, shown by ``stats()`` and in logs."""
        ...

    def create_pool(self, workers: int, name: str) -> cf.Executor:
        """Return a new executor running at most ``workers`` jobs at once."""
        ...

    def is_broken_error(self, exc: BaseException) -> bool:
        """Tell whether ``exc`` means the pool can never run work again."""
        ...

    def shutdown_pool(self, executor: cf.Executor, *, revoke: bool) -> None:
        """Shut ``executor`` down.

        Gently (``revoke=False``): queued work is cancelled and the call returns
        once the workers have exited. On revocation: also stop running work
        where the kind of worker allows it (processes are killed), returning
        once that is done; work that cannot be stopped keeps running.
        """
        ...


def _check_executor_kwargs(
    cls: type[cf.Executor], kwargs: Mapping[str, Any], reserved: tuple[str, ...]
) -> None:
    for key in reserved:
        if key in kwargs:
            raise ValueError(
                f"executor option {key!r} is set by leasepool itself "
                f"(got {key}={kwargs[key]!r}); use workers_per_pool or name_prefix"
            )
    try:
        inspect.signature(cls).bind_partial(**kwargs)
    except TypeError:
        known = sorted(inspect.signature(cls).parameters)
        unknown = sorted(set(kwargs) - set(known))
        raise ValueError(
            f"{cls.__name__} does not take the option(s) {unknown!r}; "
            f"it takes {known!r}"
        ) from None


class ThreadBackend:
    """Pools of threads, named ``<name>_<n>`` after the pool name."""

    name = "thread"

    def __init__(self, executor_kwargs: Mapping[str, Any] | None = None) -> None:
        self._kwargs = dict(executor_kwargs or {})
        _check_executor_kwargs(
            cf.ThreadPoolExecutor, self._kwargs, ("max_workers", "thread_name_prefix")
        )

    def create_pool(self, workers: int, name: str) -> cf.Executor:
        return cf.ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix=name, **self._kwargs
        )

    def is_broken_error(self, exc: BaseException) -> bool:
        return isinstance(exc, cf.BrokenExecutor)

    def shutdown_pool(self, executor: cf.Executor, *, revoke: bool) -> None:
        # Threads cannot be stopped from outside: on revocation only the queue
        # is cancelled, and the manager keeps the pool counted until its
        # running jobs end.
        executor.shutdown(wait=not revoke, cancel_futures=True)

    def __repr__(self) -> str:
        return "ThreadBackend()"


def default_mp_context() -> Any:
    """Return forkserver where the platform has it, else spawn.

    Forking a process that runs an event loop and worker threads copies locks
    held by other threads; a fresh interpreter is the safe default.
    """
    methods = multiprocessing.get_all_start_methods()
    method = "forkserver" if "forkserver" in methods else "spawn"
    return multiprocessing.get_context(method)


class ProcessBackend:
    """Pools of worker processes; revocation kills the workers."""

    name = "process"

    def __init__(self, executor_kwargs: Mapping[str, Any] | None = None) -> None:
        self._kwargs = dict(executor_kwargs or {})
        _check_executor_kwargs(cf.ProcessPoolExecutor, self._kwargs, ("max_workers",))
        if self._kwargs.get("mp_context") is None:
            self._kwargs["mp_context"] = default_mp_context()

    @property
    def mp_context(self) -> Any:
        """The multiprocessing context the worker processes start from."""
        return self._kwargs["mp_context"]

    def create_pool(self, workers: int, name: str) -> cf.Executor:
        return cf.ProcessPoolExecutor(max_workers=workers, **self._kwargs)

    def is_broken_error(self, exc: BaseException) -> bool:
        return isinstance(exc, cf.BrokenExecutor)

    def shutdown_pool(self, executor: cf.Executor, *, revoke: bool) -> None:
        if revoke:
            _kill_workers(executor)
        executor.shutdown(wait=True, cancel_futures=True)

    def __repr__(self) -> str:
        return "ProcessBackend()"


def _kill_workers(executor: cf.Executor) -> None:
    """SIGKILL every worker process of a ``ProcessPoolExecutor`` and reap it."""
    kill = getattr(executor, "kill_workers", None)
    if kill is not None:  # Python 3.14+
        kill()
    # Below 3.14 there is no public way to reach the workers; the executor's
    # process table is the only handle on them.
    processes = dict(getattr(executor, "_processes", None) or {})
    for process in processes.values():
        if process.is_alive() and process.pid is not None:
            try:
                os.kill(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    for process in processes.values():
        process.join(timeout=10)


class InterpreterBackend:
    """Pools of subinterpreters (``InterpreterPoolExecutor``, Python 3.14+)."""

    name = "interpreter"

    def __init__(self, executor_kwargs: Mapping[str, Any] | None = None) -> None:
        cls = getattr(cf, "InterpreterPoolExecutor", None)
        if cls is None:
            raise UnsupportedBackendError(
                "backend 'interpreter' needs Python 3.14 or newer "
                "(concurrent.futures.InterpreterPoolExecutor); this is Python "
                f"{sys.version_info.major}.{sys.version_info.minor}"
            )
        self._cls: Any = cls
        self._kwargs = dict(executor_kwargs or {})
        _check_executor_kwargs(cls, self._kwargs, ("max_workers", "thread_name_prefix"))

    def create_pool(self, workers: int, name: str) -> cf.Executor:
        executor: cf.Executor = self._cls(
            max_workers=workers, thread_name_prefix=name, **self._kwargs
        )
        return executor

    def is_broken_error(self, exc: BaseException) -> bool:
        return isinstance(exc, cf.BrokenExecutor)

    def shutdown_pool(self, executor: cf.Executor, *, revoke: bool) -> None:
        # Like threads, a running interpreter cannot be stopped from outside.
        executor.shutdown(wait=not revoke, cancel_futures=True)

    def __repr__(self) -> str:
        return "InterpreterBackend()"


_BUILTIN: dict[ExecutorBackend, type[Any]] = {
    ExecutorBackend.THREAD: ThreadBackend,
    ExecutorBackend.PROCESS: ProcessBackend,
    ExecutorBackend.INTERPRETER: InterpreterBackend,
}


def resolve_backend(
    backend: object, executor_kwargs: Mapping[str, Any]
) -> tuple[PoolBackend, ExecutorBackend | None]:
    """Turn the manager's ``backend=`` argument into a backend object.

    Returns the object and, for a built-in kind, its enum member.
    """
    if isinstance(backend, str):
        try:
            kind = ExecutorBackend(backend.lower())
        except ValueError:
            supported = ", ".join(repr(b.value) for b in ExecutorBackend)
            raise ValueError(
                f"backend must be one of {supported} or a PoolBackend object, "
                f"got {backend!r}"
            ) from None
        return _BUILTIN[kind](executor_kwargs), kind
    if isinstance(backend, PoolBackend) and not isinstance(backend, type):
        if executor_kwargs:
            raise ValueError(
                "executor options cannot be combined with a custom backend "
                f"object (got {sorted(executor_kwargs)!r}); configure the backend "
                "itself"
            )
        return backend, None
    raise ValueError(
        "backend must be 'thread', 'process', 'interpreter' or an object with "
        f"name, create_pool, is_broken_error and shutdown_pool, got {backend!r}"
    )
