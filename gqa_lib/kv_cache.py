"""The KV cache: keys and values of past positions, kept for decoding.

Only the ``n_kv_heads`` heads that the attention actually computes are
stored, so a GQA model with G KV heads holds G/H of a multi-head model's cache.
"""

from __future__ import annotations

import torch

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
    The default of 2 bytes per element is fp16/bf16.
    """
    for name, value in (
        ("n_layers", n_layers),
        ("n_kv_heads", n_kv_heads),
        ("head_dim", head_dim),
        ("batch_size", batch_size),
        ("bytes_per_elem", bytes_per_elem),
    ):
        if int(value) != value or value < 1:
            raise ValueError(f"{name} must be a positive integer; got {value!r}")
    if int(seq_len) != seq_len or seq_len < 0:
        raise ValueError(f"seq_len must be a non-negative integer; got {seq_len!r}")
    return 2 * n_layers * batch_size * n_kv_heads * seq_len * head_dim * bytes_per_elem


class KVCache:
    """Preallocated keys and values for every layer of a decoder.

    Tensors ``keys`` and ``values`` have shape (n_layers, B, G, max_len, D).
    Each layer appends its new positions with :meth:`update`; the cache
    refuses to grow past ``max_len``.
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
        for name, value in (
            ("n_layers", n_layers),
            ("batch_size", batch_size),
            ("n_kv_heads", n_kv_heads),
            ("max_len", max_len),
            ("head_dim", head_dim),
        ):
            if value < 1:
                raise ValueError(f"{name} must be >= 1; got {value}")
        shape = (n_layers, batch_size, n_kv_heads, max_len, head_dim)
        self.keys = torch.zeros(shape, dtype=dtype, device=device)
        self.values = torch.zeros(shape, dtype=dtype, device=device)
        self.lengths = [0] * n_layers  # positions filled, per layer

    @property
    def n_layers(self) -> int:
        return self.keys.shape[0]

    @property
    def n_kv_heads(self) -> int:
        return self.keys.shape[2]

    @property
    def max_len(self) -> int:
        return self.keys.shape[3]

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
        per_position = 2 * self.keys.shape[1] * self.n_kv_heads * self.keys.shape[4] * self.keys.element_size()
        return per_position * sum(self.lengths)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append k, v of shape (B, G, T, D) to ``layer``; return all cached (B, G, length, D)."""
        if not 0 <= layer < self.n_layers:
            raise ValueError(f"layer must be in [0, {self.n_layers}); got {layer}")
        expected = (self.keys.shape[1], self.n_kv_heads, self.keys.shape[4])
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
        self.keys[layer, :, :, start:end] = k
        self.values[layer, :, :, start:end] = v
        self.lengths[layer] = end
        return self.keys[layer, :, :, :end], self.values[layer, :, :, :end]

    def __repr__(self) -> str:
        L, B, G, T, D = self.keys.shape
        return (
            f"KVCache(n_layers={L}, batch_size={B}, n_kv_heads={G}, max_len={T}, head_dim={D}, "
            f"dtype={self.keys.dtype}, seq_len={self.seq_len}, nbytes={self.nbytes})"
        )
