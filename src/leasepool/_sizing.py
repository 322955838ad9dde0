"""Turning the size signal into a pool count."""

from __future__ import annotations

import math
from collections.abc import Callable

from ._log import GuardedLogger

__all__ = ["desired_pool_count"]


def desired_pool_count(
    provider: Callable[[], float] | None,
    log: GuardedLogger,
    *,
    min_pools: int,
    max_pools: int,
    units_per_pool: int,
) -> int:
    """Return the pool count ``provider``'s signal asks for, within the bounds.

    A provider that raises, or returns anything but a finite number >= 0
    (including an awaitable from an async function), is logged and read as no
    load, so a faulty signal shrinks the manager to ``min_pools`` rather than
    stopping it.
    """
    signal = 0.0
    if provider is not None:
        try:
            value: object = provider()
        except Exception:
            log.exception("size_provider.failed")
            value = 0
        if type(value) is bool or not isinstance(value, int | float):
            close = getattr(value, "close", None)
            if close is not None and hasattr(value, "__await__"):
                close()  # an async provider: never awaited, so say nothing
            log.warning("size_provider.invalid value=%r", value)
        elif (isinstance(value, float) and not math.isfinite(value)) or value < 0:
            log.warning("size_provider.invalid value=%r", value)
        else:
            # Past this, every value asks for max_pools; capping first also
            # keeps a huge int from overflowing float().
            signal = float(min(value, max_pools * units_per_pool))
    # In integers (ceil(x/u) == ceil(ceil(x)/u) for whole u): a huge
    # units_per_pool must not overflow a float division.
    wanted = -(-math.ceil(signal) // units_per_pool)
    return min(max_pools, max(min_pools, wanted))
