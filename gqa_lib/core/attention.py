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

from ..checks import as_count, as_kv_heads
from .kv_cache import KVCache
from .rope import apply_rope

__all__ = [
    "attend_heads",
    "check_layer_input",
    "grouped_attention",
    "grouped_matmul_attention",
    "repeat_kv",
    "repeat_kv_attention",
    "sdpa_attention",
    "GroupedQueryAttention",
    "ATTENTION_IMPLEMENTATIONS",
]


def _check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> None:
    """Raise ValueError naming the offending tensor if q, k, v do not fit together.

    Checks types, rank, dtypes (one floating dtype for all three), devices,
    and the shapes (B, H, Tq, D) and (B, G, Tk, D) with H % G == 0, D >= 1, Tk >= 1.
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor; got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{name} must have rank 4 (B, heads, T, D); got shape {tuple(t.shape)}")
        if not t.is_floating_point():
            raise ValueError(f"{name} must have a floating dtype; got {t.dtype}")
    if not q.dtype == k.dtype == v.dtype:
        raise ValueError(f"q, k and v must share one dtype; got q {q.dtype}, k {k.dtype}, v {v.dtype}")
    if not q.device == k.device == v.device:
        raise ValueError(f"q, k and v must be on one device; got q {q.device}, k {k.device}, v {v.device}")
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape; got k {tuple(k.shape)} and v {tuple(v.shape)}")
    if q.shape[0] != k.shape[0]:
        raise ValueError(f"batch size of q ({q.shape[0]}) differs from k/v ({k.shape[0]})")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"head dim of q ({q.shape[-1]}) differs from k/v ({k.shape[-1]})")
    if q.shape[-1] == 0:
        raise ValueError(f"head dim D must be >= 1; got q {tuple(q.shape)}")
    if k.shape[2] == 0:
        raise ValueError(f"k and v hold no positions (Tk=0); got k {tuple(k.shape)}")
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


def _softmax_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp16/bf16 scores take their softmax in fp32; fp32 and fp64 keep their own precision."""
    return torch.promote_types(dtype, torch.float32)


def grouped_matmul_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False
) -> torch.Tensor:
    """Grouped-query attention written out as two batched matrix products (the teaching path).

    q: (B, H, Tq, D); k, v: (B, G, Tk, D) with H % G == 0. Returns (B, H, Tq, D)
    in q's dtype. K and V are never repeated: the H query heads are viewed as G
    groups of R = H/G rows, so each KV head is read once per call and serves
    all R query heads of its group in one product. With ``causal=True`` the
    queries are the last Tq of the Tk positions (decoding with a cache).

    The queries are scaled by 1/sqrt(D) *before* the product, so a score that
    fits the dtype after scaling never overflows on the way (fp16's largest
    value is 65504); fp16/bf16 take the softmax in fp32, fp32/fp64 in their
    own precision. :func:`grouped_attention` computes the same thing with
    PyTorch's fused kernel; tests hold the two equal.
    """
    _check_qkv(q, k, v, causal)
    B, H, Tq, D = q.shape
    G, Tk = k.shape[1], k.shape[2]
    R = H // G  # query heads per KV head
    # (B, H, Tq, D) -> (B, G, R*Tq, D): heads g*R .. g*R+R-1 stack as rows of group g
    q_grouped = q.reshape(B, G, R * Tq, D) * (1.0 / math.sqrt(D))
    scores = torch.matmul(q_grouped, k.transpose(-2, -1))  # (B, G, R*Tq, Tk)
    if causal and Tq > 1:
        allowed = causal_mask(Tq, Tk, device=q.device)  # (Tq, Tk): the last Tq of Tk positions
        # (B, G, R*Tq, Tk) -> (B, G, R, Tq, Tk) to mask each head's Tq rows alike
        scores = scores.view(B, G, R, Tq, Tk).masked_fill(~allowed, float("-inf")).view(B, G, R * Tq, Tk)
    weights = torch.softmax(scores, dim=-1, dtype=_softmax_dtype(q.dtype)).to(v.dtype)  # (B, G, R*Tq, Tk)
    out = torch.matmul(weights, v)  # (B, G, R*Tq, D)
    return out.view(B, H, Tq, D)


def grouped_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False
) -> torch.Tensor:
    """Scaled dot-product attention where G KV heads serve H query heads: the library's fast path.

    q: (B, H, Tq, D); k, v: (B, G, Tk, D) with H % G == 0. Returns (B, H, Tq, D).
    Same contract and result as :func:`grouped_matmul_attention`, computed by
    PyTorch's fused ``scaled_dot_product_attention`` (no scores tensor in
    memory, softmax fused with both products):

    * Decoding (Tq = 1) and non-causal calls fold each group's R = H/G query
      heads into the query rows, (B, H, Tq, D) -> (B, G, R*Tq, D), and hand
      that to the fused kernel with the G KV heads as its heads. Each KV head
      is read once, by one fused kernel, with no copy of K or V; this is what
      FlashAttention-3 calls PackGQA and FlashDecoding does on GPUs. K and V
      may be strided views (a slice of a longer cache).
    * Causal prefill (Tq > 1) passes ``is_causal`` (Tq = Tk) or a
      bottom-right-aligned mask (Tq < Tk) with ``enable_gqa=True``: the
      fastest of the options measured by ``python -m gqa_lib.speed.bench prefill-kernels``.
    """
    _check_qkv(q, k, v, causal)
    B, H, Tq, D = q.shape
    G, Tk = k.shape[1], k.shape[2]
    if Tq == 1 or not causal:
        R = H // G  # query heads per KV head
        q_folded = q.reshape(B, G, R * Tq, D)  # (B, H, Tq, D) -> (B, G, R*Tq, D); contiguous q: a view
        out = F.scaled_dot_product_attention(q_folded, k, v)  # (B, G, R*Tq, D)
        return out.reshape(B, H, Tq, D)  # (B, G, R*Tq, D) -> (B, H, Tq, D)
    if Tq == Tk:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=G != H)
    allowed = causal_mask(Tq, Tk, device=q.device)  # (Tq, Tk): the last Tq of Tk positions
    return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, enable_gqa=G != H)


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
    scores = (q * (1.0 / math.sqrt(q.shape[-1]))) @ k_full.transpose(-2, -1)  # (B, H, Tq, Tk), scaled first
    if causal:
        scores = scores.masked_fill(~causal_mask(q.shape[2], k.shape[2], q.device), float("-inf"))
    weights = torch.softmax(scores, dim=-1, dtype=_softmax_dtype(q.dtype)).to(v.dtype)  # (B, H, Tq, Tk)
    return weights @ v_full  # (B, H, Tq, D)


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
    "grouped_matmul": grouped_matmul_attention,
    "repeat_kv": repeat_kv_attention,
    "sdpa": sdpa_attention,
}


def check_head_counts(d_model: int, n_heads: int, n_kv_heads: int) -> tuple[int, int, int]:
    """(d_model, n_heads, n_kv_heads) as ints; ValueError naming the value if they cannot form GQA.

    All three must be true integers >= 1 (not bools or floats).
    """
    d_model = as_count("d_model", d_model)
    n_heads = as_count("n_heads", n_heads)
    if d_model % n_heads != 0:
        raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads}")
    return d_model, n_heads, as_kv_heads(n_heads, n_kv_heads)


def check_layer_input(x: torch.Tensor, d_model: int) -> None:
    """ValueError naming the shape unless x is (B, T, d_model) with T >= 1."""
    if not isinstance(x, torch.Tensor) or x.dim() != 3 or x.shape[-1] != d_model:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must have shape (B, T, d_model={d_model}); got {shape}")
    if x.shape[1] == 0:
        raise ValueError(f"x holds no positions (T=0); got shape {tuple(x.shape)}")


def attend_heads(
    x: torch.Tensor, q_proj: nn.Module, k_proj: nn.Module, v_proj: nn.Module, n_heads: int, n_kv_heads: int,
    head_dim: int, impl: str = "grouped", cache=None, layer: int = 0,
    position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """The heads of an attention layer, before its output projection: x (B, T, d_model) -> (B, T, n_heads*head_dim).

    Projects x to ``n_heads`` query heads and ``n_kv_heads`` K/V heads, rotates
    queries and keys by ``position_embeddings`` (RoPE), appends the new keys
    and values to ``cache`` (which then stores rotated keys) and attends
    causally with ``ATTENTION_IMPLEMENTATIONS[impl]``. Shared by
    :class:`GroupedQueryAttention` and the shards of
    :mod:`gqa_lib.speed.tensor_parallel`, which hold some of a layer's heads.
    """
    B, T, _ = x.shape
    # (B, T, H*D) -> (B, T, H, D) -> (B, H, T, D)
    q = q_proj(x).view(B, T, n_heads, head_dim).transpose(1, 2)
    # (B, T, G*D) -> (B, T, G, D) -> (B, G, T, D)
    k = k_proj(x).view(B, T, n_kv_heads, head_dim).transpose(1, 2)
    v = v_proj(x).view(B, T, n_kv_heads, head_dim).transpose(1, 2)
    if position_embeddings is not None:
        cos, sin = position_embeddings  # (T, D) each: the same rotation for every head
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)  # the cache stores rotated keys
    if cache is not None:
        k, v = cache.update(layer, k, v)  # (B, G, Tk, D) with Tk = cached + T
    out = ATTENTION_IMPLEMENTATIONS[impl](q, k, v, causal=True)  # (B, H, T, D)
    # (B, H, T, D) -> (B, T, H, D) -> (B, T, H*D)
    return out.transpose(1, 2).reshape(B, T, n_heads * head_dim)


class GroupedQueryAttention(nn.Module):
    """Causal self-attention with ``n_kv_heads`` key/value heads.

    ``n_kv_heads == n_heads`` is MHA, ``n_kv_heads == 1`` is MQA. Submodules
    use Hugging Face Llama names (``q_proj``, ``k_proj``, ``v_proj``,
    ``o_proj``), so checkpoints map one to one. ``k_proj``/``v_proj`` map
    d_model to ``n_kv_heads * head_dim``: the saving is in the weights and,
    above all, in the KV cache, which stores only ``n_kv_heads`` heads.

    ``impl`` picks the attention kernel: ``"grouped"`` (default: the fused
    kernel over folded groups, no K/V copies), ``"grouped_matmul"`` (the same
    written as two matrix products), ``"repeat_kv"`` (textbook copy) or
    ``"sdpa"`` (PyTorch's ``enable_gqa=True``).
    """

    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int, bias: bool = False, impl: str = "grouped"):
        super().__init__()
        d_model, n_heads, n_kv_heads = check_head_counts(d_model, n_heads, n_kv_heads)
        if not isinstance(bias, bool):
            raise ValueError(f"bias must be True or False; got {bias!r}")
        if not isinstance(impl, str) or impl not in ATTENTION_IMPLEMENTATIONS:
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

    def forward(
        self,
        x: torch.Tensor,
        cache: KVCache | None = None,
        layer: int = 0,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """x: (B, T, d_model) -> (B, T, d_model), causal.

        ``position_embeddings``: the RoPE (cos, sin) of the T positions, two
        (T, head_dim) tensors (see :func:`gqa_lib.core.rope.rope_cos_sin`); queries
        and keys are rotated by them before attention. None: no positions.
        With a ``cache``, the T new positions' keys (already rotated) and
        values are appended to layer ``layer`` of the cache and the queries
        attend to everything cached so far (incremental decoding).
        """
        check_layer_input(x, self.d_model)
        if cache is not None:
            layer = as_count("layer", layer, minimum=0)
        heads = attend_heads(x, self.q_proj, self.k_proj, self.v_proj, self.n_heads, self.n_kv_heads, self.head_dim,
                             self.impl, cache, layer, position_embeddings)  # (B, T, H*D)
        return self.o_proj(heads)

    def extra_repr(self) -> str:
        return f"n_heads={self.n_heads}, n_kv_heads={self.n_kv_heads}, head_dim={self.head_dim}, impl={self.impl!r}"
