"""Exceptions raised by leasepool, and the one place their messages are built."""

from __future__ import annotations

from typing import Any

__all__ = [
    "GrinderFullError",
    "LeaseExpiredError",
    "LeasePoolError",
    "LeasePoolNotStartedError",
    "LeaseUnavailableError",
    "UnsupportedBackendError",
    "WorkerExceptionError",
]


class LeasePoolError(Exception):
    """Base class of every error leasepool raises on purpose."""


class LeasePoolNotStartedError(LeasePoolError):
    """The manager (or grinder) is not running: start it, or it was stopped."""


class LeaseUnavailableError(LeasePoolError):
    """No pool could be leased without waiting, and waiting was not allowed."""


class LeaseExpiredError(LeasePoolError):
    """The lease was released or revoked, so it takes no new work."""


class UnsupportedBackendError(LeasePoolError):
    """The requested backend cannot run on this Python."""


class GrinderFullError(LeasePoolError):
    """The grinder's pending queue is at ``max_pending`` and waiting was refused."""


class WorkerExceptionError(LeasePoolError):
    """A process job raised an exception that could not be brought back intact.

    Raised in place of the job's own exception when that cannot be pickled in
    the worker or rebuilt in the parent, for example an exception class whose
    ``__init__`` takes other arguments than it passes to ``Exception``. Only
    that job fails; the pool stays usable. The worker's traceback is the
    ``__cause__``.

    Attributes:
        exception_type: Qualified name of the exception the job raised.
        message: What ``str()`` of that exception said in the worker.
        reason: Why it could not be brought back.
    """

    def __init__(self, exception_type: str, message: str, reason: str) -> None:
        super().__init__(
            f"the job raised {exception_type}({message!r}) in its worker process, "
            f"and the exception could not be brought back: {reason}"
        )
        self.exception_type = exception_type
        self.message = message
        self.reason = reason

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.exception_type, self.message, self.reason))


def not_started(what: str) -> LeasePoolNotStartedError:
    return LeasePoolNotStartedError(
        f"{what} is not running: use 'async with' or 'await start()' first"
    )


def stopped_while_waiting(what: str) -> LeasePoolNotStartedError:
    return LeasePoolNotStartedError(f"{what} was stopped while this call waited")


def lease_gone(lease_id: str, state: str) -> LeaseExpiredError:
    return LeaseExpiredError(f"lease {lease_id!r} is {state} and takes no new work")


def job_cancelled(lease_id: str, state: str) -> LeaseExpiredError:
    return LeaseExpiredError(
        f"the job was cancelled before it started: lease {lease_id!r} is {state}"
    )


def grinder_full(limit: int) -> GrinderFullError:
    return GrinderFullError(
        f"the grinder already holds max_pending={limit} queued calls "
        "and wait=False was given"
    )


def wrong_loop(what: str) -> RuntimeError:
    return RuntimeError(
        f"{what} belongs to the event loop that started it; "
        "it cannot be used from another event loop or thread"
    )
