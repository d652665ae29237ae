"""Measurements of attention heads that explain what mean-pooling does to them (chapter 6).

Mean-pooling the K (or V) projections of a group of heads is the same as
averaging those heads' key (or value) vectors, token by token, because the
projection is linear: ``mean_h(W_h) x = mean_h(W_h x)``. So whether pooling
keeps a head's information depends on how close the heads' outputs are *in
the same coordinates*. This module measures that on real tokens:

* :func:`head_projections`: every head's query, key and value vectors on some tokens;
* :func:`cosine_matrix`: coordinate-wise similarity of two heads' outputs
  (what pooling needs, and what a change of basis destroys);
* :func:`linear_cka_matrix`: linear CKA (Kornblith et al. 2019), similarity up
  to a rotation and scale: "do two heads carry the same information at all?";
* :func:`pooling_distance`, :func:`mean_pooling_error`, :func:`pooled_norm_ratio`:
  what averaging a group loses, and how much it shrinks the vectors;
* :func:`similar_head_order`: a grouping of the heads that pools alike heads;
* :func:`attention_maps`: the attention weights of every head.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import nn

from ..checks import as_count
from ..core.attention import GroupedQueryAttention, causal_mask
from ..core.rope import apply_rope

__all__ = [
    "head_projections",
    "cosine_matrix",
    "linear_cka_matrix",
    "weight_cosine_matrix",
    "pooling_distance",
    "mean_pooling_error",
    "pooled_norm_ratio",
    "similar_head_order",
    "attention_maps",
]

_EXHAUSTIVE_LIMIT = 100_000  # partitions searched exhaustively; above this, a greedy grouping


def _attention_layers(model: nn.Module) -> list[GroupedQueryAttention]:
    layers = [m for m in model.modules() if isinstance(m, GroupedQueryAttention)]
    if not layers:
        raise ValueError("model has no GroupedQueryAttention layers")
    return layers


def _run_hooked(model: nn.Module, tokens: torch.Tensor, hooks: list, batch_size: int) -> None:
    """Run ``model`` over ``tokens`` in batches, in eval mode, for its forward ``hooks``; then remove them.

    The model's train/eval mode is restored, whatever happens.
    """
    was_training = model.training
    model.eval()
    try:
        for start in range(0, tokens.shape[0], batch_size):
            model(tokens[start : start + batch_size])
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)


@torch.no_grad()
def head_projections(model: nn.Module, tokens: torch.Tensor, batch_size: int = 64) -> list[dict]:
    """Each head's q, k and v vectors on ``tokens`` (B, T): one dict per attention layer.

    Returns ``[{"q": (H, N, D), "k": (G, N, D), "v": (G, N, D)}, ...]`` in
    float64, N = B * T positions (position n = b * T + t), before RoPE, as the
    projections write them. RoPE turns all heads' vectors at one position by the
    same angles, so cosines between heads (:func:`cosine_matrix`) are the same
    after it; linear CKA (:func:`linear_cka_matrix`) is not, because RoPE turns
    each position by different angles.
    """
    batch_size = as_count("batch_size", batch_size)
    layers = _attention_layers(model)
    store: dict[tuple[int, str], list[torch.Tensor]] = {}
    hooks = []
    for i, attn in enumerate(layers):
        for name in ("q", "k", "v"):
            proj = getattr(attn, f"{name}_proj")
            hooks.append(proj.register_forward_hook(
                lambda mod, inp, out, key=(i, name): store.setdefault(key, []).append(out.detach())
            ))
    _run_hooked(model, tokens, hooks, batch_size)
    result = []
    for i, attn in enumerate(layers):
        entry = {}
        for name in ("q", "k", "v"):
            out = torch.cat(store[(i, name)]).double()  # (B, T, heads*D)
            heads = out.shape[-1] // attn.head_dim
            # (B, T, heads*D) -> (N, heads, D) -> (heads, N, D)
            entry[name] = out.reshape(-1, heads, attn.head_dim).transpose(0, 1).contiguous()
        result.append(entry)
    return result


def _check_heads(x: torch.Tensor, name: str = "x") -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 3 or min(x.shape) == 0:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a non-empty (heads, N, D) tensor; got {shape}")


def cosine_matrix(x: torch.Tensor) -> torch.Tensor:
    """(heads, heads) cosine between heads' outputs x: (heads, N, D), each flattened over tokens and coordinates.

    1 means one head's vectors are a positive multiple of the other's, token
    by token; a head and its negation (an equally good head) score -1.
    """
    _check_heads(x)
    flat = x.reshape(x.shape[0], -1).double()  # (heads, N*D)
    flat = flat / flat.norm(dim=1, keepdim=True).clamp_min(1e-300)
    return flat @ flat.T


def linear_cka_matrix(x: torch.Tensor) -> torch.Tensor:
    """(heads, heads) linear CKA between heads' outputs x: (heads, N, D).

    CKA(X, Y) = ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F) with Xc, Yc
    centred over the N tokens: 1 when Y is a rotation (or scaled rotation)
    of X, whatever the basis; near 0 for unrelated representations.
    """
    _check_heads(x)
    xc = (x - x.mean(dim=1, keepdim=True)).double()  # (heads, N, D), centred per coordinate
    cross = torch.einsum("hnd,gne->hgde", xc, xc)  # (heads, heads, D, D): Xh^T Xg
    hsic = cross.pow(2).sum(dim=(-2, -1))  # (heads, heads): ||Xh^T Xg||_F^2
    self_norm = hsic.diagonal().sqrt()  # (heads,): ||Xh^T Xh||_F
    return hsic / (self_norm[:, None] * self_norm[None, :]).clamp_min(1e-300)


def weight_cosine_matrix(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """(heads, heads) cosine between the heads' blocks of a projection weight (n_heads * D, d_in)."""
    n_heads = as_count("n_heads", n_heads)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or weight.shape[0] % n_heads:
        raise ValueError(f"weight must be (n_heads * D, d_in) with n_heads={n_heads}; got {getattr(weight, 'shape', weight)}")
    return cosine_matrix(weight.detach().reshape(n_heads, weight.shape[0] // n_heads, -1))  # (H, D, d_in) blocks


def pooling_distance(x: torch.Tensor) -> torch.Tensor:
    """(heads, heads) squared distance between heads' outputs, in units of the mean squared norm of a head.

    d_ij = ||x_i - x_j||^2 / mean_h ||x_h||^2 over all tokens and coordinates.
    The loss of replacing a group by its mean is a sum of these (see
    :func:`mean_pooling_error`); 2 is the distance of two unrelated heads
    of equal norm, 0 of identical ones.
    """
    _check_heads(x)
    flat = x.reshape(x.shape[0], -1).double()  # (heads, N*D)
    sq = flat.pow(2).sum(dim=1)  # (heads,)
    dist = (sq[:, None] + sq[None, :] - 2 * flat @ flat.T).clamp_min(0)
    return dist / sq.mean().clamp_min(1e-300)


def _groups_of(order, n_groups: int) -> list[list[int]]:
    order = [int(h) for h in order]
    n_groups = as_count("n_groups", n_groups)
    if len(order) % n_groups:
        raise ValueError(f"{len(order)} heads do not split into n_groups={n_groups} equal groups")
    R = len(order) // n_groups
    return [order[g * R : (g + 1) * R] for g in range(n_groups)]


def mean_pooling_error(x: torch.Tensor, n_groups: int, order=None) -> float:
    """Fraction of the heads' squared norm lost when each group is replaced by its mean.

    sum_h ||x_h - mean_group(h)||^2 / sum_h ||x_h||^2 for x: (heads, N, D),
    groups of consecutive heads in ``order`` (default 0, 1, ..., heads-1).
    0: the heads of each group were identical; 1 - 1/R for R unrelated
    heads of equal norm (their mean is nearly zero).
    """
    _check_heads(x)
    order = list(range(x.shape[0])) if order is None else order
    lost = 0.0
    for group in _groups_of(order, n_groups):
        members = x[group].double()  # (R, N, D)
        lost += float((members - members.mean(dim=0, keepdim=True)).pow(2).sum())
    return lost / float(x.double().pow(2).sum())


def pooled_norm_ratio(x: torch.Tensor, n_groups: int, order=None) -> float:
    """RMS norm of the pooled heads' vectors over the RMS norm of the original heads' (x: (heads, N, D)).

    1 when the heads of each group agree; about 1/sqrt(R) when they are
    unrelated (R heads per group): the pooled keys are shorter, so the
    attention scores q.k shrink and the attention pattern flattens.
    """
    _check_heads(x)
    order = list(range(x.shape[0])) if order is None else order
    pooled = torch.stack([x[g].double().mean(dim=0) for g in _groups_of(order, n_groups)])  # (G, N, D)
    return math.sqrt(float(pooled.pow(2).mean()) / float(x.double().pow(2).mean()))


def _partitions(heads: list[int], size: int):
    """Every split of ``heads`` into groups of ``size`` (groups listed by their smallest head)."""
    if not heads:
        yield []
        return
    first, rest = heads[0], heads[1:]
    for companions in itertools.combinations(rest, size - 1):
        remaining = [h for h in rest if h not in companions]
        for tail in _partitions(remaining, size):
            yield [[first, *companions], *tail]


def similar_head_order(distance: torch.Tensor, n_groups: int) -> list[int]:
    """An order of the heads whose consecutive groups hold heads close to each other.

    distance: (H, H) symmetric (e.g. :func:`pooling_distance` of the keys
    plus that of the values). Minimises the sum of within-group distances
    (for mean pooling, exactly the squared error of replacing each head by
    its group's mean): over every partition into ``n_groups`` equal groups
    when there are at most 100,000 of them (H = 8: at most 105), else
    greedily (each group grows from the lowest free head by its nearest free
    heads). Groups are listed by their smallest head, heads in increasing order.
    """
    if not isinstance(distance, torch.Tensor) or distance.dim() != 2 or distance.shape[0] != distance.shape[1]:
        raise ValueError(f"distance must be a square (H, H) tensor; got {getattr(distance, 'shape', distance)}")
    H = distance.shape[0]
    n_groups = as_count("n_groups", n_groups)
    if H % n_groups:
        raise ValueError(f"n_groups={n_groups} must divide the H={H} heads")
    R = H // n_groups
    d = distance.double()
    n_partitions = math.factorial(H) // (math.factorial(R) ** n_groups * math.factorial(n_groups))

    def cost(groups):
        return sum(float(d[i, j]) for g in groups for i, j in itertools.combinations(g, 2))

    if n_partitions <= _EXHAUSTIVE_LIMIT:
        best = min(_partitions(list(range(H)), R), key=cost)
    else:
        free, best = list(range(H)), []
        while free:
            seed = free[0]
            group = [seed, *sorted(free[1:], key=lambda h: float(d[seed, h]))[: R - 1]]
            best.append(sorted(group))
            free = [h for h in free if h not in group]
    return [h for group in sorted(best) for h in sorted(group)]


@torch.no_grad()
def attention_maps(model: nn.Module, tokens: torch.Tensor) -> list[torch.Tensor]:
    """The causal attention weights of every head: one (B, H, T, T) float32 tensor per attention layer.

    Recomputed from each layer's input and RoPE angles (captured with forward
    hooks on a normal forward pass of ``model`` over ``tokens``), with the
    layer's own projections; row t holds where position t looks.
    """
    layers = _attention_layers(model)
    captured: dict[int, tuple] = {}
    hooks = [
        attn.register_forward_hook(
            lambda mod, args, kwargs, out, i=i: captured.__setitem__(i, (args[0], kwargs.get("position_embeddings"))),
            with_kwargs=True,
        )
        for i, attn in enumerate(layers)
    ]
    _run_hooked(model, tokens, hooks, tokens.shape[0])
    maps = []
    for i, attn in enumerate(layers):
        x, rope = captured[i]
        B, T, _ = x.shape
        H, G, D = attn.n_heads, attn.n_kv_heads, attn.head_dim
        q = attn.q_proj(x).view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
        k = attn.k_proj(x).view(B, T, G, D).transpose(1, 2)  # (B, G, T, D)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        k = k.repeat_interleave(H // G, dim=1)  # (B, H, T, D): query head h reads KV head h // (H/G)
        scores = (q.float() @ k.float().transpose(-2, -1)) / math.sqrt(D)  # (B, H, T, T)
        scores = scores.masked_fill(~causal_mask(T, T, x.device), float("-inf"))
        maps.append(torch.softmax(scores, dim=-1))
    return maps
