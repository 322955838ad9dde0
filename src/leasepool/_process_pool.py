"""The process pool behind :class:`ProcessBackend`, and how its jobs travel.

``ProcessPoolExecutor`` is used almost as it is, with three changes that the
manager's leases need:

* Workers start on a thread of the pool's own as soon as the pool exists, so
  that ``submit`` on the event loop never waits for a process to start.
* A revoked pool can be killed at once (:meth:`LeasedProcessPool.kill_now`),
  and its callers are told that the revocation is why their jobs failed.
* Each job crosses to the worker as one pickled payload (:class:`_Call`, run
  by :func:`_run_job`) and its outcome comes back as plain data that the
  parent unpickles itself (:meth:`LeasedProcessPool.unpack`). A function,
  argument, result or exception that cannot make the trip fails its own job
  with an error saying which part it was, and the pool goes on.

Shutting the pool down also closes its log forwarding channel, once the
workers have exited and their last records are in the pipe.
"""

from __future__ import annotations

import concurrent.futures as cf
import concurrent.futures.process as cf_process
import io
import logging
import os
import pickle
import threading
import traceback
from collections.abc import Callable
from multiprocessing.reduction import ForkingPickler
from types import TracebackType
from typing import Any, ParamSpec, TypeVar

from ._errors import WorkerExceptionError
from ._process_logging import LogForwarder

__all__ = ["LeasedProcessPool", "future_result"]

P = ParamSpec("P")
T = TypeVar("T")

# The pool logs under the backends' logger: it is part of the process backend.
_module_log = logging.getLogger("leasepool.backends")

_KILL_WAIT_SECONDS = 10.0
# Python < 3.14 (before gh-115634 was fixed): the executor's manager thread
# replaces a worker that reached max_tasks_per_child through this method.
_MANAGER_THREAD: Any = getattr(cf_process, "_ExecutorManagerThread", ())


_forkserver_lock = threading.Lock()
_forkserver_warm = False


def _warm_up_forkserver(context: Any) -> None:
    """Have the forkserver past its start-up before a pool's first worker.

    A worker start holds the executor's lock, which ``submit`` on the event
    loop needs too; the first one would hold it for the server's whole start
    (a new interpreter importing ``__main__``). A throwaway process started
    here, outside that lock, takes that wait instead, once per interpreter.
    """
    global _forkserver_warm
    if context.get_start_method() != "forkserver":
        return
    with _forkserver_lock:
        if not _forkserver_warm:
            process = context.Process(target=os.getpid, name="leasepool-warm-up")
            process.start()
            process.join(_KILL_WAIT_SECONDS)
            if process.exitcode is not None:
                process.close()  # its sentinel pipe, now rather than at GC
            _forkserver_warm = True


class LeasedProcessPool(cf.ProcessPoolExecutor):
    """A ``ProcessPoolExecutor`` that starts early, can be revoked, forwards logs.

    The stdlib starts a worker inside ``submit`` when none is idle: on the
    event loop, for as long as a process start takes (with forkserver, the
    whole server start the first time). This pool starts its workers on a
    thread of its own as soon as it exists; jobs submitted before they run
    wait in a short list that the thread hands to the executor once it is
    done, so ``submit`` never waits for a process to start. That, the fix
    for gh-115634 and revocation reach into the executor's private state,
    which has kept its shape from Python 3.11 to 3.14.
    """

    def __init__(
        self,
        workers: int,
        name: str,
        *,
        forwarder: LogForwarder | None,
        channel: Any,
        **kwargs: Any,
    ) -> None:
        super().__init__(max_workers=workers, **kwargs)
        self.pool_name = name
        self._forwarder = forwarder
        self._channel = channel
        self.revoked = False
        self._closing = False
        # Guards _starting and _early, and so the order of early jobs.
        self._early_lock = threading.Lock()
        self._early: list[tuple[_JobFuture[Any], _Call]] = []
        self._starting = kwargs["mp_context"].get_start_method() != "fork"
        self._starter: threading.Thread | None = None
        if self._starting:
            # Forking from a second thread while the loop runs is what the
            # default start method avoids; fork pools start workers lazily.
            self._starter = threading.Thread(
                target=self._start_workers, name=f"{name}-start", daemon=True
            )
            self._starter.start()

    def submit(
        self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs
    ) -> cf.Future[T]:
        call = _Call(fn, args, kwargs)
        outer: _JobFuture[T] = _JobFuture(self)
        with self._early_lock:
            if self._starting:
                if self._closing:
                    raise RuntimeError("cannot schedule new futures after shutdown")
                self._early.append((outer, call))
                return outer
        outer.attach(super().submit(_run_job, call))
        return outer

    def submit_unwrapped(
        self, fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[cf.Future[Any], Callable[[cf.Future[Any]], T]]:
        """Submit a job; return its future and the function that unpacks it.

        Once the workers run, the future is the executor's own, holding the
        worker's packed outcome, and :meth:`unpack` makes it the job's result
        in the caller's thread: no second future is set on the executor's
        manager thread, which competes with the event loop for the GIL. A
        job that cannot be pickled raises ``PicklingError`` here.
        """
        if self._starting:  # only ever goes from True to False
            return self.submit(fn, *args, **kwargs), future_result
        # Pickled here, once, rather than by _Call in the feeder thread, where
        # the executor pickles the bytes again: the caller waits for the job
        # anyway, so a job that cannot be pickled fails right here.
        try:
            payload = _dumps((fn, args, kwargs))
        except Exception as exc:
            raise _unpicklable_call(fn, args, kwargs, exc) from None
        return super().submit(_run_job, payload), self.unpack

    def unpack(self, inner: cf.Future[_Outcome]) -> Any:
        """Return the result of a finished job, or raise its error.

        ``inner`` is the executor's own future for :func:`_run_job`. A job that
        failed because this pool was revoked says so.
        """
        ok, value = self._outcome(inner)
        if ok:
            return value
        try:
            raise value
        finally:
            # The traceback will hold this frame: without these locals it
            # holds no cycle back to the error, so the error (and the pool it
            # names) goes when its last user lets go, not at the next GC.
            del value, inner

    def _outcome(self, inner: cf.Future[_Outcome]) -> tuple[bool, Any]:
        try:
            exc = inner.exception()
        except cf.CancelledError:
            return False, cf.CancelledError()
        if exc is not None:
            if self.revoked and isinstance(exc, cf.BrokenExecutor):
                return False, _revoked_error(self.pool_name, exc)
            return False, exc
        ok, data, type_name, message, text, reason = inner.result()
        if ok:
            try:
                return True, pickle.loads(data or b"")
            except Exception as why:
                return False, pickle.UnpicklingError(
                    f"the job's result ({type_name} object) could not be "
                    f"rebuilt in this process: {why!r}"
                )
        error = _rebuild_exception(data, type_name, message, reason)
        error.__cause__ = _RemoteTraceback(f'\n"""\n{text}"""')
        return False, error

    def _start_workers(self) -> None:
        this: Any = self
        try:
            _warm_up_forkserver(this._mp_context)
            while True:
                with self._shutdown_lock:
                    processes = self._processes
                    if (
                        self.revoked
                        or self._closing
                        or this._shutdown_thread
                        or this._broken
                        or processes is None
                        or len(processes) >= this._max_workers
                    ):
                        break
                    # The manager thread starts first, so that it watches
                    # every worker this loop adds and stops them at shutdown.
                    this._start_executor_manager_thread()
                    this._spawn_process()
                    this._executor_manager_thread_wakeup.wakeup()
        except Exception:  # submit() starts workers itself, and reports why not
            _module_log.debug(
                "pool.start_failed pool=%s", self.pool_name, exc_info=True
            )
        finally:
            if this._broken:
                # Broken while this thread started workers: the executor's
                # clean-up may not have seen the last one, and would wait for
                # it forever. None of them will ever run a job.
                self._kill_workers()
            self._hand_over_early_jobs()

    def _hand_over_early_jobs(self) -> None:
        # Submitted under the lock, so that they keep their place before any
        # job submitted later; their callbacks, which may be anyone's code,
        # run after it is released.
        outcomes: list[tuple[_JobFuture[Any], BaseException | None]] = []
        with self._early_lock:
            self._starting = False
            early, self._early = self._early, []
            for outer, call in early:
                if self.revoked:
                    outcomes.append((outer, _revoked_error(self.pool_name, None)))
                    continue
                try:
                    outer._inner = super().submit(_run_job, call)
                except BaseException as exc:
                    outcomes.append((outer, exc))
                else:
                    outcomes.append((outer, None))
        for outer, error in outcomes:
            if error is not None:
                outer.fail(error)
            else:
                assert outer._inner is not None
                outer._inner.add_done_callback(outer._settle)

    def forget_early_job(self, outer: _JobFuture[Any]) -> bool:
        """Drop a job still waiting for the workers to start; tell if it was."""
        with self._early_lock:
            for index, (job, _) in enumerate(self._early):
                if job is outer:
                    del self._early[index]
                    return True
        return False

    def kill_now(self) -> None:
        """SIGKILL every worker; their jobs fail with ``BrokenProcessPool``."""
        self.revoked = True
        self._kill_workers()

    def _kill_workers(self) -> None:
        with self._shutdown_lock:
            # Python 3.14+: keep the manager thread from starting replacements.
            if hasattr(self, "_force_shutting_down"):
                self._force_shutting_down = True
            # Below 3.14 the process table is the only handle on the workers.
            processes = list((self._processes or {}).values())
        for process in processes:
            try:
                process.kill()
            except (OSError, ValueError):
                pass  # already gone, or already closed
        for process in processes:
            process.join(_KILL_WAIT_SECONDS)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._closing = True
        starter = self._starter
        if starter is not None and wait:
            # It stops starting workers and hands its early jobs over, so
            # that the executor's own shutdown sees them.
            starter.join(_KILL_WAIT_SECONDS)
        this: Any = self
        if this._broken:
            # A broken pool's other workers serve nobody. The executor stops
            # them with SIGTERM and then waits for each without a bound; one
            # it never saw (started by our thread as the pool broke) would
            # keep that wait, and this shutdown, going forever.
            self._kill_workers()
        super().shutdown(wait=wait, cancel_futures=cancel_futures)
        channel, self._channel = self._channel, None
        if channel is not None and self._forwarder is not None:
            # With wait, the workers have exited: what they logged is in the
            # pipe and is passed on before this returns.
            self._forwarder.close_channel(channel, wait=wait)

    def _adjust_process_count(self) -> None:
        if self.revoked:
            return
        if isinstance(threading.current_thread(), _MANAGER_THREAD):
            # gh-115634: the stdlib consults a semaphore that counts finished
            # jobs, not idle workers, and may skip replacing a worker that
            # reached max_tasks_per_child until none is left and the queue
            # stalls. Replace it whenever the pool is short of workers.
            processes = self._processes
            this: Any = self
            if processes is not None and len(processes) < this._max_workers:
                this._spawn_process()
            return
        super()._adjust_process_count()


def _revoked_error(
    pool_name: str, cause: BaseException | None
) -> cf_process.BrokenProcessPool:
    error = cf_process.BrokenProcessPool(
        f"the lease on pool {pool_name!r} was revoked and its worker processes "
        "were killed; this job did not finish"
    )
    error.__cause__ = cause
    return error


class _RemoteTraceback(Exception):
    """The worker's traceback, attached as ``__cause__`` of a job's exception."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return self.text


# What a job sends back: (ok, pickled result or exception or None, type name,
# message, traceback text, why the exception could not be pickled).
_Outcome = tuple[bool, bytes | None, str, str, str, str]


class _Call:
    """A job's function and arguments, pickled as one payload on the way out.

    Pickling happens in the executor's feeder thread, as it would without us;
    a failure is reported to the caller naming the part that could not be
    pickled. The worker unpickles the payload inside :func:`_run_job`, so a
    payload it cannot rebuild fails the job instead of killing the worker.
    """

    __slots__ = ("args", "fn", "kwargs")

    def __init__(
        self, fn: Callable[..., object], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        self.fn = fn
        self.args = args
        self.kwargs = kwargs

    def __reduce__(self) -> tuple[Any, ...]:
        try:
            data = _dumps((self.fn, self.args, self.kwargs))
        except Exception as exc:
            raise _unpicklable_call(self.fn, self.args, self.kwargs, exc) from None
        return (bytes, (data,))


def _run_job(payload: Any) -> _Outcome:
    """Run one job in a process worker and pack its outcome for the parent.

    ``payload`` is the bytes a :class:`_Call` was pickled to. The outcome is
    plain data the parent can always unpickle, whatever the job did.
    """
    try:
        fn, args, kwargs = pickle.loads(payload)
    except BaseException as exc:
        rebuild_error = pickle.UnpicklingError(
            "the job's function or arguments could not be rebuilt in the worker "
            f"process: {exc!r}"
        )
        return _pack_exception(rebuild_error, None, cause=exc)
    del payload
    try:
        result = fn(*args, **kwargs)
    except BaseException as exc:
        tb = exc.__traceback__
        return _pack_exception(exc, tb.tb_next if tb is not None else None)
    try:
        data = _dumps(result)
    except Exception as exc:
        pickle_error = pickle.PicklingError(
            f"the result of {_describe(fn)} ({_type_name(result)} object) cannot "
            f"be pickled to send it back from the worker process: {exc}"
        )
        return _pack_exception(pickle_error, None, cause=exc)
    return (True, data, _type_name(result), "", "", "")


def _pack_exception(
    exc: BaseException, tb: TracebackType | None, cause: BaseException | None = None
) -> _Outcome:
    lines = []
    if cause is not None:
        lines += traceback.format_exception(type(cause), cause, cause.__traceback__)
    lines += traceback.format_exception(type(exc), exc, tb)
    try:
        message = str(exc)
    except Exception:
        message = "<str() failed>"
    try:
        data: bytes | None = _dumps(exc)
        reason = ""
    except Exception as why:
        data = None
        reason = f"it cannot be pickled ({why})"
    return (False, data, _type_name(exc), message, "".join(lines), reason)


class _JobFuture(cf.Future[T]):
    """The future a caller sees: unpacks the worker's outcome in the parent.

    It stands for the executor's own future (``inner``), attached at once or,
    for a job submitted while the pool's workers start, once they run.
    """

    def __init__(self, pool: LeasedProcessPool) -> None:
        super().__init__()
        self._pool = pool
        self._inner: cf.Future[_Outcome] | None = None

    def attach(self, inner: cf.Future[_Outcome]) -> None:
        self._inner = inner
        inner.add_done_callback(self._settle)

    def fail(self, exc: BaseException) -> None:
        if not self.done():
            self.set_exception(exc)

    def cancel(self) -> bool:
        if self.done():
            return self.cancelled()
        inner = self._inner
        if inner is None:
            if self._pool.forget_early_job(self):
                return super().cancel()  # it never reached the executor
            inner = self._inner
            if inner is None:  # refused while being handed over
                return self.cancelled()
        if not inner.cancel():
            return self.cancelled()
        return super().cancel()

    def running(self) -> bool:
        inner = self._inner
        return inner is not None and inner.running() and not self.done()

    def _settle(self, inner: cf.Future[_Outcome]) -> None:
        # Runs where the inner future finished: the executor's manager thread.
        # The two futures refer to each other (this one as the inner one's
        # callback); dropping the reference here leaves no cycle behind, and
        # so no garbage for the cyclic collector on every job.
        self._inner = None
        if inner.cancelled():
            super().cancel()
            return
        ok, value = self._pool._outcome(inner)
        if ok:
            self.set_result(value)
        else:
            self.fail(value)


def future_result(fut: cf.Future[T]) -> T:
    """Return ``fut.result()``, the unwrap of a future that needs none."""
    try:
        return fut.result()
    finally:
        del fut  # see ExecutorLease.run: no frame-to-error cycle


def _rebuild_exception(
    data: bytes | None, type_name: str, message: str, reason: str
) -> BaseException:
    if data is not None:
        try:
            error = pickle.loads(data)
        except Exception as why:
            reason = f"it could not be rebuilt in this process ({why!r})"
        else:
            if isinstance(error, BaseException):
                return error
            reason = f"it was rebuilt as a {_type_name(error)}, not an exception"
    return WorkerExceptionError(type_name, message, reason)


def _dumps(obj: object) -> bytes:
    # The plain pickler first: a ForkingPickler copies its whole dispatch table
    # on every construction, a real share of a small job's cost. Only objects
    # that need multiprocessing's own reducers (connections, say) fall back.
    try:
        return pickle.dumps(obj, pickle.HIGHEST_PROTOCOL)
    except Exception:
        buffer = io.BytesIO()
        ForkingPickler(buffer, pickle.HIGHEST_PROTOCOL).dump(obj)
        return buffer.getvalue()


def _type_name(obj: object) -> str:
    kind = type(obj)
    if kind.__module__ == "builtins":
        return kind.__qualname__
    return f"{kind.__module__}.{kind.__qualname__}"


def _describe(fn: object) -> str:
    qualname = getattr(fn, "__qualname__", None)
    if isinstance(qualname, str):
        return f"{getattr(fn, '__module__', None) or '?'}.{qualname}"
    try:
        return repr(fn)
    except Exception:
        return f"<{_type_name(fn)} object>"


def _unpicklable_call(
    fn: object, args: tuple[Any, ...], kwargs: dict[str, Any], exc: Exception
) -> pickle.PicklingError:
    """Say which part of a job could not be pickled (only runs on failure)."""

    def fails(obj: object) -> Exception | None:
        try:
            _dumps(obj)
        except Exception as why:
            return why
        return None

    name = _describe(fn)
    why = fails(fn)
    if why is not None:
        return pickle.PicklingError(
            f"the function {name} cannot be pickled to send it to a process "
            f"worker ({why}); process jobs must be functions importable by name, "
            "defined at the top level of a module"
        )
    for index, arg in enumerate(args):
        why = fails(arg)
        if why is not None:
            return pickle.PicklingError(
                f"argument {index} of {name} ({_type_name(arg)} object) cannot be "
                f"pickled to send it to a process worker: {why}"
            )
    for key, value in kwargs.items():
        why = fails(value)
        if why is not None:
            return pickle.PicklingError(
                f"keyword argument {key!r} of {name} ({_type_name(value)} object) "
                f"cannot be pickled to send it to a process worker: {why}"
            )
    return pickle.PicklingError(
        f"the call of {name} cannot be pickled to send it to a process worker: {exc}"
    )
