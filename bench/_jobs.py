"""Work items the benchmarks send to executors.

They live in their own small module so that process workers (started with
forkserver or spawn) can import them by name when they unpickle a job.
"""

from __future__ import annotations


def noop() -> None:
    """Do nothing, so that a measurement sees only the cost of dispatching."""


def small_cpu_job(n: int) -> int:
    """Burn a little CPU (about 0.1 ms for n=1000) and return a checksum.

    Args:
        n: How many squares to add up; the work grows linearly with it.
    """
    total = 0
    for i in range(n):
        total += i * i
    return total
