"""Rotary position embeddings (RoPE; Su et al. 2021), in the convention of Hugging Face's Llama.

A head's query and key vectors of dimension D are split into two halves,
``x = [x1, x2]`` with ``x1 = x[:D/2]``; pair ``i`` (``x1[i]``, ``x2[i]``) is
rotated by the angle ``position * theta ** (-2i / D)``. Rotating both the
query at position m and the key at position n makes their dot product depend
on the offset m - n only, so attention sees relative positions, and a key
rotated once, when it is written into the KV cache, never needs rotating again.

Values are not rotated. The rotation is the same for every head, which is why
mean-pooling K projections commutes with it (chapter 6).
"""

from __future__ import annotations

import torch

from ..checks import as_count, as_positive_float

__all__ = ["rope_inverse_frequencies", "rope_cos_sin", "rotate_half", "apply_rope"]


def rope_inverse_frequencies(head_dim: int, theta: float = 10000.0) -> torch.Tensor:
    """Angular frequency of each rotated pair, radians per position: (head_dim / 2,) float32.

    ``head_dim`` must be even (pairs of coordinates rotate together).
    """
    head_dim = as_count("head_dim", head_dim)
    theta = as_positive_float("theta", theta)
    if head_dim % 2:
        raise ValueError(f"RoPE needs an even head_dim (coordinates rotate in pairs); got head_dim={head_dim}")
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim  # (D/2,): 2i / D
    return 1.0 / (theta**exponents)


def rope_cos_sin(
    positions: torch.Tensor, head_dim: int, theta: float = 10000.0, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of every position's angles: two (T, head_dim) tensors of ``dtype``.

    positions: (T,) integer positions. Angles are computed in float32 (as
    Hugging Face does) and each half of the head uses the same angles.
    """
    if not isinstance(positions, torch.Tensor) or positions.dim() != 1:
        raise ValueError(f"positions must be a 1-D tensor of positions; got {positions!r}")
    inv_freq = rope_inverse_frequencies(head_dim, theta).to(positions.device)  # (D/2,)
    angles = positions.float()[:, None] * inv_freq[None, :]  # (T, D/2), radians
    angles = torch.cat((angles, angles), dim=-1)  # (T, D): pair i is (i, i + D/2)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """[x1, x2] -> [-x2, x1] on the last dimension: a quarter turn of every pair."""
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate queries or keys x: (B, heads, T, D) by the angles of their positions (cos, sin: (T, D))."""
    return x * cos + rotate_half(x) * sin
