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
import logging
import multiprocessing
import multiprocessing.context
import sys
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

from ._errors import UnsupportedBackendError
from ._process_logging import LogForwarder, ProcessLoggingConfig, forwarding_initializer
from ._process_pool import LeasedProcessPool
from ._validation import check_positive_int

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

    @classmethod
    def _missing_(cls, value: object) -> ExecutorBackend | None:
        # ExecutorBackend("Thread") works like backend="Thread" does.
        if isinstance(value, str):
            for member in cls:
                if member.value == value.lower():
                    return member
        return None


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
    known = _option_names(cls)
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise ValueError(
            f"{cls.__name__} does not take the option(s) {unknown!r}; "
            f"it takes {sorted(known)!r}"
        )
    initializer = kwargs.get("initializer")
    if initializer is not None and not callable(initializer):
        raise ValueError(f"initializer must be a callable or None, got {initializer!r}")
    initargs = kwargs.get("initargs", ())
    if not isinstance(initargs, tuple):
        raise ValueError(f"initargs must be a tuple, got {initargs!r}")


def _option_names(cls: type[cf.Executor]) -> set[str]:
    """Name the keyword options an executor class takes.

    Python 3.14's ``ThreadPoolExecutor`` takes ``**ctxkwargs`` and passes them
    to ``prepare_context``, which refuses what it does not know only when a
    pool is made; the names that method takes are the real options.
    """
    names: set[str] = set()
    parameters = list(inspect.signature(cls).parameters.values())
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        prepare = getattr(cls, "prepare_context", None)
        if prepare is not None:
            parameters += inspect.signature(prepare).parameters.values()
    for parameter in parameters:
        if parameter.kind in (
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
            inspect.Parameter.KEYWORD_ONLY,
        ):
            names.add(parameter.name)
    return names


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


def _check_process_kwargs(kwargs: dict[str, Any]) -> None:
    """Refuse now what ``ProcessPoolExecutor`` would refuse at each new pool."""
    context = kwargs["mp_context"]
    if not isinstance(context, multiprocessing.context.BaseContext):
        raise ValueError(
            "mp_context must be a multiprocessing context such as "
            f"multiprocessing.get_context('spawn'), got {context!r}"
        )
    max_tasks = kwargs.get("max_tasks_per_child")
    if max_tasks is not None:
        check_positive_int("max_tasks_per_child", max_tasks)
        if context.get_start_method() == "fork":
            raise ValueError(
                "max_tasks_per_child cannot be combined with the 'fork' start "
                f"method (got max_tasks_per_child={max_tasks!r}); leave mp_context "
                "unset or use 'forkserver' or 'spawn'"
            )


class ProcessBackend:
    """Pools of worker processes; revocation kills the workers.

    Each job travels as one pickled payload and comes back as plain data that
    the parent unpickles itself. A job whose function, arguments, result or
    exception cannot be pickled, or rebuilt on the other side, therefore fails
    alone with an error saying what could not be, and the pool goes on; left
    to ``ProcessPoolExecutor``, a result or exception that cannot be rebuilt in
    the parent breaks the whole pool.

    Callers waiting on work of a revoked pool, whose workers are killed, get
    ``concurrent.futures.process.BrokenProcessPool`` saying so; so do callers
    on a pool whose worker crashed or whose initializer failed.

    Args:
        executor_kwargs: Passed to every ``ProcessPoolExecutor``
            (``mp_context``, ``initializer``, ``initargs``,
            ``max_tasks_per_child``). Without ``mp_context`` workers start
            with forkserver, or spawn where there is no forkserver.
        process_logging: Forwarding of the workers' log records to the parent.
    """

    name = "process"

    def __init__(
        self,
        executor_kwargs: Mapping[str, Any] | None = None,
        *,
        process_logging: ProcessLoggingConfig | None = None,
    ) -> None:
        kwargs = dict(executor_kwargs or {})
        _check_executor_kwargs(cf.ProcessPoolExecutor, kwargs, ("max_workers",))
        if kwargs.get("mp_context") is None:
            kwargs["mp_context"] = default_mp_context()
        _check_process_kwargs(kwargs)
        self._kwargs = kwargs
        config = process_logging
        if config is None:
            config = ProcessLoggingConfig()
        elif not isinstance(config, ProcessLoggingConfig):
            raise ValueError(
                "process_logging must be a ProcessLoggingConfig or None, "
                f"got {config!r}"
            )
        if config.enabled and sys.platform == "win32":  # pragma: no cover - POSIX CI
            # TODO: forwarding relies on atomic writes to POSIX pipes; Windows
            # needs a reader for its named pipes, which nobody here can test.
            raise UnsupportedBackendError(
                "process log forwarding is not supported on Windows yet"
            )
        self._logging = config
        self._forwarder = LogForwarder(config) if config.enabled else None

    @property
    def mp_context(self) -> Any:
        """The multiprocessing context the worker processes start from."""
        return self._kwargs["mp_context"]

    @property
    def process_logging(self) -> ProcessLoggingConfig:
        """How worker log records are forwarded (``enabled=False``: not at all)."""
        return self._logging

    @property
    def dropped_log_records(self) -> int:
        """Worker records dropped because the parent could not keep up."""
        return 0 if self._forwarder is None else self._forwarder.dropped

    def open(self, logger: logging.Logger) -> None:
        """Start log forwarding; the manager calls it at start."""
        if self._forwarder is not None:
            self._forwarder.start(logger)

    def close(self) -> None:
        """Stop log forwarding; the manager calls it once every pool is gone."""
        if self._forwarder is not None:
            self._forwarder.stop()

    def create_pool(self, workers: int, name: str) -> cf.Executor:
        kwargs = dict(self._kwargs)
        forwarder = self._forwarder
        channel = None
        if forwarder is not None:
            forwarder.start()  # a no-op once open() has started it
            channel = forwarder.open_channel(kwargs["mp_context"], name)
            kwargs["initargs"] = forwarder.initargs(
                channel, kwargs.pop("initializer", None), kwargs.pop("initargs", ())
            )
            kwargs["initializer"] = forwarding_initializer
        try:
            return LeasedProcessPool(
                workers, name, forwarder=forwarder, channel=channel, **kwargs
            )
        except BaseException:
            if forwarder is not None and channel is not None:
                forwarder.close_channel(channel, wait=False)
            raise

    def is_broken_error(self, exc: BaseException) -> bool:
        return isinstance(exc, cf.BrokenExecutor)

    def shutdown_pool(self, executor: cf.Executor, *, revoke: bool) -> None:
        if revoke and isinstance(executor, LeasedProcessPool):
            executor.kill_now()
        executor.shutdown(wait=True, cancel_futures=True)

    def __repr__(self) -> str:
        forwarding = ", forwarding logs" if self._forwarder is not None else ""
        method = self.mp_context.get_start_method()
        return f"ProcessBackend({method}{forwarding})"


class InterpreterBackend:
    """Pools of subinterpreters (``InterpreterPoolExecutor``, Python 3.14+).

    Each subinterpreter has its own GIL, so pure-Python CPU work runs in
    parallel. A job function that uses no module global is copied into the
    subinterpreter; any other is imported there by module name, from the
    path the interpreter started with: entries added to ``sys.path`` at run
    time are not seen. Like threads, a running subinterpreter cannot be
    stopped, so a revoked pool stays counted until its jobs return.
    """

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
    backend: object,
    executor_kwargs: Mapping[str, Any],
    *,
    process_logging: ProcessLoggingConfig | None = None,
) -> tuple[PoolBackend, ExecutorBackend | None]:
    """Turn the manager's ``backend=`` argument into a backend object.

    Returns the object and, for a built-in kind, its enum member.
    ``process_logging`` goes to the process backend; the other kinds ignore it
    (the manager refuses forwarding for them).
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
        if kind is ExecutorBackend.PROCESS:
            return ProcessBackend(
                executor_kwargs, process_logging=process_logging
            ), kind
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
