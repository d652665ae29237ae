"""Measured and computed speed: what a decoding step costs, on this device and on real ones.

- :mod:`.timing`: honest timing (warm-up, synchronisation, medians, thread counts);
- :mod:`.bench`: decode benchmarks of attention and whole models (``python -m gqa_lib.speed.bench``);
- :mod:`.kernels`: which attention kernel ran and whether K/V were copied;
- :mod:`.gpu_plan`: sizes that fit a GPU's free memory;
- :mod:`.capacity`: cache, batch and throughput bounds of real models on real devices;
- :mod:`.tensor_parallel`: KV heads split across devices;
- :mod:`.peers`: the library against Hugging Face transformers.
"""

from . import gpu_plan, timing

__all__ = ["gpu_plan", "timing"]
