"""The package's public surface: exactly ``__all__``, and every contract name."""

from __future__ import annotations

import enum
import importlib.util

import pytest

import leasepool
from leasepool import ExecutorBackend

CONTRACT_NAMES = {
    "LeasedExecutorManager",
    "ExecutorLease",
    "ExecutorBackend",
    "ProcessLoggingConfig",
    "LeasePoolError",
    "LeasePoolNotStartedError",
    "LeaseUnavailableError",
    "LeaseExpiredError",
    "UnsupportedBackendError",
}


def test_public_api_names_equal_all() -> None:
    public = {name for name in dir(leasepool) if not name.startswith("_")}
    assert public == set(leasepool.__all__)
    assert len(leasepool.__all__) == len(set(leasepool.__all__))


def test_public_api_has_contract_names() -> None:
    assert set(leasepool.__all__) >= CONTRACT_NAMES
    # WorkGrinder belongs to the contract too; it lands with its own module.
    if importlib.util.find_spec("leasepool._grinder") is not None:
        assert "WorkGrinder" in leasepool.__all__


def test_public_api_objects_report_the_package() -> None:
    for name in leasepool.__all__:
        obj = getattr(leasepool, name)
        if isinstance(obj, type):
            assert obj.__module__ == "leasepool", name


def test_public_api_exceptions_share_a_base() -> None:
    for name in (
        "LeasePoolNotStartedError",
        "LeaseUnavailableError",
        "LeaseExpiredError",
        "UnsupportedBackendError",
    ):
        assert issubclass(getattr(leasepool, name), leasepool.LeasePoolError)
    assert issubclass(leasepool.LeasePoolError, Exception)


def test_public_api_backend_enum_values() -> None:
    backend = leasepool.ExecutorBackend
    assert issubclass(backend, enum.StrEnum)
    assert {member.name: member.value for member in backend} == {
        "THREAD": "thread",
        "PROCESS": "process",
        "INTERPRETER": "interpreter",
    }
    assert isinstance(backend.THREAD, str)
    assert str(backend.THREAD) == "thread"


@pytest.mark.parametrize("spelling", ["process", "PROCESS", "Process"])
def test_executor_backend_accepts_any_case(spelling: str) -> None:
    assert ExecutorBackend(spelling) is ExecutorBackend.PROCESS
    assert str(ExecutorBackend.PROCESS) == "process"
    assert isinstance(ExecutorBackend.PROCESS, str)


def test_executor_backend_unknown_name_is_refused() -> None:
    with pytest.raises(ValueError, match="fiber"):
        ExecutorBackend("fiber")
