"""Progress bars for long work (tqdm.auto: a widget in Jupyter, text elsewhere).

:func:`progress` turns the bar off when the caller asks, or when the
environment variable ``TQDM_DISABLE`` is set to a non-empty value other than
``0`` (the book's static build sets it: a progress widget would be dead weight
on the page). tqdm itself reads that variable only once, at import.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from tqdm.auto import tqdm

__all__ = ["progress"]


def progress(iterable: Iterable, desc: str, enabled: bool = True, **kwargs) -> tqdm:
    """``tqdm.auto.tqdm(iterable, desc=desc)``, or a silent one when ``enabled`` is False."""
    if not enabled or os.environ.get("TQDM_DISABLE", "") not in ("", "0"):
        kwargs["disable"] = True
    return tqdm(iterable, desc=desc, **kwargs)
