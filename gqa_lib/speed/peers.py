"""gqa_lib against the implementation practitioners use, Hugging Face transformers.

Two commands of ``python -m gqa_lib.speed.bench`` (they need ``pip install 'gqa_lib[hf]'``):

``peers``
    ONE decode step of ONE attention layer, projections included, with ``Tk``
    positions already cached: gqa_lib's :class:`GroupedQueryAttention` with a
    :class:`KVCache`, against transformers' ``LlamaAttention`` on three paths,

    * ``hf_sdpa_static``: ``attn_implementation="sdpa"`` with a ``StaticCache``,
    * ``hf_sdpa_dynamic``: ``"sdpa"`` with a ``DynamicCache`` (``generate()``'s
      default), which appends with ``torch.cat``: every step copies all Tk
      cached positions of K and V,
    * ``hf_eager_static``: ``"eager"`` with a ``StaticCache``; eager attention
      first copies K and V up to H heads (``repeat_kv``) when G < H, then runs
      plain matmuls over all Tk + N slots.

``prefill``
    One prompt through a whole model: gqa_lib's :class:`TransformerLM` against
    ``LlamaForCausalLM`` with parameter-matched MLPs.

How the transformers calls copy ``generate()`` (checked against transformers 5.24):

* Caches are sized as ``generate(max_new_tokens=N)`` sizes them: ``Tk + N``
  positions (gqa_lib's KVCache and transformers' StaticCache alike).
* ``generate()`` drops an all-ones attention mask, then builds the mask of a
  forward pass like this: with a StaticCache (a compileable cache) its
  ``prepare_inputs_for_generation`` calls ``create_masks_for_generate``, which
  for ONE query token never skips the mask: a boolean (B, 1, 1, Tk + N) mask
  that hides the unwritten slots, so on CPU and CUDA the sdpa integration packs
  the H query heads as (B, G, H/G, D) (``pack_gqa``) instead of using
  ``enable_gqa``, and attends over all Tk + N slots; eager gets
  the same mask as 0 / dtype-min floats. With a DynamicCache the model's own
  ``create_causal_mask`` returns ``None`` for one query token and sdpa runs
  with ``enable_gqa=True``. :func:`generate_mask` makes these masks with the
  same transformers functions.
* position ids are ``(B, T)`` absolute positions; ``LlamaModel`` turns them
  into (cos, sin) with ``LlamaRotaryEmbedding`` once per forward.
* A prefill passes ``use_cache=True`` and ``logits_to_keep=1``.

In ``peers`` the mask and the (cos, sin) pair are made once per setting,
outside the timed call: ``LlamaModel`` makes them once per forward for all
layers, so per layer they are amortised (gqa_lib's per-model work, its
position embedding, is likewise outside). Rewinding between timed steps:
gqa_lib ``cache.truncate(Tk)``; transformers ``cache.crop(-1)`` (a StaticCache
then rewrites the same slot; a DynamicCache drops its last position).

RoPE: gqa_lib has no rotary embedding yet; the transformers layer applies
RoPE to q and k, a small extra elementwise cost (a few multiply-adds per
element of q and k, against the H*D*d_model-sized projections). The
transformers layers reuse gqa_lib's projection modules, so, RoPE aside, all
paths compute the same function from the same stored weights.
"""

from __future__ import annotations

import argparse
import gc
import inspect

import torch

from ..checks import as_kv_heads
from ..core.attention import GroupedQueryAttention
from ..core.kv_cache import KVCache
from ..core.model import TransformerConfig, TransformerLM
from . import bench
from .timing import device_name, parse_dtype, pick_device, time_interleaved

__all__ = [
    "HF_IMPLS",
    "PEER_IMPLS",
    "PREFILL_IMPLS",
    "add_peer_commands",
    "bench_peers_decode",
    "bench_prefill",
    "build_prefill_models",
    "format_peers_table",
    "format_prefill_table",
    "generate_mask",
    "gqa_decode_step",
    "hf_attention_like",
    "hf_decode_step",
    "llama_config",
]

INSTALL_HINT = "pip install 'gqa_lib[hf]'  (or: pip install transformers)"

# name -> (attention implementation, cache kind)
HF_IMPLS = {
    "hf_sdpa_static": ("sdpa", "static"),
    "hf_sdpa_dynamic": ("sdpa", "dynamic"),
    "hf_eager_static": ("eager", "static"),
    "hf_eager_dynamic": ("eager", "dynamic"),
}
PEER_IMPLS = ("gqa_lib", "hf_sdpa_static", "hf_sdpa_dynamic", "hf_eager_static")  # `peers` default
PREFILL_IMPLS = ("gqa_lib", "hf_sdpa_dynamic", "hf_sdpa_static")  # `prefill` default


# ---------------------------------------------------------------- transformers


def _transformers():
    """The transformers module, or ImportError naming the install command."""
    try:
        import transformers
    except ImportError as err:
        raise ImportError(f"this benchmark compares with Hugging Face transformers, which is not installed: "
                          f"{INSTALL_HINT}") from err
    return transformers


def _cache_keyword(fn) -> str:
    """The name ``fn`` takes its KV cache under: ``cache`` (transformers >= 5.2x) or ``past_key_values``."""
    return "cache" if "cache" in inspect.signature(fn).parameters else "past_key_values"


def llama_config(
    d_model: int,
    n_heads: int,
    n_kv_heads: int,
    attn_impl: str = "sdpa",
    n_layers: int = 1,
    max_positions: int = 8192,
    vocab_size: int = 32000,
    intermediate_size: int = 11008,
    bias: bool = False,
):
    """A ``LlamaConfig`` of these sizes (head_dim = d_model / n_heads) using ``attn_impl`` ("sdpa" or "eager")."""
    from transformers import LlamaConfig

    config = LlamaConfig(
        hidden_size=d_model, num_attention_heads=n_heads, num_key_value_heads=n_kv_heads,
        head_dim=d_model // n_heads, attention_bias=bias, num_hidden_layers=n_layers,
        max_position_embeddings=max_positions, vocab_size=vocab_size, intermediate_size=intermediate_size,
        tie_word_embeddings=True,  # as gqa_lib's TransformerLM
    )
    config._attn_implementation = attn_impl
    return config


def hf_attention_like(layer: GroupedQueryAttention, attn_impl: str = "sdpa", max_positions: int = 8192):
    """A transformers ``LlamaAttention`` that computes what ``layer`` computes, plus RoPE.

    It is built on the meta device and then takes ``layer``'s own q/k/v/o
    projection modules (same Hugging Face names), so the weights are stored once.
    """
    from transformers.models.llama.modeling_llama import LlamaAttention

    config = llama_config(layer.d_model, layer.n_heads, layer.n_kv_heads, attn_impl,
                          max_positions=max_positions, bias=layer.q_proj.bias is not None)
    with torch.device("meta"):
        hf = LlamaAttention(config, layer_idx=0)
    for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
        setattr(hf, name, getattr(layer, name))
    return hf.eval()


def _hf_cache(config, kind: str, max_len: int):
    """An empty ``StaticCache`` of ``max_len`` positions or an empty ``DynamicCache``."""
    from transformers import DynamicCache, StaticCache

    if kind == "static":
        return StaticCache(config=config, max_cache_len=max_len)
    return DynamicCache(config=config)


def generate_mask(config, cache, batch_size: int, seq_len: int, dtype, device, position_ids: torch.Tensor):
    """The attention mask a transformers forward pass sees under ``generate()`` (attention_mask dropped as all ones).

    StaticCache: ``create_masks_for_generate`` in ``prepare_inputs_for_generation``
    (a (B, 1, T, Tk + N) mask for a decode step; None for a prefill from an
    empty cache). Then, as ``LlamaModel.forward`` does, ``create_causal_mask``
    (which returns a 4D mask unchanged, and None for one token with a DynamicCache).
    Call it with the cache as it is before the forward pass.
    """
    from transformers.masking_utils import create_causal_mask, create_masks_for_generate

    embeds = torch.empty((batch_size, seq_len, 0), dtype=dtype, device=device)  # only shape, dtype, device are read
    mask = None
    if cache.is_compileable:
        mask = create_masks_for_generate(config=config, inputs_embeds=embeds, attention_mask=None, cache=cache,
                                         position_ids=position_ids)
        mask = mask.contiguous() if isinstance(mask, torch.Tensor) else mask
    return create_causal_mask(config=config, inputs_embeds=embeds, attention_mask=mask, cache=cache,
                              position_ids=position_ids)


# ---------------------------------------------------------------- one decode step of one layer


def gqa_decode_step(layer: GroupedQueryAttention, k: torch.Tensor, v: torch.Tensor, x: torch.Tensor,
                    new_tokens: int = 64):
    """(cache, step) for gqa_lib: ``step()`` decodes ``x`` against ``Tk`` cached positions.

    k, v: (B, G, Tk, D) written through ``cache.update`` into a KVCache of
    ``Tk + new_tokens`` positions, as ``generate()`` allocates it; x: (B, 1, d_model).
    Each ``step()`` rewinds to Tk, then returns ``layer(x, cache=cache, layer=0)``.
    """
    B, G, Tk, D = k.shape
    cache = KVCache(n_layers=1, batch_size=B, n_kv_heads=G, max_len=Tk + new_tokens, head_dim=D,
                    dtype=k.dtype, device=k.device)
    cache.update(0, k, v)

    def step():
        cache.truncate(Tk)  # back to the prompt
        with torch.no_grad():
            return layer(x, cache=cache, layer=0)

    return cache, step


def hf_decode_step(hf_layer, cache_kind: str, k: torch.Tensor, v: torch.Tensor, x: torch.Tensor,
                   new_tokens: int = 64, position_embeddings=None):
    """(cache, step) for a transformers ``LlamaAttention``: ``step()`` decodes ``x`` as ``generate()`` would.

    The cache ("static": ``Tk + new_tokens`` positions; "dynamic") is filled
    with k, v (B, G, Tk, D) through ``cache.update``. ``position_embeddings``
    is the (cos, sin) pair, each (B, 1, D); by default ``LlamaRotaryEmbedding``
    at position Tk. ``step()`` runs the layer and rewinds with ``cache.crop(-1)``;
    it returns the output (B, 1, d_model).
    """
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    config = hf_layer.config
    B, G, Tk, D = k.shape
    cache = _hf_cache(config, cache_kind, Tk + new_tokens)
    cache.update(k, v, 0)
    position_ids = torch.full((B, 1), Tk, dtype=torch.long, device=x.device)  # (B, 1): the new token's position
    if position_embeddings is None:
        position_embeddings = LlamaRotaryEmbedding(config).to(x.device)(x, position_ids)  # cos, sin: (B, 1, D)
    mask = generate_mask(config, cache, B, 1, x.dtype, x.device, position_ids)
    kwargs = {_cache_keyword(hf_layer.forward): cache}

    def step():
        with torch.no_grad():
            out, _weights = hf_layer(x, position_embeddings=position_embeddings, attention_mask=mask, **kwargs)
        cache.crop(-1)  # back to Tk positions
        return out

    return cache, step


def _decode_steps_for_g(g, impls, batch_size, n_heads, head_dim, context, dtype, device, new_tokens, seed):
    """{(G, impl): step} for one G, all implementations sharing one layer's weights and the same cached K/V."""
    d_model = n_heads * head_dim
    torch.manual_seed(seed + g)
    layer = GroupedQueryAttention(d_model, n_heads, g).to(device=device, dtype=dtype).eval()
    gen = torch.Generator(device="cpu").manual_seed(seed + g)
    k = torch.randn(batch_size, g, context, head_dim, generator=gen).to(device, dtype)  # (B, G, Tk, D)
    v = torch.randn(batch_size, g, context, head_dim, generator=gen).to(device, dtype)  # (B, G, Tk, D)
    x = torch.randn(batch_size, 1, d_model, generator=gen).to(device, dtype)  # (B, 1, d_model)
    steps = {}
    for impl in impls:
        if impl == "gqa_lib":
            _cache, steps[g, impl] = gqa_decode_step(layer, k, v, x, new_tokens)
        else:
            attn, kind = HF_IMPLS[impl]
            hf_layer = hf_attention_like(layer, attn, max_positions=context + new_tokens)
            _cache, steps[g, impl] = hf_decode_step(hf_layer, kind, k, v, x, new_tokens)
    return steps


def _release_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def bench_peers_decode(
    context: int = 2048,
    dtype: str | torch.dtype = "float32",
    batch_size: int = 4,
    n_heads: int = 32,
    head_dim: int = 128,
    groups: list[int] = (1, 4, 8, 32),
    impls: list[str] = PEER_IMPLS,
    new_tokens: int = 64,
    min_run_time: float = 0.3,
    rounds: int = 2,
    device: str | torch.device | None = None,
    seed: int = 0,
) -> list[dict]:
    """Time one decode step of one attention layer (d_model = n_heads * head_dim) for every (G, impl).

    ``context`` positions (Tk) are cached; every setting of this (dtype, Tk)
    is built, timed in turn ``rounds`` times (best median kept), then freed.
    Rows: dtype, context, G, impl, ``ms`` (median milliseconds per step),
    ``iqr_ms`` (interquartile range, ms) and ``kv_bytes`` (bytes of the Tk
    cached K and V positions, which a step must read).
    """
    _transformers()
    device = pick_device(device)
    dtype = parse_dtype(dtype)
    _check_peer_sizes(n_heads, groups, impls)
    steps = {}
    for g in groups:
        steps.update(_decode_steps_for_g(g, impls, batch_size, n_heads, head_dim, context, dtype, device,
                                         new_tokens, seed))
    best = time_interleaved(steps, rounds=rounds, min_run_time=min_run_time)
    del steps
    _release_memory(device)
    elem = torch.empty((), dtype=dtype).element_size()
    dtype_name = str(dtype).removeprefix("torch.")
    return [
        {"dtype": dtype_name, "context": context, "G": g, "impl": impl, "ms": best[g, impl].median_ms,
         "iqr_ms": best[g, impl].iqr_s * 1e3, "kv_bytes": 2 * batch_size * g * context * head_dim * elem}
        for g in groups
        for impl in impls
    ]


def _check_peer_sizes(n_heads: int, groups, impls) -> None:
    """ValueError naming the value if a G does not divide n_heads or an implementation is unknown."""
    for g in groups:
        as_kv_heads(n_heads, g, "G")
    for impl in impls:
        if impl != "gqa_lib" and impl not in HF_IMPLS:
            raise ValueError(f"unknown implementation {impl!r}; choose from {['gqa_lib', *HF_IMPLS]}")


# ---------------------------------------------------------------- peers: printing


def _saving_kept(t_mha: float, t_g: float, t_mqa: float) -> float:
    """(t_MHA - t_G) / (t_MHA - t_MQA): the share of MQA's time saving that G keeps."""
    return (t_mha - t_g) / (t_mha - t_mqa) if t_mha != t_mqa else float("nan")


def format_peers_table(rows: list[dict], n_heads: int) -> str:
    """The table of one (dtype, context): G rows, impl columns (ms), gqa_lib / fastest transformers path.

    Under it, for every implementation and every G strictly between 1 and
    ``n_heads``: the speed-up over MHA (G = n_heads) and the share of MQA's
    saving kept; then whether gqa_lib is no slower than the fastest
    transformers path at every G.
    """
    impls = list(dict.fromkeys(r["impl"] for r in rows))
    groups = list(dict.fromkeys(r["G"] for r in rows))
    ms = {(r["G"], r["impl"]): r["ms"] for r in rows}
    hf = [i for i in impls if i != "gqa_lib"]
    compare = "gqa_lib" in impls and bool(hf)
    lines = [f"{'G':>4} " + " ".join(f"{i:>16}" for i in impls) + ("   gqa_lib / fastest hf" if compare else "")]
    ratios = {}
    for g in groups:
        line = f"{g:>4} " + " ".join(f"{ms[g, i]:>16.3f}" for i in impls)
        if compare:
            fastest = min(hf, key=lambda i: ms[g, i])
            ratios[g] = ms[g, "gqa_lib"] / ms[g, fastest]
            line += f"   {ratios[g]:.2f} ({fastest})"
        lines.append(line)
    lines += _group_summary(ms, impls, groups, n_heads)
    if compare:
        worst = max(ratios, key=ratios.get)
        verdict = "yes" if ratios[worst] <= 1.0 else "no"
        lines.append(f"gqa_lib no slower than the fastest transformers path at every G: {verdict} "
                     f"(largest ratio {ratios[worst]:.3f}, at G={worst})")
    return "\n".join(lines)


def _group_summary(ms: dict, impls: list[str], groups: list[int], n_heads: int) -> list[str]:
    """Lines 'impl: G=g: s x faster than MHA, keeps k of MQA's saving' (when G=1 and G=H were timed)."""
    middle = [g for g in groups if 1 < g < n_heads]
    if 1 not in groups or n_heads not in groups or not middle:
        return []
    lines = [f"speed-up over MHA (G={n_heads}) and share of MQA's saving kept, (t_MHA - t_G) / (t_MHA - t_1):"]
    for impl in impls:
        t_mha, t_mqa = ms[n_heads, impl], ms[1, impl]
        cells = [f"G={g}: {t_mha / ms[g, impl]:.2f}x, keeps {_saving_kept(t_mha, ms[g, impl], t_mqa):.2f}"
                 for g in middle]
        lines.append(f"  {impl:<16} " + "; ".join(cells))
    return lines


# ---------------------------------------------------------------- prefill


def _mlp_params_per_layer(model: torch.nn.Module, n_layers: int) -> int:
    """Parameters of the MLPs (every parameter of a module named ``mlp``) divided by ``n_layers``."""
    return sum(p.numel() for name, p in model.named_parameters() if ".mlp." in name) // n_layers


def build_prefill_models(vocab_size=32000, d_model=1024, n_layers=4, n_heads=16, n_kv_heads=4, d_ff=4096,
                         max_len=1088, attn_impls=("sdpa",), dtype="float32", device=None, seed=0) -> dict:
    """gqa_lib's TransformerLM and a LlamaForCausalLM per attention implementation, holding the same weights.

    gqa_lib's model is a miniature Llama with Hugging Face's parameter names,
    so each ``LlamaForCausalLM`` (``intermediate_size = d_ff``) loads its state
    dict unchanged and computes the same function. Both hold ``max_len``
    positions. Returns {"gqa_lib": model, "hf_<attn>": model, ...}.
    """
    from transformers import LlamaForCausalLM

    device, dtype = pick_device(device), parse_dtype(dtype)
    torch.manual_seed(seed)
    gqa_config = TransformerConfig(vocab_size=vocab_size, max_seq_len=max_len, d_model=d_model, n_layers=n_layers,
                                   n_heads=n_heads, n_kv_heads=n_kv_heads, d_ff=d_ff)
    models = {"gqa_lib": TransformerLM(gqa_config)}
    for attn in attn_impls:
        config = llama_config(d_model, n_heads, n_kv_heads, attn, n_layers=n_layers, max_positions=max_len,
                              vocab_size=vocab_size, intermediate_size=d_ff)
        config.rms_norm_eps = gqa_config.norm_eps  # RoPE base: both 10,000
        hf = LlamaForCausalLM(config)
        hf.load_state_dict(models["gqa_lib"].state_dict())
        models[f"hf_{attn}"] = hf
    return {name: m.to(device=device, dtype=dtype).eval() for name, m in models.items()}


def _gqa_prefill_step(model: TransformerLM, idx: torch.Tensor, max_len: int):
    """step(): prefill ``idx`` (B, T) into a rewound cache of ``max_len`` positions; logits of the last position."""
    cache = model.new_cache(idx.shape[0], max_len)

    def step():
        cache.truncate(0)
        with torch.no_grad():
            return model(idx, cache=cache, last_only=True)  # (B, 1, V)

    return step


def _hf_prefill_step(model, cache_kind: str, idx: torch.Tensor, max_len: int):
    """step(): ``generate()``'s prefill forward of ``idx`` (B, T): cache, position ids, mask, ``logits_to_keep=1``.

    "dynamic": a new DynamicCache per call, as every ``generate()`` call makes;
    "static": one StaticCache of ``max_len`` positions, rewound to 0 before each call.
    """
    config = model.config
    B, T = idx.shape
    position_ids = torch.arange(T, device=idx.device).expand(B, T)  # (B, T)
    static = _hf_cache(config, "static", max_len) if cache_kind == "static" else None
    cache_kw = _cache_keyword(model.forward)

    def step():
        if static is not None and int(static.get_seq_length()):
            static.crop(-int(static.get_seq_length()))
        cache = static if static is not None else _hf_cache(config, "dynamic", max_len)
        with torch.no_grad():
            mask = generate_mask(config, cache, B, T, model.dtype, idx.device, position_ids)
            out = model(input_ids=idx, attention_mask=mask, position_ids=position_ids, use_cache=True,
                        logits_to_keep=1, **{cache_kw: cache})
        return out.logits  # (B, 1, V)

    return step


def bench_prefill(
    batch_size: int = 4,
    prompt_len: int = 1024,
    vocab_size: int = 32000,
    d_model: int = 1024,
    n_layers: int = 4,
    n_heads: int = 16,
    n_kv_heads: int = 4,
    d_ff: int = 4096,
    new_tokens: int = 64,
    impls: list[str] = PREFILL_IMPLS,
    dtype: str | torch.dtype = "float32",
    device: str | torch.device | None = None,
    min_run_time: float = 0.5,
    rounds: int = 2,
    seed: int = 0,
) -> list[dict]:
    """Time the prefill of a (B, prompt_len) prompt through a whole model, as ``generate()`` runs it.

    Caches hold ``prompt_len + new_tokens`` positions. Rows: impl, ``ms``
    (median milliseconds per prefill), ``iqr_ms``, ``tokens_per_s`` (prompt
    tokens of the whole batch per second), ``params`` (all parameters) and
    ``mlp_params`` (MLP parameters per layer).
    """
    _transformers()
    device = pick_device(device)
    _check_peer_sizes(n_heads, [n_kv_heads], impls)
    max_len = prompt_len + new_tokens
    attns = tuple(dict.fromkeys(HF_IMPLS[i][0] for i in impls if i != "gqa_lib"))
    models = build_prefill_models(vocab_size, d_model, n_layers, n_heads, n_kv_heads, d_ff, max_len, attns,
                                  dtype, device, seed)
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(vocab_size, (batch_size, prompt_len), generator=gen).to(device)  # (B, T) prompt
    owner = {impl: models["gqa_lib" if impl == "gqa_lib" else f"hf_{HF_IMPLS[impl][0]}"] for impl in impls}
    steps = {impl: _prefill_step(impl, owner[impl], idx, max_len) for impl in impls}
    best = time_interleaved(steps, rounds=rounds, min_run_time=min_run_time)
    rows = [
        {"impl": impl, "ms": best[impl].median_ms, "iqr_ms": best[impl].iqr_s * 1e3,
         "tokens_per_s": batch_size * prompt_len / best[impl].median_s,
         "params": sum(p.numel() for p in owner[impl].parameters()),
         "mlp_params": _mlp_params_per_layer(owner[impl], n_layers)}
        for impl in impls
    ]
    del steps, models, owner
    _release_memory(device)
    return rows


def _prefill_step(impl: str, model, idx: torch.Tensor, max_len: int):
    """The timed prefill closure of ``impl`` ("gqa_lib" or a name of HF_IMPLS) for ``model``."""
    if impl == "gqa_lib":
        return _gqa_prefill_step(model, idx, max_len)
    return _hf_prefill_step(model, HF_IMPLS[impl][1], idx, max_len)


def format_prefill_table(rows: list[dict]) -> str:
    """impl, ms per prefill, tokens/s, parameters (millions), MLP parameters per layer."""
    lines = [f"{'impl':<16} {'ms/prefill':>11} {'tokens/s':>10} {'params M':>9} {'MLP params/layer':>17}"]
    for r in rows:
        lines.append(f"{r['impl']:<16} {r['ms']:>11.1f} {r['tokens_per_s']:>10.0f} {r['params'] / 1e6:>9.2f} "
                     f"{r['mlp_params']:>17,}")
    return "\n".join(lines)


# ---------------------------------------------------------------- command line


def _impl_list(text: str) -> list[str]:
    """argparse type: 'gqa_lib,hf_sdpa_static' -> a list of known implementation names."""
    names = text.split(",")
    for name in names:
        if name != "gqa_lib" and name not in HF_IMPLS:
            raise argparse.ArgumentTypeError(f"unknown implementation {name!r}; choose from {['gqa_lib', *HF_IMPLS]}")
    return names


def _device_or_usage_error(args: argparse.Namespace) -> torch.device:
    try:
        return pick_device(args.device)
    except (ValueError, RuntimeError) as err:
        args.usage_error(str(err))


def _require_transformers():
    """The transformers module; exit with the install command (no traceback) when it is absent."""
    try:
        return _transformers()
    except ImportError as err:
        raise SystemExit(f"python -m gqa_lib.speed.bench: {err}") from None


def _environment(device: torch.device, transformers) -> dict:
    """bench's device, device_type and torch keys, plus the transformers version."""
    return {**bench._environment(device), "transformers": transformers.__version__}


def _cmd_peers(args: argparse.Namespace) -> dict:
    transformers = _require_transformers()
    device = _device_or_usage_error(args)
    try:
        _check_peer_sizes(args.heads, args.groups, args.impls)
    except ValueError as err:
        args.usage_error(str(err))
    d_model = args.heads * args.head_dim
    print(f"one decode step of one attention layer, projections included: d_model={d_model} H={args.heads} "
          f"D={args.head_dim} B={args.batch}, cache of Tk + {args.new_tokens} positions, on {device_name(device)}; "
          f"torch {torch.__version__}, transformers {transformers.__version__}")
    print("hf_* paths apply RoPE to q and k (gqa_lib has no rotary embedding yet): a small extra cost. "
          "hf_sdpa_dynamic appends with torch.cat (copies the cache every step); hf_eager_static is eager attention "
          "(repeat_kv copies K/V to H heads when G < H) with a StaticCache.")
    rows = []
    for dtype in args.dtypes:
        for context in args.contexts:
            part = bench_peers_decode(context, dtype, args.batch, args.heads, args.head_dim, args.groups, args.impls,
                                      args.new_tokens, args.min_run_time, args.rounds, device)
            print(f"\n{dtype}, Tk={context}: ms per decode step (median of the best round)")
            print(format_peers_table(part, args.heads), flush=True)
            rows += part
    settings = {k: getattr(args, k) for k in ("batch", "heads", "head_dim", "groups", "contexts", "dtypes", "impls",
                                              "new_tokens", "min_run_time", "rounds")}
    return {"benchmark": "peers", **_environment(device, transformers), "settings": {"d_model": d_model, **settings},
            "rows": rows}


def _cmd_prefill(args: argparse.Namespace) -> dict:
    transformers = _require_transformers()
    device = _device_or_usage_error(args)
    try:
        _check_peer_sizes(args.heads, [args.kv_heads], args.impls)
        TransformerConfig(vocab_size=args.vocab, max_seq_len=args.prompt + args.new_tokens, d_model=args.d_model,
                          n_layers=args.layers, n_heads=args.heads, n_kv_heads=args.kv_heads, d_ff=args.d_ff)
    except ValueError as err:
        args.usage_error(str(err))
    print(f"prefill of a prompt of {args.prompt} tokens, B={args.batch}: d_model={args.d_model} layers={args.layers} "
          f"H={args.heads} G={args.kv_heads} vocab={args.vocab} {args.dtype}, caches of prompt + {args.new_tokens} "
          f"positions, on {device_name(device)}; torch {torch.__version__}, transformers {transformers.__version__}")
    rows = bench_prefill(args.batch, args.prompt, args.vocab, args.d_model, args.layers, args.heads, args.kv_heads,
                         args.d_ff, args.new_tokens, args.impls, args.dtype, device, args.min_run_time, args.rounds)
    print(_mlp_line(rows, args.d_ff))
    print(format_prefill_table(rows))
    settings = {k: getattr(args, k) for k in ("batch", "prompt", "vocab", "d_model", "layers", "heads", "kv_heads",
                                              "d_ff", "new_tokens", "impls", "dtype", "min_run_time", "rounds")}
    return {"benchmark": "prefill", **_environment(device, transformers), "settings": settings, "rows": rows}


def _mlp_line(rows: list[dict], d_ff: int) -> str:
    """One line saying that every implementation timed holds the same model (weights and MLP size)."""
    mlp = sorted({r["mlp_params"] for r in rows})
    return (f"every model holds the same weights (gqa_lib's miniature Llama, loaded into LlamaForCausalLM): "
            f"SwiGLU MLP with d_ff={d_ff}, {', '.join(f'{m:,}' for m in mlp)} parameters per layer")


def _add_device_and_json(p: argparse.ArgumentParser, dtype: str | None = None) -> None:
    """bench's shared --device, --json (and --dtype) options, and ``args.usage_error`` (exit 2 with the usage)."""
    bench._add_common(p, dtype=dtype)
    p.set_defaults(usage_error=p.error)


def add_peer_commands(subparsers) -> None:
    """Add the ``peers`` and ``prefill`` subcommands to ``python -m gqa_lib.speed.bench``."""
    peers = subparsers.add_parser("peers", help="one decode step of one attention layer: gqa_lib vs transformers")
    peers.add_argument("--heads", type=bench.positive_int, default=32, help="query heads H")
    peers.add_argument("--head-dim", type=bench.positive_int, default=128, help="D; d_model = H * D")
    peers.add_argument("--groups", type=bench.positive_int_list, default=[1, 4, 8, 32], help="comma-separated G values")
    peers.add_argument("--contexts", type=bench.positive_int_list, default=[2048, 8192], help="cached positions Tk")
    peers.add_argument("--dtypes", type=bench.dtype_list, default=["float32", "bfloat16"])
    peers.add_argument("--batch", type=bench.positive_int, default=4)
    peers.add_argument("--impls", type=_impl_list, default=list(PEER_IMPLS), help="implementations to time")
    peers.add_argument("--new-tokens", type=bench.positive_int, default=64, help="room left in the caches, as generate()")
    peers.add_argument("--min-run-time", type=bench.positive_float, default=0.3, help="seconds of measuring per figure")
    peers.add_argument("--rounds", type=bench.positive_int, default=2, help="interleaved rounds; best median kept")
    _add_device_and_json(peers)
    peers.set_defaults(run=_cmd_peers)

    pre = subparsers.add_parser("prefill", help="prefill a prompt through a whole model: gqa_lib vs transformers")
    pre.add_argument("--batch", type=bench.positive_int, default=4)
    pre.add_argument("--prompt", type=bench.positive_int, default=1024, help="prompt tokens")
    pre.add_argument("--vocab", type=bench.positive_int, default=32000)
    pre.add_argument("--d-model", type=bench.positive_int, default=1024)
    pre.add_argument("--layers", type=bench.positive_int, default=4)
    pre.add_argument("--heads", type=bench.positive_int, default=16, help="query heads H")
    pre.add_argument("--kv-heads", type=bench.positive_int, default=4, help="KV heads G")
    pre.add_argument("--d-ff", type=bench.positive_int, default=4096,
                     help="gqa_lib MLP width; Llama's intermediate_size is matched to its parameter count")
    pre.add_argument("--impls", type=_impl_list, default=list(PREFILL_IMPLS), help="implementations to time")
    pre.add_argument("--new-tokens", type=bench.positive_int, default=64, help="room left in the caches, as generate()")
    pre.add_argument("--min-run-time", type=bench.positive_float, default=0.5, help="seconds of measuring per figure")
    pre.add_argument("--rounds", type=bench.positive_int, default=2, help="interleaved rounds; best median kept")
    _add_device_and_json(pre, dtype="float32")
    pre.set_defaults(run=_cmd_prefill)
