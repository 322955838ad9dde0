"""The grinder's submitting methods carry the function's result type.

The ``assert_type`` calls are checked by ``mypy --strict tests``; at run time
they only return their argument, and the test checks the values. Argument
types are not checked: ``owner`` and ``wait`` share the call's keywords, which
a ``ParamSpec`` cannot express.
"""

from __future__ import annotations

import concurrent.futures as cf
from typing import assert_type

import anyio.to_thread
import pytest

from _helpers import PATIENCE, make_manager
from leasepool import GrinderHandle, WorkGrinder

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(10)]


def describe(n: int, *, unit: str = "s") -> str:
    return f"{n}{unit}"


async def test_grinder_typing_results_follow_fn() -> None:
    manager = make_manager()
    grinder = WorkGrinder(executor_manager=manager, batch_size_threshold=1)
    async with manager, grinder:
        text = await grinder.submit(describe, 3, unit="ms")
        assert_type(text, str)
        handle = await grinder.enqueue(describe, 4)
        assert_type(handle, GrinderHandle[str])
        assert_type(await handle, str)
        assert_type(handle.result(), str)
        called = await grinder.submit_call(describe, (5,), {"unit": "h"})
        assert_type(called, str)

        def from_thread() -> cf.Future[str]:
            return grinder.submit_from_thread(describe, 6)

        future = await anyio.to_thread.run_sync(from_thread)
        assert_type(future, cf.Future[str])
        late = await anyio.to_thread.run_sync(future.result, PATIENCE)
        assert (text, handle.result(), called, late) == ("3ms", "4s", "5h", "6s")
