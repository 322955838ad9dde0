"""A logger wrapper that can never raise into the library's own machinery.

The manager and grinder log from their supervisor tasks and from callbacks on
the event loop. A user's handler or filter that raises there would crash the
supervisor (on trio, the whole run), so every call goes through this guard,
which drops the failing record after reporting it on stderr the way
``logging`` reports handler errors.
"""

from __future__ import annotations

import logging
import sys
import traceback
from collections.abc import Callable
from typing import Any

__all__ = ["GuardedLogger"]


class GuardedLogger:
    """Forward to ``logger``; an exception from its handlers is never raised."""

    __slots__ = ("isEnabledFor", "logger")

    #: The logger's own method: asked on every lease, so no wrapper call.
    isEnabledFor: Callable[[int], bool]

    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger
        self.isEnabledFor = logger.isEnabledFor

    def log(self, level: int, msg: str, *args: Any, exc_info: bool = False) -> None:
        if not self.logger.isEnabledFor(level):
            return
        try:
            self.logger.log(level, msg, *args, exc_info=exc_info, stacklevel=3)
        except Exception:
            if logging.raiseExceptions and sys.stderr is not None:
                sys.stderr.write("--- leasepool: a log handler raised ---\n")
                traceback.print_exc(file=sys.stderr)

    def debug(self, msg: str, *args: Any) -> None:
        self.log(logging.DEBUG, msg, *args)

    def info(self, msg: str, *args: Any) -> None:
        self.log(logging.INFO, msg, *args)

    def warning(self, msg: str, *args: Any) -> None:
        self.log(logging.WARNING, msg, *args)

    def exception(self, msg: str, *args: Any) -> None:
        self.log(logging.ERROR, msg, *args, exc_info=True)
