"""Convert a multi-head checkpoint into a grouped-query one (Ainslie et al. 2023, section 2.1).

The query and output projections stay as they are; only the key and value
projections shrink from H heads (or the current G0 KV heads) to
``n_kv_heads = G``. Groups are contiguous, the convention of
:func:`gqa_lib.grouped_attention`: KV head ``g`` serves query heads
``g*H/G .. (g+1)*H/G - 1``, so it is built from exactly those heads' K and V
projections. Three ways to build it, the paper's recipe and its two ablations:

* ``"mean"``: the mean of the group's K (and V) projection rows (the paper's recipe);
* ``"first"``: the first head of each group, the others dropped;
* ``"random"``: fresh random K/V projections (seeded), like training them from scratch.

Which heads share a group is a choice too. The paper groups heads by index
(``grouping="contiguous"``). ``grouping="similar"`` first reorders the heads
of each layer so that heads whose keys and values are most alike on some
calibration tokens end up in one group; reordering the heads of a multi-head
layer (their Q, K, V rows and the matching O columns together) leaves the
model's function exactly unchanged, so only the pooling sees the new order.
"""

from __future__ import annotations

import copy
import numbers
from dataclasses import replace

import torch
from torch import nn

from ..checks import as_count
from ..core.attention import GroupedQueryAttention
from .head_similarity import head_projections, pooling_distance, similar_head_order

__all__ = [
    "convert_to_gqa", "pool_heads", "permute_heads", "head_rows", "similar_orders", "CONVERSION_METHODS", "GROUPINGS",
]

CONVERSION_METHODS = ("mean", "first", "random")
GROUPINGS = ("contiguous", "similar")
_INIT_STD = 0.02  # the std TransformerLM initialises linear layers with


def pool_heads(weight: torch.Tensor, n_heads: int, n_groups: int, method: str) -> torch.Tensor:
    """Pool the rows of a K or V projection from ``n_heads`` heads to ``n_groups`` contiguous groups.

    weight: (n_heads * D, d_in) (a bias (n_heads * D,) works too); head ``h``
    owns rows ``h*D .. (h+1)*D - 1``. Returns (n_groups * D, d_in).
    """
    if method not in ("mean", "first"):
        raise ValueError(f"pool_heads method must be 'mean' or 'first'; got {method!r}")
    n_heads, n_groups = as_count("n_heads", n_heads), as_count("n_groups", n_groups)
    if not isinstance(weight, torch.Tensor) or weight.dim() == 0:
        shape = tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__
        raise ValueError(f"weight must be a tensor of shape (n_heads * D, ...); got {shape}")
    rows = weight.shape[0]
    if rows % n_heads or n_heads % n_groups:
        raise ValueError(f"cannot pool {rows} rows of {n_heads} heads into {n_groups} groups")
    D, R = rows // n_heads, n_heads // n_groups  # head dim, heads per group
    # (n_heads*D, ...) -> (G, R, D, ...): group g holds heads g*R .. g*R+R-1 (contiguous)
    grouped = weight.reshape(n_groups, R, D, *weight.shape[1:])
    pooled = grouped.mean(dim=1) if method == "mean" else grouped[:, 0]  # (G, D, ...)
    return pooled.reshape(n_groups * D, *weight.shape[1:]).clone()


def _shrunk_linear(old: nn.Linear, n_heads: int, n_groups: int, method: str, generator: torch.Generator) -> nn.Linear:
    """A new Linear with n_groups heads of outputs built from ``old`` (n_heads heads) by ``method``.

    It keeps ``old``'s device, dtype, train/eval mode and each parameter's
    ``requires_grad`` (a frozen K/V projection stays frozen).
    """
    D = old.out_features // n_heads
    new = nn.Linear(old.in_features, n_groups * D, bias=old.bias is not None)
    new = new.to(device=old.weight.device, dtype=old.weight.dtype)
    new.train(old.training)
    with torch.no_grad():
        if method == "random":
            w = torch.randn(new.weight.shape, generator=generator, dtype=torch.float32) * _INIT_STD
            new.weight.copy_(w)
            if new.bias is not None:
                new.bias.zero_()
        else:
            new.weight.copy_(pool_heads(old.weight, n_heads, n_groups, method))
            if new.bias is not None:
                new.bias.copy_(pool_heads(old.bias, n_heads, n_groups, method))
    new.weight.requires_grad_(old.weight.requires_grad)
    if new.bias is not None:
        new.bias.requires_grad_(old.bias.requires_grad)
    return new


def head_rows(order, head_dim: int) -> torch.Tensor:
    """Row indices that reorder heads of ``head_dim`` rows each: new row r comes from old row ``head_rows[r]``.

    New head ``i`` is old head ``order[i]``. Returns (len(order) * head_dim,) int64.
    """
    order = torch.tensor([int(h) for h in order])  # (H,)
    return order.repeat_interleave(head_dim) * head_dim + torch.arange(head_dim).repeat(len(order))  # (H*D,)


def similar_orders(model: nn.Module, calibration: torch.Tensor, n_kv_heads: int) -> list[list[int]]:
    """For each attention layer of a multi-head ``model``, the head order of ``grouping="similar"``.

    Heads whose K and V outputs on the ``calibration`` tokens (B, T) are
    closest end up in the same contiguous group of H / ``n_kv_heads`` heads.
    """
    outputs = head_projections(model, calibration)  # one entry per attention layer, in module order
    return [similar_head_order(pooling_distance(o["k"]) + pooling_distance(o["v"]), n_kv_heads) for o in outputs]


def permute_heads(attn: GroupedQueryAttention, order) -> None:
    """Reorder the heads of a multi-head layer in place: new head ``i`` is old head ``order[i]``.

    The Q, K and V rows of each head move together with the columns of the
    output projection that read that head, so the layer computes exactly the
    same function (the heads are summed by ``o_proj`` in any order). Only
    a layer with as many KV heads as query heads can be reordered this way.
    """
    if not isinstance(attn, GroupedQueryAttention):
        raise ValueError(f"attn must be a GroupedQueryAttention; got {type(attn).__name__}")
    H, D = attn.n_heads, attn.head_dim
    if attn.n_kv_heads != H:
        raise ValueError(f"only a multi-head layer can have its heads reordered; this one has "
                         f"n_kv_heads={attn.n_kv_heads} < n_heads={H}")
    order = [int(h) for h in order]
    if sorted(order) != list(range(H)):
        raise ValueError(f"order must be a permutation of 0..{H - 1}; got {order}")
    rows = head_rows(order, D)  # (H*D,): old row of each new row
    with torch.no_grad():
        for proj in (attn.q_proj, attn.k_proj, attn.v_proj):
            proj.weight.copy_(proj.weight[rows])  # (H*D, d_model): head blocks of rows move
            if proj.bias is not None:
                proj.bias.copy_(proj.bias[rows])
        attn.o_proj.weight.copy_(attn.o_proj.weight[:, rows])  # (d_model, H*D): the matching columns move


def convert_to_gqa(
    model: nn.Module,
    n_kv_heads: int,
    method: str = "mean",
    seed: int = 0,
    *,
    grouping: str = "contiguous",
    calibration: torch.Tensor | None = None,
) -> nn.Module:
    """A new model whose attention layers have ``n_kv_heads`` KV heads, built from ``model``'s.

    ``model`` is a :class:`gqa_lib.TransformerLM` (or any module containing
    :class:`gqa_lib.GroupedQueryAttention` layers); it is deep-copied and
    left untouched. In every attention layer with H query heads and G0 KV
    heads (G0 = H for a multi-head checkpoint), the K and V projections are
    rebuilt with ``n_kv_heads`` heads by ``method`` (``"mean"``, ``"first"``
    or ``"random"``; ``seed`` seeds the random one); every other weight is
    copied, with its ``requires_grad`` (the new K/V projections take that of
    the K/V projections they replace), and the train/eval mode is kept.
    ``n_kv_heads`` must be an integer that divides G0; ``seed`` an integer
    >= 0. The copy's ``config.n_kv_heads`` is updated when it has one.

    ``grouping="similar"`` (``"mean"`` or ``"first"`` on a multi-head model
    only) needs ``calibration``, token ids (B, T) that ``model`` can read: in
    each layer the heads are reordered (:func:`permute_heads`) so that each
    group holds heads whose K and V outputs on those tokens are closest
    (:func:`gqa_lib.recipe.head_similarity.similar_head_order`), then pooled as usual.
    The copy records each layer's order as ``attn.head_order``.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module (e.g. a TransformerLM); got {type(model).__name__}")
    if method not in CONVERSION_METHODS:
        raise ValueError(f"method must be one of {CONVERSION_METHODS}; got {method!r}")
    attn_layers = [m for m in model.modules() if isinstance(m, GroupedQueryAttention)]
    if not attn_layers:
        raise ValueError("model has no GroupedQueryAttention layers to convert")
    if isinstance(n_kv_heads, bool) or not isinstance(n_kv_heads, numbers.Integral):
        n_kv_heads = as_count("n_kv_heads", n_kv_heads)  # not a plain integer: ValueError naming it
    n_kv_heads = int(n_kv_heads)  # range checked below, with a message naming the valid values
    seed = as_count("seed", seed, minimum=0)
    if grouping not in GROUPINGS:
        raise ValueError(f"grouping must be one of {GROUPINGS}; got {grouping!r}")
    if grouping == "similar":
        if method == "random":
            raise ValueError("grouping='similar' pools similar heads; method='random' pools nothing "
                             "(use grouping='contiguous')")
        if calibration is None:
            raise ValueError("grouping='similar' needs calibration token ids (B, T) to compare the heads on")
        not_mha = [(a.n_heads, a.n_kv_heads) for a in attn_layers if a.n_kv_heads != a.n_heads]
        if not_mha:
            raise ValueError(f"grouping='similar' reorders the heads of a multi-head model; this one has "
                             f"(n_heads, n_kv_heads) = {not_mha[0]}")
    elif calibration is not None:
        raise ValueError("calibration tokens are only used with grouping='similar'")
    for attn in attn_layers:
        H, G0 = attn.n_heads, attn.n_kv_heads
        if not 1 <= n_kv_heads <= G0 or G0 % n_kv_heads:
            which = f"the H={H} query heads" if G0 == H else f"the G0={G0} KV heads (H={H})"
            raise ValueError(
                f"n_kv_heads={n_kv_heads} is invalid: it must be between 1 and {G0} and divide {which}"
            )
    generator = torch.Generator().manual_seed(seed)
    new_model = copy.deepcopy(model)
    new_layers = [m for m in new_model.modules() if isinstance(m, GroupedQueryAttention)]
    if grouping == "similar":
        for attn, order in zip(new_layers, similar_orders(model, calibration, n_kv_heads)):
            permute_heads(attn, order)
            attn.head_order = order
    for attn in new_layers:
        G0 = attn.n_kv_heads
        attn.k_proj = _shrunk_linear(attn.k_proj, G0, n_kv_heads, method, generator)
        attn.v_proj = _shrunk_linear(attn.v_proj, G0, n_kv_heads, method, generator)
        attn.n_kv_heads = n_kv_heads
    config = getattr(new_model, "config", None)
    if config is not None and hasattr(config, "n_kv_heads"):
        new_model.config = replace(config, n_kv_heads=n_kv_heads)
    return new_model
