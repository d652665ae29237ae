"""Argument checks shared by the library: a ValueError that names the bad value.

Sizes must be true integers (``int`` or a numpy integer, never ``bool`` or a
``float``, even ``2.0``) and are returned as Python ``int``, so that products
of sizes never wrap around in a fixed-width integer type.
"""

from __future__ import annotations

import math
import operator

__all__ = ["as_count", "as_positive_float", "as_non_negative_float"]


def as_count(name: str, value, minimum: int = 1) -> int:
    """``value`` as a Python int >= ``minimum``; ValueError naming ``name`` otherwise.

    Accepts ``int`` and numpy integers; refuses ``bool``, floats, strings and None.
    """
    if isinstance(value, bool) or str(getattr(value, "dtype", "")) in ("bool", "torch.bool"):
        raise ValueError(f"{name} must be an integer >= {minimum}; got the bool {value!r}")
    try:
        number = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an integer >= {minimum}; got {value!r} ({type(value).__name__})") from None
    if number < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}; got {number}")
    return int(number)


def _as_real(name: str, value) -> float:
    if isinstance(value, bool) or value is None:
        raise ValueError(f"{name} must be a finite number; got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a finite number; got {value!r} ({type(value).__name__})") from None
    if not math.isfinite(number):
        raise ValueError(f"{name} must be a finite number; got {value!r}")
    return number


def as_positive_float(name: str, value) -> float:
    """``value`` as a finite float > 0; ValueError naming ``name`` for NaN, inf, <= 0, bool or non-numbers."""
    number = _as_real(name, value)
    if number <= 0:
        raise ValueError(f"{name} must be > 0; got {value!r}")
    return number


def as_non_negative_float(name: str, value) -> float:
    """``value`` as a finite float >= 0; ValueError naming ``name`` otherwise."""
    number = _as_real(name, value)
    if number < 0:
        raise ValueError(f"{name} must be >= 0; got {value!r}")
    return number
