"""Attention with G key/value heads shared by H query heads.

Shapes follow one convention everywhere in this library:

* ``B`` batch, ``H`` query heads, ``G`` key/value heads (groups),
  ``Tq`` query positions, ``Tk`` key positions, ``D`` head dimension.
* Groups are contiguous: query head ``h`` reads KV head ``h // (H // G)``
  (the Llama / Hugging Face / flash-attn convention).

``G == H`` is multi-head attention (MHA), ``G == 1`` is multi-query attention
(MQA), anything in between is grouped-query attention (GQA).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .kv_cache import KVCache

__all__ = [
    "grouped_attention",
    "repeat_kv_attention",
    "sdpa_attention",
    "GroupedQueryAttention",
    "ATTENTION_IMPLEMENTATIONS",
]


def _check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> None:
    """Raise ValueError naming the offending shape if q, k, v do not fit together."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 4:
            raise ValueError(f"{name} must have rank 4 (B, heads, T, D); got shape {tuple(t.shape)}")
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape; got k {tuple(k.shape)} and v {tuple(v.shape)}")
    if q.shape[0] != k.shape[0]:
        raise ValueError(f"batch size of q ({q.shape[0]}) differs from k/v ({k.shape[0]})")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"head dim of q ({q.shape[-1]}) differs from k/v ({k.shape[-1]})")
    n_heads, n_groups = q.shape[1], k.shape[1]
    if n_groups < 1 or n_heads % n_groups != 0:
        raise ValueError(
            f"number of query heads H={n_heads} must be a multiple of the number of KV heads G={n_groups}"
        )
    if causal and q.shape[2] > k.shape[2]:
        raise ValueError(
            f"causal attention needs Tq <= Tk (queries are the last Tq positions); got Tq={q.shape[2]}, Tk={k.shape[2]}"
        )


def causal_mask(n_queries: int, n_keys: int, device: torch.device | None = None) -> torch.Tensor:
    """Boolean (Tq, Tk) mask, True where a query may attend.

    The queries are the *last* ``n_queries`` of ``n_keys`` positions, so query
    ``i`` sits at absolute position ``n_keys - n_queries + i`` and sees keys
    ``0 .. n_keys - n_queries + i``.
    """
    offset = n_keys - n_queries
    rows = torch.arange(n_queries, device=device).unsqueeze(1)  # (Tq, 1)
    cols = torch.arange(n_keys, device=device).unsqueeze(0)  # (1, Tk)
    return cols <= rows + offset  # (Tq, Tk)


def grouped_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False
) -> torch.Tensor:
    """Scaled dot-product attention where G KV heads serve H query heads.

    q: (B, H, Tq, D); k, v: (B, G, Tk, D) with H % G == 0. Returns (B, H, Tq, D).

    K and V are never repeated: the H query heads are viewed as G groups of
    H/G rows, so each KV head is read from memory once per call and used by
    all H/G query heads of its group in one batched matrix product.
    With ``causal=True`` and Tq < Tk (decoding with a cache) the queries are
    the last Tq positions.
    """
    _check_qkv(q, k, v, causal)
    B, H, Tq, D = q.shape
    G, Tk = k.shape[1], k.shape[2]
    R = H // G  # query heads per KV head
    scale = 1.0 / math.sqrt(D)
    # (B, H, Tq, D) -> (B, G, R*Tq, D): heads g*R .. g*R+R-1 stack as rows of group g
    q_grouped = q.reshape(B, G, R * Tq, D)
    if Tq == 1 and q.device.type == "cpu" and q.dtype == torch.float32:
        # Decoding in fp32 on a CPU: computing the scores key-major,
        # K (Tk, D) @ q^T (D, R), streams each K row through a dot product,
        # up to several times faster on CPU BLAS than q (R, D) @ K^T (measured
        # with `python -m gqa_lib.bench attention`; in bf16 the usual
        # orientation below is the faster one). The arithmetic is the same.
        scores = torch.matmul(k, (q_grouped * scale).transpose(-2, -1))  # (B, G, Tk, R)
        scores = scores.transpose(-2, -1).contiguous()  # (B, G, R, Tk)
    else:
        scores = torch.matmul(q_grouped, k.transpose(-2, -1)) * scale  # (B, G, R*Tq, Tk)
    if causal and Tq > 1:
        allowed = causal_mask(Tq, Tk, device=q.device)  # (Tq, Tk): the last Tq of Tk positions
        scores = scores.view(B, G, R, Tq, Tk).masked_fill(~allowed, float("-inf")).view(B, G, R * Tq, Tk)
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(v.dtype)  # (B, G, R*Tq, Tk)
    out = torch.matmul(weights, v)  # (B, G, R*Tq, D)
    return out.view(B, H, Tq, D)


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """Copy each of the G KV heads n_rep times: (B, G, T, D) -> (B, G*n_rep, T, D)."""
    B, G, T, D = x.shape
    if n_rep == 1:
        return x
    # (B, G, T, D) -> (B, G, n_rep, T, D) -> (B, G*n_rep, T, D); the reshape copies
    return x[:, :, None, :, :].expand(B, G, n_rep, T, D).reshape(B, G * n_rep, T, D)


def repeat_kv_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False
) -> torch.Tensor:
    """Textbook GQA: repeat K/V up to H heads, then run plain multi-head attention.

    Same contract as :func:`grouped_attention`. It materialises H heads of K
    and V, so it reads and writes H/G times more KV bytes; kept as the
    reference the fast path is tested against, and for benchmarks.
    """
    _check_qkv(q, k, v, causal)
    H, G = q.shape[1], k.shape[1]
    k_full = repeat_kv(k, H // G)  # (B, H, Tk, D)
    v_full = repeat_kv(v, H // G)  # (B, H, Tk, D)
    scores = q @ k_full.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (B, H, Tq, Tk)
    if causal:
        scores = scores.masked_fill(~causal_mask(q.shape[2], k.shape[2], q.device), float("-inf"))
    return torch.softmax(scores, dim=-1, dtype=torch.float32).to(v.dtype) @ v_full  # (B, H, Tq, D)


def sdpa_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False
) -> torch.Tensor:
    """PyTorch's fused ``scaled_dot_product_attention`` with ``enable_gqa=True``.

    Same contract as :func:`grouped_attention`. With Tq < Tk and causal, an
    explicit bottom-right-aligned mask is passed (``is_causal`` aligns top-left).
    """
    _check_qkv(q, k, v, causal)
    Tq, Tk = q.shape[2], k.shape[2]
    if not causal or Tq == 1:
        return F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
    if Tq == Tk:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    mask = causal_mask(Tq, Tk, q.device)  # (Tq, Tk)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)


ATTENTION_IMPLEMENTATIONS = {
    "grouped": grouped_attention,
    "repeat_kv": repeat_kv_attention,
    "sdpa": sdpa_attention,
}


def check_head_counts(d_model: int, n_heads: int, n_kv_heads: int) -> None:
    """Raise ValueError naming the value if the head counts cannot form GQA."""
    if n_heads < 1:
        raise ValueError(f"n_heads must be >= 1; got {n_heads}")
    if d_model % n_heads != 0:
        raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads}")
    if not 1 <= n_kv_heads <= n_heads:
        raise ValueError(f"n_kv_heads must be between 1 and n_heads={n_heads}; got {n_kv_heads}")
    if n_heads % n_kv_heads != 0:
        raise ValueError(f"n_heads={n_heads} must be divisible by n_kv_heads={n_kv_heads}")


class GroupedQueryAttention(nn.Module):
    """Causal self-attention with ``n_kv_heads`` key/value heads.

    ``n_kv_heads == n_heads`` is MHA, ``n_kv_heads == 1`` is MQA. Submodules
    use Hugging Face Llama names (``q_proj``, ``k_proj``, ``v_proj``,
    ``o_proj``), so checkpoints map one to one. ``k_proj``/``v_proj`` map
    d_model to ``n_kv_heads * head_dim``: the saving is in the weights and,
    above all, in the KV cache, which stores only ``n_kv_heads`` heads.

    ``impl`` picks the attention kernel: ``"grouped"`` (default, no K/V
    copies), ``"repeat_kv"`` (textbook) or ``"sdpa"`` (PyTorch fused).
    """

    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int, bias: bool = False, impl: str = "grouped"):
        super().__init__()
        check_head_counts(d_model, n_heads, n_kv_heads)
        if impl not in ATTENTION_IMPLEMENTATIONS:
            raise ValueError(f"impl must be one of {sorted(ATTENTION_IMPLEMENTATIONS)}; got {impl!r}")
        self.d_model = d_model
        self.n_heads = n_heads
        self.n_kv_heads = n_kv_heads
        self.head_dim = d_model // n_heads
        self.impl = impl
        self.q_proj = nn.Linear(d_model, n_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(d_model, n_kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(d_model, n_kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(n_heads * self.head_dim, d_model, bias=bias)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        """x: (B, T, d_model) -> (B, T, d_model), causal.

        With a ``cache``, the T new positions' keys and values are appended to
        layer ``layer`` of the cache and the queries attend to everything
        cached so far (incremental decoding).
        """
        if x.dim() != 3 or x.shape[-1] != self.d_model:
            raise ValueError(f"x must have shape (B, T, d_model={self.d_model}); got {tuple(x.shape)}")
        B, T, _ = x.shape
        # (B, T, H*D) -> (B, T, H, D) -> (B, H, T, D)
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        # (B, T, G*D) -> (B, T, G, D) -> (B, G, T, D)
        k = self.k_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        if cache is not None:
            k, v = cache.update(layer, k, v)  # (B, G, Tk, D) with Tk = cached + T
        out = ATTENTION_IMPLEMENTATIONS[self.impl](q, k, v, causal=True)  # (B, H, T, D)
        # (B, H, T, D) -> (B, T, H, D) -> (B, T, H*D)
        out = out.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim)
        return self.o_proj(out)

    def extra_repr(self) -> str:
        return f"n_heads={self.n_heads}, n_kv_heads={self.n_kv_heads}, head_dim={self.head_dim}, impl={self.impl!r}"
