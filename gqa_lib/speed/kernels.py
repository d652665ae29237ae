"""Which kernels an attention call runs, and whether it copies K/V: found out with the profiler.

``profile_operators(fn)`` runs ``fn`` once under :mod:`torch.profiler` and
returns the ATen operators it called with the bytes each allocated.
``copies_kv(report, kv_bytes)`` reads a copy of K/V off such a report.
Chapter 5 uses both to show what ``scaled_dot_product_attention`` does with
``enable_gqa=True`` on the reader's device.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Callable

import torch
from torch.profiler import ProfilerActivity, profile

__all__ = ["ATTENTION_KERNEL_PREFIX", "attention_kernels", "copies_kv", "profile_operators"]

# Operators that only make views or empty buffers: not work, left out of reports.
_BOOKKEEPING = {
    "aten::empty", "aten::empty_like", "aten::empty_strided", "aten::view", "aten::reshape", "aten::_unsafe_view",
    "aten::transpose", "aten::as_strided", "aten::expand", "aten::unsqueeze", "aten::permute", "aten::select",
    "aten::slice", "aten::resize_", "aten::detach", "aten::lift_fresh", "aten::t", "aten::alias",
}
# Operators that copy a tensor: a K/V copy shows up as one of these.
_COPYING = {"aten::repeat_interleave", "aten::repeat", "aten::clone", "aten::contiguous", "aten::index_select"}
ATTENTION_KERNEL_PREFIX = "aten::_scaled_dot_product_"


@contextlib.contextmanager
def _quiet_native_stderr():
    """Silence what native code writes to file descriptor 2 (the profiler's start/stop log lines)."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no real descriptor 2 (some embedded front ends)
        yield
        return
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def profile_operators(fn: Callable[[], object], device: torch.device | str | None = None) -> dict[str, int]:
    """ATen operators ``fn()`` runs -> bytes each allocated (host or device, whichever is larger).

    ``fn`` is called once to warm up, then once under the profiler (CUDA
    activity recorded too when ``device`` is a CUDA device). View and
    empty-buffer operators are left out.
    """
    device = torch.device("cpu" if device is None else device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    fn()  # warm-up: lazy initialisation and kernel selection are not what we want to see
    with _quiet_native_stderr(), profile(activities=activities, profile_memory=True) as prof:
        fn()
    report = {}
    for event in prof.key_averages():
        if event.key.startswith("aten::") and event.key not in _BOOKKEEPING:
            device_bytes = getattr(event, "device_memory_usage", 0) or getattr(event, "cuda_memory_usage", 0)
            report[event.key] = max(event.cpu_memory_usage, device_bytes)
    return report


def attention_kernels(report: dict[str, int]) -> list[str]:
    """The fused attention kernels in a :func:`profile_operators` report (e.g. the CPU flash kernel)."""
    return sorted(op for op in report if op.startswith(ATTENTION_KERNEL_PREFIX))


def copies_kv(report: dict[str, int], kv_bytes: int) -> bool:
    """True if the report shows a copy of K/V: a copying operator, or one allocation at least the size of K and V."""
    return bool(_COPYING & set(report)) or max(report.values(), default=0) >= kv_bytes
