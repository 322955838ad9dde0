"""Count how often a task is woken while it waits inside one awaitable.

``counted(awaitable, counts, key)`` drives the awaitable step by step, passing
every yielded scheduler message through unchanged, and adds one to
``counts[key]`` each time the runtime resumes the task. Wrapped around
``manager.acquire()`` it shows how many waiters a single ``release()`` wakes,
on asyncio and trio alike and without touching the library under test: a
fair, wake-one release resumes exactly one waiter, a broadcast (notify-all)
release resumes many that then go back to sleep.
"""

from __future__ import annotations

import types
from collections.abc import Awaitable, Generator
from typing import Any, TypeVar

T = TypeVar("T")


@types.coroutine
def _trampoline(
    awaitable: Awaitable[T], counts: list[int], key: int
) -> Generator[Any, Any, T]:
    inner = awaitable.__await__()
    to_send: Any = None
    to_throw: BaseException | None = None
    while True:
        try:
            if to_throw is not None:
                message = inner.throw(to_throw)
            else:
                message = inner.send(to_send)
        except StopIteration as stop:
            result: T = stop.value
            return result
        to_send, to_throw = None, None
        try:
            to_send = yield message
        except GeneratorExit:
            inner.close()
            raise
        except BaseException as exc:  # handed on to the awaitable, as await does
            to_throw = exc
        counts[key] += 1


async def counted(awaitable: Awaitable[T], counts: list[int], key: int) -> T:
    """Await ``awaitable``, counting in ``counts[key]`` every resumption."""
    return await _trampoline(awaitable, counts, key)
