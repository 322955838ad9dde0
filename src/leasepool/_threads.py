"""Short-lived threads for blocking work the manager must not queue behind."""

from __future__ import annotations

import concurrent.futures as cf
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._runtime import Runtime

__all__ = ["run_in_thread"]


async def run_in_thread(runtime: Runtime, fn: Callable[[], None], *, name: str) -> None:
    """Run blocking ``fn`` on a short-lived thread of our own, named ``name``.

    Not ``anyio.to_thread``: a saturated default limiter (or one the
    application shares) must never delay giving capacity back. The thread is
    joined once it has set the outcome, so none is left behind; if the wait is
    cancelled before then, the thread finishes ``fn`` on its own.
    """
    fut: cf.Future[None] = cf.Future()

    def target() -> None:
        if fut.set_running_or_notify_cancel():
            try:
                fn()
            except BaseException as exc:
                fut.set_exception(exc)
            else:
                fut.set_result(None)

    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    try:
        await runtime.wait_future(fut)
    finally:
        if fut.done() and not fut.cancelled():
            # The thread has set the outcome and has only to return: joining
            # it is immediate, and keeps "no thread of the manager is left
            # after stop()" exact.
            thread.join()
