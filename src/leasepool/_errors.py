"""Exceptions raised by leasepool, and the one place their messages are built."""

from __future__ import annotations

__all__ = [
    "GrinderFullError",
    "LeaseExpiredError",
    "LeasePoolError",
    "LeasePoolNotStartedError",
    "LeaseUnavailableError",
    "UnsupportedBackendError",
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


def not_started(what: str) -> LeasePoolNotStartedError:
    return LeasePoolNotStartedError(
        f"{what} is not running: use 'async with' or 'await start()' first"
    )


def stopped_while_waiting(what: str) -> LeasePoolNotStartedError:
    return LeasePoolNotStartedError(f"{what} was stopped while this call waited")


def lease_gone(lease_id: str, state: str) -> LeaseExpiredError:
    return LeaseExpiredError(f"lease {lease_id!r} is {state} and takes no new work")


def wrong_loop(what: str) -> RuntimeError:
    return RuntimeError(
        f"{what} belongs to the event loop that started it; "
        "it cannot be used from another event loop or thread"
    )
