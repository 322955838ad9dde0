"""``lease.run`` and ``executor.submit`` carry the function's types.

The ``assert_type`` calls are checked by ``mypy --strict tests``; at run time
they only return their argument, and the test checks the values.
"""

from __future__ import annotations

import concurrent.futures as cf
from typing import assert_type

import pytest

from _helpers import PATIENCE, make_manager
from leasepool import ExecutorLease

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(10)]


def describe(n: int, *, unit: str = "s") -> str:
    return f"{n}{unit}"


def pair(a: int, b: bytes) -> tuple[int, bytes]:
    return a, b


async def test_lease_typing_run_result_follows_fn() -> None:
    async with make_manager() as manager:
        lease = await manager.acquire()
        assert_type(lease, ExecutorLease)
        text = await lease.run(describe, 3, unit="ms")
        assert_type(text, str)
        both = await lease.run(pair, 1, b"x")
        assert_type(both, tuple[int, bytes])
        future = lease.executor.submit(describe, 4)
        assert_type(future, cf.Future[str])
        assert (text, both, future.result(timeout=PATIENCE)) == (
            "3ms",
            (1, b"x"),
            "4s",
        )
        await lease.release()


async def _type_errors_mypy_must_report(lease: ExecutorLease) -> None:
    # Never called. Each line is a type error that mypy must find; if the
    # typing of run() loosened, the ignore would become unused and
    # `warn_unused_ignores` (part of --strict) would fail the check.
    await lease.run(describe, "3")  # type: ignore[arg-type]  # str is not int
    await lease.run(describe, 3, unit=1)  # type: ignore[arg-type]  # int is not str
    await lease.run(pair, 1)  # type: ignore[call-arg]  # b is missing
