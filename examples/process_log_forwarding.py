"""Log records from process workers, written by the parent's own handlers.

With ``forward_process_logs=True`` every record a worker logs at or above
``process_log_level`` travels to the parent and goes through the target
logger's handlers, filters and level, so one logging setup covers the whole
program. The worker formats the message itself: an argument that cannot be
pickled (a lock, here) still arrives, as text.

Run it on either runtime; the code below does not change::

    python examples/process_log_forwarding.py --runtime asyncio
    python examples/process_log_forwarding.py --runtime trio
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading

import anyio

from leasepool import LeasedExecutorManager

log = logging.getLogger("example.worker")


def resize(image_id: int) -> int:
    """Stand in for CPU-bound work that logs as it goes."""
    log.info("resizing image %d in pid %d", image_id, os.getpid())
    log.debug("not forwarded: below process_log_level")
    if image_id == 3:
        log.info("a lock as an argument still arrives: %s", threading.Lock())
    return image_id * 100


async def main() -> None:
    manager = LeasedExecutorManager(
        backend="process",
        max_pools=1,
        workers_per_pool=2,
        forward_process_logs=True,
        process_log_level=logging.INFO,
        process_log_target_logger=logging.getLogger("example.app"),
    )
    async with manager, manager.lease(owner="resizer") as lease:
        sizes = [await lease.run(resize, n) for n in range(1, 4)]
    # stop() has passed on every record the workers logged.
    print("sizes:", sizes)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runtime", choices=["asyncio", "trio"], default="asyncio")
    args = parser.parse_args()
    logging.basicConfig(
        stream=sys.stdout,
        level=logging.INFO,
        format="%(processName)s %(levelname)s %(name)s: %(message)s",
    )
    anyio.run(main, backend=args.runtime)
