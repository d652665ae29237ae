"""Honest timing on CPU and GPU: warm-up, CUDA synchronisation, medians.

Everything here wraps :class:`torch.utils.benchmark.Timer`, which warms up,
synchronises CUDA around each block of runs, and picks how many runs to
average so that short calls are not drowned by timer overhead.

``Timer`` runs its statement on **one** CPU thread unless told otherwise, so
every timer here passes ``num_threads=torch.get_num_threads()`` (or the count
given): what is timed runs on the threads the reader's code runs on, and
:func:`device_name` reports that same count.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from typing import Callable

import torch
from torch.utils import benchmark

from ..checks import as_count

__all__ = [
    "Timing",
    "available_memory_bytes",
    "check_timing_claim",
    "device_name",
    "parse_dtype",
    "pick_device",
    "quick_time",
    "streaming_read_bandwidth",
    "time_call",
    "time_interleaved",
    "timing_threads",
]

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def parse_dtype(name: str | torch.dtype) -> torch.dtype:
    """'float32' | 'float16' | 'bfloat16' (or a torch.dtype) -> torch.dtype."""
    if isinstance(name, torch.dtype):
        if name not in _DTYPES.values():
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}; got {name}")
        return name
    if name not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}; got {name!r}")
    return _DTYPES[name]


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """The device to run on: the one asked for, else CUDA when present, else CPU."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device} was asked for but CUDA is not available")
    return device


def device_name(device: torch.device, num_threads: int | None = None) -> str:
    """A human-readable name of the device, e.g. 'NVIDIA H100 80GB HBM3' or 'CPU (x86_64, 2 threads)'.

    The CPU's thread count is the one timings run on (:func:`timing_threads`).
    """
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    threads = timing_threads(num_threads)
    return f"CPU ({platform.machine()}, {threads} thread{'' if threads == 1 else 's'})"


@dataclass(frozen=True)
class Timing:
    """Result of :func:`time_call`: median and interquartile range in seconds."""

    median_s: float
    iqr_s: float
    runs: int

    @property
    def median_ms(self) -> float:
        return self.median_s * 1e3


def timing_threads(num_threads: int | None = None) -> int:
    """The CPU thread count timings run on: ``num_threads`` if given, else ``torch.get_num_threads()``."""
    if num_threads is None:
        return torch.get_num_threads()
    return as_count("num_threads", num_threads)


def time_call(fn: Callable[[], object], min_run_time: float = 0.3, num_threads: int | None = None) -> Timing:
    """Time ``fn()`` with torch.utils.benchmark: warm-up, CUDA sync, blocked autorange.

    ``min_run_time`` is the least total measuring time in seconds;
    ``num_threads`` the CPU threads to run on (default: ``torch.get_num_threads()``).
    """
    fn()  # warm-up: first-call allocations, kernel selection, lazy init
    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=timing_threads(num_threads))
    m = timer.blocked_autorange(min_run_time=min_run_time)
    return Timing(median_s=m.median, iqr_s=m.iqr, runs=len(m.times))


def time_interleaved(fns: dict, rounds: int = 2, min_run_time: float = 0.3, num_threads: int | None = None) -> dict:
    """Time every callable of ``fns`` (key -> fn) in turn, ``rounds`` times; keep each key's best median.

    Interleaving makes a burst of load elsewhere on the machine hit every
    setting alike instead of spoiling one of them. Returns key -> Timing.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1; got {rounds}")
    best: dict = {}
    for _ in range(rounds):
        for key, fn in fns.items():
            t = time_call(fn, min_run_time=min_run_time, num_threads=num_threads)
            if key not in best or t.median_s < best[key].median_s:
                best[key] = t
    return best


def check_timing_claim(
    claim: Callable[[object], bool],
    readings: object,
    retime: Callable[[], object],
    retries: int = 2,
) -> object:
    """Check a claim about measured times, re-measuring before calling it false.

    A claim such as "fewer bytes take less time" can fail on a busy machine
    because another program took the core during one reading, not because it
    is false. ``claim(readings)`` is tried on the ``readings`` already taken;
    if it is false, ``retime()`` measures afresh, up to ``retries`` times, and
    the claim is tried on each new set of readings. Returns the first readings
    that satisfy it; raises :class:`AssertionError` listing every set of
    readings if none does (a claim that fails on every fresh measurement is a
    finding about the machine, not load). ``readings`` may be any object
    ``claim`` understands (a dict of milliseconds, say).
    """
    if retries < 0:
        raise ValueError(f"retries must be >= 0; got {retries}")
    tried = [readings]
    if claim(readings):
        return readings
    for _ in range(retries):
        readings = retime()
        tried.append(readings)
        if claim(readings):
            return readings
    raise AssertionError(f"the timing claim failed on all {len(tried)} measurements: {tried}")


def streaming_read_bandwidth(
    device: torch.device | str | None = None,
    n_bytes: int = 512 * 2**20,
    min_run_time: float = 0.3,
    num_threads: int | None = None,
    rounds: int = 3,
) -> float:
    """Measured streaming-read bandwidth of ``device`` in bytes per second.

    Sums a buffer of ``n_bytes`` (fp32, large enough to spill every cache):
    the reduction does almost no arithmetic, so its speed is the rate at which
    memory can be read, the ceiling of the roofline for decode attention.
    On a CPU the figure depends on the thread count (one core cannot saturate
    the memory bus), so it is measured on ``num_threads`` threads, by default
    ``torch.get_num_threads()``, the count every other timing here uses:
    compare a kernel's GB/s only with a bandwidth taken on the same count.
    The best of ``rounds`` measurements is kept: a shared machine only ever
    makes a reading lower than what the memory can do.
    """
    device = pick_device(device)
    n_bytes = as_count("n_bytes", n_bytes, minimum=4)
    buffer = torch.ones(n_bytes // 4, dtype=torch.float32, device=device)
    rounds = as_count("rounds", rounds)
    best = min(
        time_call(lambda: buffer.sum(), min_run_time=min_run_time, num_threads=num_threads).median_s
        for _ in range(rounds)
    )
    return buffer.nbytes / best


def quick_time(fn: Callable[[], object], repeats: int = 3, num_threads: int | None = None) -> Timing:
    """A fast estimate for interactive use: one warm-up call, then the median of ``repeats`` single calls.

    Uses torch.utils.benchmark (CUDA is synchronised around each call).
    Noisier than :func:`time_call`; meant for widgets that must answer in about a second.
    """
    repeats = as_count("repeats", repeats)
    fn()
    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=timing_threads(num_threads))
    times = sorted(timer.timeit(1).median for _ in range(repeats))
    return Timing(median_s=times[len(times) // 2], iqr_s=times[-1] - times[0], runs=repeats)


def available_memory_bytes(device: torch.device | str | None = None) -> int:
    """Free memory of ``device`` in bytes: CUDA's free global memory, or the OS's available RAM on CPU."""
    device = pick_device(device)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
