"""Forwarding of log records from process workers to the parent's loggers."""

from __future__ import annotations

import logging
from dataclasses import dataclass

__all__ = ["ProcessLoggingConfig"]


@dataclass(frozen=True, slots=True)
class ProcessLoggingConfig:
    """How records logged in process workers reach the parent.

    Attributes:
        enabled: Forward records at all. Off by default: workers then log
            wherever their own logging configuration sends them.
        level: The lowest level a worker sends; records below it are dropped in
            the worker, before they cost a trip through the queue.
        target_logger: The parent logger that re-emits forwarded records, so
            they pass through its handlers, filters and level. ``None`` means
            the manager's logger.
        clear_child_handlers: Remove handlers a worker inherited or configured
            before forwarding starts, so no record is written twice.
    """

    enabled: bool = False
    level: int = logging.INFO
    target_logger: logging.Logger | None = None
    clear_child_handlers: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.enabled, bool):
            raise ValueError(f"enabled must be True or False, got {self.enabled!r}")
        _check_level("level", self.level)
        if self.target_logger is not None and not isinstance(
            self.target_logger, logging.Logger
        ):
            raise ValueError(
                "target_logger must be a logging.Logger or None, "
                f"got {self.target_logger!r}"
            )
        if not isinstance(self.clear_child_handlers, bool):
            raise ValueError(
                "clear_child_handlers must be True or False, "
                f"got {self.clear_child_handlers!r}"
            )


def _check_level(name: str, level: object) -> int:
    if type(level) is not int or level < 0:
        raise ValueError(
            f"{name} must be a logging level such as logging.INFO, got {level!r}"
        )
    return level
