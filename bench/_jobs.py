"""Work items the benchmarks send to executors.

They live in their own small module so that process workers (started with
forkserver or spawn) can import them by name when they unpickle a job.
"""

from __future__ import annotations

from collections import deque

# One entry per noop() call; deque.append is atomic under the GIL, so worker
# threads can count without a lock, and len() reads the count.
_calls: deque[None] = deque()

SMALL_JOB_SIZE = 1_000


def noop() -> None:
    """Do next to nothing, so that a measurement sees the cost of dispatching.

    The one thing it does is count its call, so that the harness can check
    that every call it timed really ran in this process's threads.
    """
    _calls.append(None)


def noop_calls(reset: bool = False) -> int:
    """Return how many ``noop`` calls ran since the last reset; maybe reset."""
    count = len(_calls)
    if reset:
        _calls.clear()
    return count


def small_cpu_job(n: int) -> int:
    """Burn a little CPU (about 0.1 ms for n=1000) and return a checksum.

    Args:
        n: How many squares to add up; the work grows linearly with it.
    """
    total = 0
    for i in range(n):
        total += i * i
    return total


def expected_checksum(n: int) -> int:
    """What ``small_cpu_job(n)`` returns, by formula, to check results."""
    return (n - 1) * n * (2 * n - 1) // 6
