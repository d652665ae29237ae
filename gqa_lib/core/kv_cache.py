"""The KV cache: keys and values of past positions, kept for decoding.

Only the ``n_kv_heads`` heads that the attention actually computes are
stored, so a GQA model with G KV heads holds G/H of a multi-head model's cache.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch

from ..checks import as_count

__all__ = ["KVCache", "kv_cache_bytes"]


def kv_cache_bytes(
    n_layers: int,
    n_kv_heads: int,
    head_dim: int,
    seq_len: int,
    batch_size: int = 1,
    bytes_per_elem: int = 2,
) -> int:
    """Bytes of a KV cache: keys and values together, all layers.

    ``2 * n_layers * batch_size * n_kv_heads * seq_len * head_dim * bytes_per_elem``.
    The default of 2 bytes per element is fp16/bf16. Sizes must be integers
    (Python or numpy; not bools or floats); the product is a Python int, so it
    never wraps around as a fixed-width numpy product would.
    """
    n_layers = as_count("n_layers", n_layers)
    n_kv_heads = as_count("n_kv_heads", n_kv_heads)
    head_dim = as_count("head_dim", head_dim)
    seq_len = as_count("seq_len", seq_len, minimum=0)
    batch_size = as_count("batch_size", batch_size)
    bytes_per_elem = as_count("bytes_per_elem", bytes_per_elem)
    return 2 * n_layers * batch_size * n_kv_heads * seq_len * head_dim * bytes_per_elem


class KVCache:
    """Preallocated keys and values for every layer of a decoder.

    Tensors ``keys`` and ``values`` have shape (n_layers, B, G, max_len, D).
    Each layer appends its new positions with :meth:`update`, which returns a
    view of the filled part (a strided slice when ``max_len`` is larger; the
    attention kernels read it without a copy). The cache refuses to grow past
    ``max_len``.

    The cache is for inference: it stores *detached* keys and values, so
    decoding with autograd on does not keep every earlier step's graph alive.
    Under autograd, :meth:`update` returns the cached positions as constants
    joined to the new positions with their gradient (a copy of the filled part).
    """

    def __init__(
        self,
        n_layers: int,
        batch_size: int,
        n_kv_heads: int,
        max_len: int,
        head_dim: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ):
        shape = self._checked_shape(n_layers, batch_size, n_kv_heads, max_len, head_dim, dtype)
        self.keys = torch.zeros(shape, dtype=dtype, device=device)
        self.values = torch.zeros(shape, dtype=dtype, device=device)
        self.lengths = [0] * shape[0]  # positions filled, per layer

    @property
    def n_layers(self) -> int:
        return self.keys.shape[0]

    @property
    def batch_size(self) -> int:
        return self.keys.shape[1]

    @property
    def n_kv_heads(self) -> int:
        return self.keys.shape[2]

    @property
    def max_len(self) -> int:
        return self.keys.shape[3]

    @property
    def head_dim(self) -> int:
        return self.keys.shape[4]

    @property
    def dtype(self) -> torch.dtype:
        return self.keys.dtype

    @property
    def device(self) -> torch.device:
        return self.keys.device

    @property
    def seq_len(self) -> int:
        """Positions stored in layer 0 (the position the next token will take)."""
        return self.lengths[0]

    @property
    def nbytes(self) -> int:
        """Bytes allocated for keys and values (all layers, the full ``max_len``)."""
        return self.keys.nbytes + self.values.nbytes

    @property
    def used_bytes(self) -> int:
        """Bytes of keys and values actually filled so far (all layers)."""
        per_position = 2 * self.batch_size * self.n_kv_heads * self.head_dim * self.keys.element_size()
        return per_position * sum(self.lengths)

    def check_aligned(self) -> int:
        """The common length of all layers; ValueError if the layers hold different lengths."""
        if len(set(self.lengths)) != 1:
            raise ValueError(
                f"the cache's layers hold different numbers of positions {self.lengths}; "
                "a model forward needs them equal (call truncate(n) to rewind every layer to n)"
            )
        return self.lengths[0]

    def truncate(self, length: int) -> None:
        """Rewind every layer to its first ``length`` positions (0 <= length <= the shortest layer)."""
        length = as_count("length", length, minimum=0)
        if length > min(self.lengths):
            raise ValueError(f"length={length} exceeds the positions held {self.lengths}")
        self.lengths = [length] * self.n_layers

    @contextmanager
    def rollback_on_error(self) -> Iterator["KVCache"]:
        """Restore every layer's length if the block raises (an exception, or KeyboardInterrupt).

        Positions past the restored lengths are never read, so the cache is
        exactly as it was before the block: a forward pass interrupted
        between layers cannot leave it half-updated.
        """
        saved = list(self.lengths)
        try:
            yield self
        except BaseException:
            self.lengths = saved
            raise

    @staticmethod
    def _checked_shape(n_layers, batch_size, n_kv_heads, max_len, head_dim, dtype) -> tuple[int, ...]:
        """(n_layers, batch_size, n_kv_heads, max_len, head_dim) as ints; ValueError naming a bad size or dtype.
        Shared by every cache class."""
        shape = (
            as_count("n_layers", n_layers),
            as_count("batch_size", batch_size),
            as_count("n_kv_heads", n_kv_heads),
            as_count("max_len", max_len),
            as_count("head_dim", head_dim),
        )
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating torch.dtype; got {dtype!r}")
        return shape

    def _checked_update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[int, int, int]:
        """Check an update of ``layer`` by k, v (B, G, T, D); return (layer, first, end) positions to write.

        Raises ValueError naming the bad value (layer, type, dtype, device, shape, overflow); shared by
        every cache class, so each accepts exactly the same updates.
        """
        layer = as_count("layer", layer, minimum=0)
        if layer >= self.n_layers:
            raise ValueError(f"layer must be in [0, {self.n_layers}); got {layer}")
        for name, t in (("k", k), ("v", v)):
            if not isinstance(t, torch.Tensor):
                raise ValueError(f"{name} must be a torch.Tensor; got {type(t).__name__}")
            if t.dtype != self.dtype:
                raise ValueError(f"{name} has dtype {t.dtype} but the cache holds {self.dtype}")
            if t.device != self.device:
                raise ValueError(f"{name} is on {t.device} but the cache is on {self.device}")
        expected = (self.batch_size, self.n_kv_heads, self.head_dim)
        if k.shape != v.shape or k.dim() != 4 or (k.shape[0], k.shape[1], k.shape[3]) != expected:
            raise ValueError(
                f"k and v must have shape (B={expected[0]}, G={expected[1]}, T, D={expected[2]}); "
                f"got k {tuple(k.shape)}, v {tuple(v.shape)}"
            )
        start, new = self.lengths[layer], k.shape[2]
        if start + new > self.max_len:
            raise ValueError(
                f"KV cache overflow: {start} cached + {new} new positions exceeds max_len={self.max_len}"
            )
        end = start + new
        return layer, start, end

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append k, v of shape (B, G, T, D) to ``layer``; return all cached (B, G, length, D).

        k and v must have the cache's dtype and device. Nothing is written
        unless every check passes.
        """
        layer, start, end = self._checked_update(layer, k, v)
        self.keys[layer, :, :, start:end] = k.detach()
        self.values[layer, :, :, start:end] = v.detach()
        self.lengths[layer] = end
        if torch.is_grad_enabled() and (k.requires_grad or v.requires_grad):
            # cached positions are constants; the new ones keep their gradient
            keys = torch.cat([self.keys[layer, :, :, :start], k], dim=2)  # (B, G, end, D)
            values = torch.cat([self.values[layer, :, :, :start], v], dim=2)  # (B, G, end, D)
            return keys, values
        return self.keys[layer, :, :, :end], self.values[layer, :, :, :end]

    def __repr__(self) -> str:
        L, B, G, T, D = self.keys.shape
        return (
            f"KVCache(n_layers={L}, batch_size={B}, n_kv_heads={G}, max_len={T}, head_dim={D}, "
            f"dtype={self.keys.dtype}, seq_len={self.seq_len}, nbytes={self.nbytes})"
        )
