"""Argument checks shared by the public constructors and methods.

Every check raises ``ValueError`` naming the argument, the rule and the value, so
that a bad configuration fails at the line that made it. Booleans are refused
where numbers are expected: ``True`` is an ``int`` to Python but never a size or a
duration to a user.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = [
    "check_duration",
    "check_optional_duration",
    "check_positive_int",
]


def check_positive_int(name: str, value: Any) -> int:
    """Return ``value`` if it is a true integer above zero."""
    if type(value) is bool or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer > 0, got {value!r}")
    if value <= 0:
        raise ValueError(f"{name} must be an integer > 0, got {value!r}")
    return value


def check_duration(name: str, value: Any, *, allow_zero: bool = False) -> float:
    """Return ``value`` as seconds if it is a finite real number above zero.

    With ``allow_zero`` the value may also be exactly zero (a grace period of
    zero means revocation at soft expiry).
    """
    if type(value) is bool or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number of seconds, got {value!r}")
    try:
        seconds = float(value)
    except OverflowError:  # an int beyond float range
        seconds = math.inf
    if not math.isfinite(seconds):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if seconds < 0 or (seconds == 0 and not allow_zero):
        rule = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be {rule}, got {value!r}")
    return seconds


def check_optional_duration(
    name: str, value: Any, *, allow_zero: bool = False
) -> float | None:
    """Like :func:`check_duration`, but ``None`` (no limit) passes through."""
    if value is None:
        return None
    return check_duration(name, value, allow_zero=allow_zero)
