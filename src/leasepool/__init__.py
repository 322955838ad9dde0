"""Time-limited leases on bounded executor pools, for asyncio and trio alike.

leasepool lends async programs capacity on thread, process or (Python 3.14+)
subinterpreter pools through *leases*: a lease holds one pool until it is
released or, after a soft expiry and a grace period, revoked. Everything is
written against anyio, so it behaves the same under asyncio and trio.
"""

from ._backends import ExecutorBackend, PoolBackend
from ._errors import (
    GrinderFullError,
    LeaseExpiredError,
    LeasePoolError,
    LeasePoolNotStartedError,
    LeaseUnavailableError,
    UnsupportedBackendError,
    WorkerExceptionError,
)
from ._grinder import WorkGrinder
from ._grinder_handle import GrinderHandle, GrinderStatistics
from ._lease import ExecutorLease, LeaseState
from ._manager import LeasedExecutorManager, ManagerStatistics
from ._process_logging import ProcessLoggingConfig

__all__ = [
    "ExecutorBackend",
    "ExecutorLease",
    "GrinderFullError",
    "GrinderHandle",
    "GrinderStatistics",
    "LeaseExpiredError",
    "LeasePoolError",
    "LeasePoolNotStartedError",
    "LeaseState",
    "LeaseUnavailableError",
    "LeasedExecutorManager",
    "ManagerStatistics",
    "PoolBackend",
    "ProcessLoggingConfig",
    "UnsupportedBackendError",
    "WorkGrinder",
    "WorkerExceptionError",
]

__version__ = "0.2.0.dev0"

# Public names report the package, not the private module they live in.
for _name in __all__:
    _obj = globals()[_name]
    if getattr(_obj, "__module__", "").startswith("leasepool._"):
        _obj.__module__ = __name__
del _name, _obj
