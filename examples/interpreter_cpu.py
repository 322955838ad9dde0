"""CPU-bound Python on subinterpreters (Python 3.14+), under leases.

Each subinterpreter has a GIL of its own, so pure-Python number crunching on
the interpreter backend runs on several cores at once, with no process start
and no pickling of the function. Two callers each lease a pool of two
interpreters and count primes in their half of the range; the sum is checked
against a sieve.

Run it on either runtime; the code below does not change::

    python examples/interpreter_cpu.py --runtime asyncio
    python examples/interpreter_cpu.py --runtime trio
"""

from __future__ import annotations

import argparse
import sys
import time

import anyio

from leasepool import ExecutorLease, LeasedExecutorManager, UnsupportedBackendError


def count_primes(start: int, stop: int) -> int:
    """Count the primes in ``[start, stop)`` by trial division: CPU-bound.

    It uses no module global, so Python copies it into each subinterpreter;
    a function that did would be imported there by module name instead.
    """
    count = 0
    for n in range(max(start, 2), stop):
        if n % 2 == 0:
            count += n == 2
            continue
        factor = 3
        while factor * factor <= n:
            if n % factor == 0:
                break
            factor += 2
        else:
            count += 1
    return count


def primes_by_sieve(limit: int) -> int:
    sieve = bytearray([1]) * limit
    sieve[:2] = b"\0\0"
    for n in range(2, int(limit**0.5) + 1):
        if sieve[n]:
            sieve[n * n :: n] = bytes(len(range(n * n, limit, n)))
    return sum(sieve)


async def caller(
    manager: LeasedExecutorManager,
    name: str,
    ranges: list[tuple[int, int]],
    totals: list[int],
) -> None:
    async def one(lease: ExecutorLease, start: int, stop: int) -> None:
        totals.append(await lease.run(count_primes, start, stop))

    # Both interpreters of the leased pool work at once.
    async with (
        manager.lease(owner=name, lease_seconds=60) as lease,
        anyio.create_task_group() as tg,
    ):
        for start, stop in ranges:
            tg.start_soon(one, lease, start, stop)


async def main(limit: int) -> None:
    step = limit // 8
    ranges = [(n, min(n + step, limit)) for n in range(0, limit, step)]
    halves = [ranges[0::2], ranges[1::2]]
    totals: list[int] = []
    started = time.perf_counter()
    async with LeasedExecutorManager(
        backend="interpreter", max_pools=2, workers_per_pool=2
    ) as manager:
        async with anyio.create_task_group() as tg:
            for n, half in enumerate(halves):
                tg.start_soon(caller, manager, f"caller-{n}", half, totals)
        granted = manager.stats()["leases_granted"]
    elapsed = time.perf_counter() - started
    expected = primes_by_sieve(limit)
    print(f"primes below {limit}: {sum(totals)} in {len(totals)} chunks")
    print(f"agrees with a sieve: {sum(totals) == expected}")
    print(f"leases granted {granted}; {elapsed:.2f} s on subinterpreters")
    if sum(totals) != expected:
        sys.exit(1)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runtime", choices=["asyncio", "trio"], default="asyncio")
    parser.add_argument("--limit", type=int, default=400_000)
    args = parser.parse_args()
    try:
        anyio.run(main, args.limit, backend=args.runtime)
    except UnsupportedBackendError as exc:
        sys.exit(str(exc))
