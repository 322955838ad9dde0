"""The manager's settings: its constructor arguments, checked once.

``check_settings`` validates every constructor argument of
:class:`LeasedExecutorManager` in the order they are documented, so that of
several bad arguments the first one is the one reported, and resolves the
backend and the process-logging configuration. The result is a frozen record:
nothing in it changes for the manager's lifetime.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ._backends import ExecutorBackend, PoolBackend, resolve_backend
from ._process_logging import ProcessLoggingConfig, check_level
from ._validation import check_duration, check_positive_int

__all__ = ["ManagerSettings", "check_settings", "process_logging_config"]

_module_log = logging.getLogger("leasepool.manager")


@dataclass(frozen=True, slots=True)
class ManagerSettings:
    """A manager's validated configuration; see the manager's ``Args``."""

    backend: PoolBackend
    kind: ExecutorBackend | None
    max_pools: int
    min_pools: int
    units_per_pool: int
    workers_per_pool: int
    size_provider: Callable[[], float] | None
    check_interval: float
    default_lease_seconds: float
    grace_seconds: float
    name_prefix: str
    logger: logging.Logger
    process_logging: ProcessLoggingConfig


def check_settings(
    *,
    backend: str | ExecutorBackend | PoolBackend,
    max_pools: int,
    min_pools: int,
    units_per_pool: int,
    size_provider: Callable[[], float] | None,
    check_interval: float,
    default_lease_seconds: float,
    lease_grace_seconds: float,
    workers_per_pool: int,
    name_prefix: str,
    logger: logging.Logger | None,
    process_logging: ProcessLoggingConfig | None,
    forward_process_logs: bool,
    process_log_level: int,
    process_log_target_logger: logging.Logger | None,
    clear_process_log_handlers: bool,
    executor_kwargs: Mapping[str, Any],
) -> ManagerSettings:
    """Validate the manager's constructor arguments into a settings record.

    Raises:
        ValueError: An argument breaks its rule; the message names the
            argument, the rule and the value.
    """
    checked_max = check_positive_int("max_pools", max_pools)
    checked_min = check_positive_int("min_pools", min_pools)
    if checked_min > checked_max:
        raise ValueError(
            f"min_pools must be <= max_pools, got min_pools={min_pools!r} "
            f"and max_pools={max_pools!r}"
        )
    units_per_pool = check_positive_int("units_per_pool", units_per_pool)
    workers_per_pool = check_positive_int("workers_per_pool", workers_per_pool)
    if size_provider is not None and not callable(size_provider):
        raise ValueError(
            f"size_provider must be a callable or None, got {size_provider!r}"
        )
    check_interval = check_duration("check_interval", check_interval)
    default_lease_seconds = check_duration(
        "default_lease_seconds", default_lease_seconds
    )
    grace_seconds = check_duration(
        "lease_grace_seconds", lease_grace_seconds, allow_zero=True
    )
    if not isinstance(name_prefix, str) or not name_prefix:
        raise ValueError(f"name_prefix must be a non-empty string, got {name_prefix!r}")
    if logger is not None and not isinstance(logger, logging.Logger):
        raise ValueError(f"logger must be a logging.Logger or None, got {logger!r}")
    logging_config = process_logging_config(
        process_logging,
        forward_process_logs,
        process_log_level,
        process_log_target_logger,
        clear_process_log_handlers,
    )
    backend_obj, kind = resolve_backend(
        backend, executor_kwargs, process_logging=logging_config
    )
    if logging_config.enabled and kind is not ExecutorBackend.PROCESS:
        raise ValueError(
            f"process log forwarding needs backend='process', got backend={backend!r}"
        )
    return ManagerSettings(
        backend=backend_obj,
        kind=kind,
        max_pools=checked_max,
        min_pools=checked_min,
        units_per_pool=units_per_pool,
        workers_per_pool=workers_per_pool,
        size_provider=size_provider,
        check_interval=check_interval,
        default_lease_seconds=default_lease_seconds,
        grace_seconds=grace_seconds,
        name_prefix=name_prefix,
        logger=logger if logger is not None else _module_log,
        process_logging=logging_config,
    )


def process_logging_config(
    config: ProcessLoggingConfig | None,
    forward: bool,
    level: int,
    target: logging.Logger | None,
    clear: bool,
) -> ProcessLoggingConfig:
    """Return the forwarding config from ``process_logging=`` or the shortcuts.

    The config object and the ``forward_process_logs``/``process_log_*``
    shortcuts are two ways to say the same thing, so using both is refused
    rather than merged.
    """
    shortcuts = {
        "forward_process_logs": (forward, False),
        "process_log_level": (level, logging.INFO),
        "process_log_target_logger": (target, None),
        "clear_process_log_handlers": (clear, True),
    }
    shortcuts_used = ", ".join(
        f"{name}={value!r}"
        for name, (value, default) in shortcuts.items()
        if value is not default and value != default
    )
    if config is not None:
        if not isinstance(config, ProcessLoggingConfig):
            raise ValueError(
                "process_logging must be a ProcessLoggingConfig or None, "
                f"got {config!r}"
            )
        if shortcuts_used:
            raise ValueError(
                "process_logging cannot be combined with the forward_process_logs/"
                f"process_log_* shortcuts, got {shortcuts_used}; put every "
                "setting in the config"
            )
        return config
    if not isinstance(forward, bool):
        raise ValueError(f"forward_process_logs must be True or False, got {forward!r}")
    check_level("process_log_level", level)
    if target is not None and not isinstance(target, logging.Logger):
        raise ValueError(
            "process_log_target_logger must be a logging.Logger or None, "
            f"got {target!r}"
        )
    if not isinstance(clear, bool):
        raise ValueError(
            f"clear_process_log_handlers must be True or False, got {clear!r}"
        )
    return ProcessLoggingConfig(
        enabled=forward, level=level, target_logger=target, clear_child_handlers=clear
    )
