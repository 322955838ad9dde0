"""Argument validation: every bad value fails at construction, naming itself."""

from __future__ import annotations

import logging
import math
import sys
from typing import Any

import pytest

from _helpers import make_manager
from leasepool import (
    ExecutorBackend,
    LeasedExecutorManager,
    LeasePoolError,
    LeasePoolNotStartedError,
    ProcessLoggingConfig,
    UnsupportedBackendError,
)

pytestmark = pytest.mark.timeout(10)

NOT_INTEGERS: list[Any] = [True, False, 0.9, 2.0, "2", None, 1 + 0j]
NOT_POSITIVE: list[Any] = [0, -1, -10]
NOT_DURATIONS: list[Any] = [True, "2", None, math.nan, math.inf, -math.inf, -1, -0.5]


def _check_message(
    exc: pytest.ExceptionInfo[ValueError], name: str, value: Any
) -> None:
    message = str(exc.value)
    assert name in message
    assert repr(value) in message


@pytest.mark.parametrize("name", ["max_pools", "min_pools", "units_per_pool"])
@pytest.mark.parametrize("value", NOT_INTEGERS + NOT_POSITIVE)
def test_validation_sizes_must_be_true_positive_integers(name: str, value: Any) -> None:
    kwargs: dict[str, Any] = {"max_pools": 3, name: value}
    with pytest.raises(ValueError, match=name) as exc:
        LeasedExecutorManager(**kwargs)
    _check_message(exc, name, value)


@pytest.mark.parametrize("value", NOT_INTEGERS + NOT_POSITIVE)
def test_validation_workers_per_pool_must_be_true_positive_integer(value: Any) -> None:
    with pytest.raises(ValueError, match="workers_per_pool") as exc:
        LeasedExecutorManager(max_pools=1, workers_per_pool=value)
    _check_message(exc, "workers_per_pool", value)


def test_validation_max_pools_is_required() -> None:
    with pytest.raises(TypeError, match="max_pools"):
        LeasedExecutorManager()  # type: ignore[call-arg]  # the point of the test


def test_validation_min_pools_above_max_pools_is_refused() -> None:
    with pytest.raises(ValueError, match="min_pools") as exc:
        LeasedExecutorManager(max_pools=2, min_pools=3)
    assert "max_pools" in str(exc.value)
    assert "3" in str(exc.value)
    assert "2" in str(exc.value)


def test_validation_min_pools_equal_to_max_pools_is_fine() -> None:
    manager = LeasedExecutorManager(max_pools=2, min_pools=2)
    assert manager.desired_executor_count() == 2


@pytest.mark.parametrize(
    "name", ["check_interval", "default_lease_seconds", "lease_grace_seconds"]
)
@pytest.mark.parametrize("value", NOT_DURATIONS)
def test_validation_durations_must_be_finite_positive(name: str, value: Any) -> None:
    kwargs: dict[str, Any] = {"max_pools": 1, name: value}
    with pytest.raises(ValueError, match=name) as exc:
        LeasedExecutorManager(**kwargs)
    _check_message(exc, name, value)


@pytest.mark.parametrize("name", ["check_interval", "default_lease_seconds"])
def test_validation_zero_duration_is_refused(name: str) -> None:
    kwargs: dict[str, Any] = {"max_pools": 1, name: 0}
    with pytest.raises(ValueError, match=name):
        LeasedExecutorManager(**kwargs)


def test_validation_zero_grace_is_allowed() -> None:
    LeasedExecutorManager(max_pools=1, lease_grace_seconds=0)
    LeasedExecutorManager(max_pools=1, lease_grace_seconds=0.0)


def test_validation_integral_and_fractional_durations_are_accepted() -> None:
    LeasedExecutorManager(max_pools=1, check_interval=1, default_lease_seconds=0.25)


@pytest.mark.parametrize("backend", ["bogus", "threads", "", "proc"])
def test_validation_unknown_backend_lists_supported(backend: str) -> None:
    with pytest.raises(ValueError, match="backend") as exc:
        LeasedExecutorManager(max_pools=1, backend=backend)
    message = str(exc.value)
    assert repr(backend) in message
    for supported in ("thread", "process", "interpreter"):
        assert supported in message


@pytest.mark.parametrize("backend", [3, None, object(), ExecutorBackend])
def test_validation_backend_of_wrong_kind_is_refused(backend: Any) -> None:
    with pytest.raises(ValueError, match="backend") as exc:
        LeasedExecutorManager(max_pools=1, backend=backend)
    assert repr(backend) in str(exc.value)


@pytest.mark.parametrize(
    "backend", ["thread", "THREAD", "Thread", ExecutorBackend.THREAD, "process"]
)
def test_validation_backend_names_are_case_insensitive(backend: Any) -> None:
    manager = LeasedExecutorManager(max_pools=1, backend=backend)
    assert manager.backend == ExecutorBackend(str(backend).lower())
    assert isinstance(manager.backend, ExecutorBackend)


@pytest.mark.skipif(sys.version_info >= (3, 14), reason="interpreters exist here")
@pytest.mark.parametrize("backend", ["interpreter", "Interpreter"])
def test_validation_interpreter_backend_needs_python_314(backend: str) -> None:
    with pytest.raises(UnsupportedBackendError, match=r"3\.14"):
        LeasedExecutorManager(max_pools=1, backend=backend)
    assert issubclass(UnsupportedBackendError, LeasePoolError)


@pytest.mark.parametrize(
    "shortcut",
    [
        {"forward_process_logs": True},
        {"process_log_level": logging.DEBUG},
        {"process_log_target_logger": logging.getLogger("x")},
        {"clear_process_log_handlers": False},
    ],
)
def test_validation_process_logging_with_shortcuts_is_refused(
    shortcut: dict[str, Any],
) -> None:
    with pytest.raises(ValueError, match="process_logging") as exc:
        LeasedExecutorManager(
            max_pools=1,
            backend="process",
            process_logging=ProcessLoggingConfig(enabled=True),
            **shortcut,
        )
    ((name, value),) = shortcut.items()
    assert f"{name}={value!r}" in str(exc.value)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"forward_process_logs": True},
        {"process_logging": ProcessLoggingConfig(enabled=True)},
    ],
)
def test_validation_forwarding_on_thread_backend_is_refused(
    kwargs: dict[str, Any],
) -> None:
    with pytest.raises(ValueError, match="process") as exc:
        LeasedExecutorManager(max_pools=1, backend="thread", **kwargs)
    assert "'thread'" in str(exc.value)


def test_validation_disabled_process_logging_on_thread_backend_is_fine() -> None:
    LeasedExecutorManager(max_pools=1, process_logging=ProcessLoggingConfig())


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("forward_process_logs", 1),
        ("forward_process_logs", "yes"),
        ("process_log_level", "INFO"),
        ("process_log_level", -1),
        ("process_log_level", True),
        ("process_log_target_logger", "root"),
        ("clear_process_log_handlers", None),
        ("process_logging", {"enabled": True}),
        ("size_provider", 5),
        ("name_prefix", ""),
        ("name_prefix", 7),
        ("logger", "leasepool"),
    ],
)
def test_validation_other_arguments_name_themselves(name: str, value: Any) -> None:
    kwargs: dict[str, Any] = {"max_pools": 1, "backend": "process", name: value}
    with pytest.raises(ValueError, match=name) as exc:
        LeasedExecutorManager(**kwargs)
    _check_message(exc, name, value)


@pytest.mark.parametrize("backend", ["thread", "process"])
def test_validation_unknown_executor_kwarg_is_refused(backend: str) -> None:
    with pytest.raises(ValueError, match="bogus_option"):
        LeasedExecutorManager(max_pools=1, backend=backend, bogus_option=1)


@pytest.mark.parametrize(
    ("backend", "key"),
    [
        ("thread", "max_workers"),
        ("thread", "thread_name_prefix"),
        ("process", "max_workers"),
    ],
)
def test_validation_reserved_executor_kwarg_is_refused(backend: str, key: str) -> None:
    kwargs: dict[str, Any] = {key: 3}
    with pytest.raises(ValueError, match=key) as exc:
        LeasedExecutorManager(max_pools=1, backend=backend, **kwargs)
    assert "workers_per_pool" in str(exc.value) or "name_prefix" in str(exc.value)


def test_validation_valid_executor_kwargs_are_accepted() -> None:
    LeasedExecutorManager(max_pools=1, initializer=print, initargs=())


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"lease_seconds": 0}, "lease_seconds"),
        ({"lease_seconds": -1.0}, "lease_seconds"),
        ({"lease_seconds": math.nan}, "lease_seconds"),
        ({"lease_seconds": math.inf}, "lease_seconds"),
        ({"lease_seconds": True}, "lease_seconds"),
        ({"lease_seconds": "5"}, "lease_seconds"),
        ({"timeout": -1}, "timeout"),
        ({"timeout": math.nan}, "timeout"),
        ({"timeout": "1"}, "timeout"),
        ({"wait": 1}, "wait"),
        ({"wait": None}, "wait"),
        ({"owner": 5}, "owner"),
    ],
)
async def test_validation_acquire_arguments_are_checked(
    kwargs: dict[str, Any], name: str
) -> None:
    manager = make_manager()
    # Checked before anything else, so even an unstarted manager says so.
    with pytest.raises(ValueError, match=name) as exc:
        await manager.acquire(**kwargs)
    _check_message(exc, name, next(iter(kwargs.values())))
    async with manager:
        with pytest.raises(ValueError, match=name):
            await manager.acquire(**kwargs)
        if "timeout" not in kwargs and "wait" not in kwargs:
            with pytest.raises(ValueError, match=name):
                manager.acquire_nowait(**kwargs)
        assert manager.leased_count == 0


@pytest.mark.anyio
async def test_validation_acquire_before_start_is_not_started_error() -> None:
    manager = make_manager()
    with pytest.raises(LeasePoolNotStartedError):
        await manager.acquire()
    with pytest.raises(LeasePoolNotStartedError):
        manager.acquire_nowait()
