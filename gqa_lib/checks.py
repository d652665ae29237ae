"""Argument checks shared by the library: a ValueError that names the bad value.

Sizes must be true integers (``int`` or a numpy integer, never ``bool`` or a
``float``, even ``2.0``) and are returned as Python ``int``, so that products
of sizes never wrap around in a fixed-width integer type.
"""

from __future__ import annotations

import math
import operator

__all__ = ["as_count", "as_kv_heads", "as_positive_float", "as_non_negative_float", "divisors"]


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


def as_kv_heads(n_heads: int, value, name: str = "n_kv_heads") -> int:
    """``value`` as a number of KV heads G for ``n_heads`` query heads; ValueError naming ``name`` otherwise.

    G must be a true integer between 1 and ``n_heads`` that divides ``n_heads``
    (each KV head serves a group of ``n_heads / G`` query heads).
    """
    n_heads = as_count("n_heads", n_heads)
    g = as_count(name, value)
    if g > n_heads:
        raise ValueError(f"{name}={g} must be between 1 and n_heads={n_heads}")
    if n_heads % g:
        raise ValueError(f"n_heads={n_heads} must be divisible by {name}={g} (valid: {divisors(n_heads)})")
    return g


def divisors(n: int) -> list[int]:
    """Every G with ``n % G == 0``, ascending: the valid KV-head counts for ``n`` query heads."""
    n = as_count("n", n)
    return [g for g in range(1, n + 1) if n % g == 0]


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
