"""Sizes for every chapter's GPU branch, from the device's free memory: pure arithmetic, no CUDA needed.

A reader may open a chapter on anything from a Colab T4 (15 GB, about 14 GiB
free, no native bf16) to an 80 GB A100. Each function here takes the device's
free memory in bytes and whether it computes in bf16 natively, and returns the
sizes a chapter's ``if ON_GPU:`` branch should use, with ``peak_bytes``: the
bytes that branch holds on the device at once. Every plan keeps
``peak_bytes <= GPU_BUDGET_FRACTION * free_bytes`` (60%: the rest is left to
the CUDA caching allocator's rounding and fragmentation, cuBLAS workspaces and
whatever the reader has allocated since the free memory was read).

Units: bytes everywhere; GiB = 2**30 bytes (only in :func:`describe_plans`).
Sizes are true integers (``int`` or a numpy integer; never ``bool`` or a
float), checked with :func:`gqa_lib.checks.as_count`.

What the plans assume of the code they size (the lead must keep the code to it):

* **One G at a time.** A benchmark over G builds the tensors (or the model and
  its cache) of one G, times it, and frees them before building the next. The
  largest G (MHA, G = H) bounds the K/V; G = H/2 with a copy of K/V to H heads
  is the worst attention call. :func:`gqa_lib.speed.bench.bench_model_decode` and
  :func:`gqa_lib.speed.bench.bench_attention_decode` build every G at once today and
  must change (see :func:`model_peak_bytes`, :func:`attention_peak_bytes`).
* **Half precision for decoding.** :func:`decode_dtype` picks bf16 where the
  GPU computes it natively and fp16 elsewhere (a T4: ask
  ``torch.cuda.is_bf16_supported(including_emulation=False)``, since the
  default ``including_emulation=True`` answers True on a T4).
* **No fp32 copy on the device.** Weights are built on the host and moved
  with ``.to(device, dtype)`` (as :func:`gqa_lib.speed.bench.decode_step_model`
  does); random K/V are drawn in the plan's dtype or converted on the host.
* **SDPA may fall back to its math backend.** PyTorch's FlashAttention
  kernel (sm80 and newer) is the fused one that takes ``enable_gqa=True``
  with G < H; a T4 (sm75) is assumed to run ``sdpa`` at G < H on the math
  backend, which upcasts fp16/bf16 K/V to fp32, repeats them to H heads and
  scales a copy of K (measured on CPU with the math backend forced): counted
  in :func:`attention_call_bytes`. Fused calls hold no copies.
* **Nothing big outlives its cell.** The steps of a chapter run one after
  another; a cell that keeps K/V in globals (chapter 5's profile keeps
  ``qp, kp, vp``) must ``del`` them before the next step.

:func:`chapter_plans` gives every chapter's plan; :func:`describe_plans`
prints them as a table; :func:`device_plans` reads a CUDA device and calls
:func:`chapter_plans`.
"""

from __future__ import annotations

import math

from ..checks import as_count, as_kv_heads, divisors

__all__ = [
    "CH5_IMPLEMENTATIONS",
    "GPU_BUDGET_FRACTION",
    "GiB",
    "SCORE_BYTES",
    "WORKSPACE_BYTES",
    "attention_call_bytes",
    "attention_parts",
    "attention_peak_bytes",
    "attention_plan",
    "budget_bytes",
    "chapter_plans",
    "decode_dtype",
    "describe_plans",
    "device_plans",
    "element_bytes",
    "explorer_memory_parts",
    "explorer_peak_bytes",
    "explorer_plan",
    "model_parts",
    "model_peak_bytes",
    "model_plan",
    "roofline_plan",
    "training_peak_bytes",
    "transformer_parameters",
]

GiB = 2**30
"""Bytes in a gibibyte: the unit of :func:`describe_plans`."""

GPU_BUDGET_FRACTION = 0.6
"""A plan may hold at most this share of the device's free memory at once."""

CH5_IMPLEMENTATIONS = ("grouped", "grouped_matmul", "sdpa", "sdpa_repeat_kv", "repeat_kv")
"""The attention implementations chapter 5's table times (``IMPLS`` there)."""

SCORE_BYTES = 16
"""Bytes per attention score (one sequence, one query head, one key) a call may hold at once.

Four fp32 score-sized tensors: the plain-matmul paths hold the scores, the
fp32 copy the softmax takes, its fp32 result and the weights cast back (12
bytes in fp16/bf16, measured on CPU); the math backend of SDPA holds fewer.
"""

WORKSPACE_BYTES = 32 * 2**20
"""Bytes a call may take for a library workspace: cuBLAS's default is at most 32 MiB (``:4096:8``) a stream.

CPU GEMMs in fp16/bf16 take packing buffers of about 100 KiB.
"""

_ELEMENT_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
_MATH_BYTES = 4  # SDPA's math backend computes in fp32
_KNOWN_IMPLS = ("grouped", "grouped_matmul", "sdpa", "sdpa_repeat_kv", "repeat_kv")
_MiB = 2**20

# Today's GPU sizes of the chapters (what an 80 GB device keeps) and the smallest each may shrink to.
CH1_BANDWIDTH_BYTES = 256 * _MiB  # chapter 1's streaming_read_bandwidth(n_bytes=256 MiB), fp32
CH1_MATMUL_N = (4096, 2048, 1024)  # the n x n fp32 matmul, largest first
CH1_DECODE = dict(n_heads=32, n_kv_heads=8, positions=32768, head_dim=128)  # k_all/v_all: 268 MB in fp32
CH3_LIVE = dict(batch_size=4, n_heads=16, head_dim=64, context=2048, groups=(16, 1))  # fp32, prose asserts
CH5_BANDWIDTH_BYTES = 512 * _MiB  # chapter 5's streaming_read_bandwidth(device): the default buffer
CH5_SWEEP_CONTEXTS = (512, 1024, 2048, 4096, 8192, 16384, 32768)
CH5_EXPLORER_CONTEXTS = (256, 512, 1024, 2048, 4096, 8192)  # widgets.CONTEXTS up to today's start, 8192
CH5_EXPLORER = dict(preset="Llama 2 7B", G=8, batch_size=1, n_heads=32, head_dim=128, spare_positions=64)
# chapter 8 times the experiments' own model shape (experiments.SETUP.model) at a serving batch and context
CH8_MODEL = dict(n_heads=8, d_model=128, n_layers=2, d_ff=344, vocab_size=362, batch_size=256, context=16384,
                 groups=(1, 2, 4, 8))
# experiments.SETUP (chapters 6-7 train and evaluate on the CPU: their models never move to the GPU)
TOY_MODEL = dict(vocab_size=362, max_seq_len=64, d_model=128, n_layers=2, n_heads=8, n_kv_heads=8, d_ff=344)
TOY_TRAIN_BATCH, TOY_EVAL_BATCH, TOY_SEEDS = 32, 128, 6


# ----------------------------------------------------------------------------- checks and small helpers


def _free(free_bytes) -> int:
    """``free_bytes`` as an int >= 1; ValueError naming ``free_bytes`` for anything else (bool, float, <= 0)."""
    return as_count("free_bytes", free_bytes)


def _flag(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False; got {value!r} ({type(value).__name__})")
    return value


def _fraction(fraction) -> float:
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
        raise ValueError(f"fraction must be a number in (0, 1]; got {fraction!r}")
    return float(fraction)


def budget_bytes(free_bytes: int, fraction: float = GPU_BUDGET_FRACTION) -> int:
    """The most bytes a plan may hold at once: ``floor(fraction * free_bytes)`` (default 60%)."""
    return math.floor(_free(free_bytes) * _fraction(fraction))


def decode_dtype(bf16_supported: bool) -> str:
    """``"bfloat16"`` where the GPU computes bf16 natively, else ``"float16"`` (a T4: no bf16 arithmetic)."""
    return "bfloat16" if _flag("bf16_supported", bf16_supported) else "float16"


def element_bytes(dtype: str) -> int:
    """Bytes per element of ``"float32"`` (4), ``"float16"`` or ``"bfloat16"`` (2)."""
    if dtype not in _ELEMENT_BYTES:
        raise ValueError(f"dtype must be one of {sorted(_ELEMENT_BYTES)}; got {dtype!r}")
    return _ELEMENT_BYTES[dtype]


def _groups(n_heads: int, groups) -> list[int]:
    """``groups`` (default: every divisor of ``n_heads``) as a checked list; ValueError naming a bad G."""
    if groups is None:
        return divisors(n_heads)
    if isinstance(groups, (str, bytes)) or not hasattr(groups, "__iter__"):
        raise ValueError(f"groups must be a list of G values; got {groups!r}")
    checked = [as_kv_heads(n_heads, g, "G") for g in groups]
    if not checked:
        raise ValueError("groups must name at least one G; got an empty list")
    return checked


def _impls(implementations) -> tuple[str, ...]:
    if isinstance(implementations, str) or not hasattr(implementations, "__iter__"):
        raise ValueError(f"implementations must be a list of names; got {implementations!r}")
    impls = tuple(implementations)
    if not impls:
        raise ValueError("implementations must name at least one implementation; got an empty list")
    for name in impls:
        if name not in _KNOWN_IMPLS:
            raise ValueError(f"unknown implementation {name!r}; choose from {list(_KNOWN_IMPLS)}")
    return impls


def _halvings(start: int, stop: int) -> list[int]:
    """start, start/2, ... down to stop (inclusive when reached): the shrinking steps of a plan."""
    values = [start]
    while values[-1] // 2 >= stop:
        values.append(values[-1] // 2)
    return values


def _first_fitting(chain: list, peak, budget: int, free_bytes: int, what: str):
    """The first state of ``chain`` (largest first) whose ``peak(state)`` fits in ``budget``; ValueError otherwise.

    Every chain is ordered so that each state is no larger, size by size, than
    the one before: the state picked never shrinks when the budget grows.
    """
    for state in chain:
        if peak(state) <= budget:
            return state
    smallest = peak(chain[-1])
    raise ValueError(
        f"free_bytes={free_bytes} ({free_bytes / GiB:.2f} GiB) is too little for {what}: its smallest plan needs "
        f"{smallest:,} bytes ({smallest / GiB:.3f} GiB), more than the budget of {budget:,} bytes"
    )


# ----------------------------------------------------------------------------- attention decode


def _math_sdpa_bytes(batch_size: int, n_heads: int, kv_heads: int, context: int, head_dim: int, elem: int) -> int:
    """Copies SDPA's math backend makes of K/V with ``kv_heads`` heads for ``n_heads`` query heads (bytes).

    fp32 copies of K and V when they are fp16/bf16, K and V repeated to H
    heads when ``kv_heads < n_heads`` (with ``enable_gqa``), and a scaled
    copy of K at H heads: measured on CPU with the math backend forced.
    """
    per_head = batch_size * context * head_dim  # elements of one head of K
    upcast = 2 * kv_heads * per_head * _MATH_BYTES if elem < _MATH_BYTES else 0
    repeat = 2 * n_heads * per_head * _MATH_BYTES if kv_heads < n_heads else 0
    scaled_k = n_heads * per_head * _MATH_BYTES
    return upcast + repeat + scaled_k


def attention_call_bytes(
    impl: str, batch_size: int, n_heads: int, n_kv_heads: int, context: int, head_dim: int, elem_bytes: int,
    *, math_sdpa: bool = False, workspace_bytes: int = WORKSPACE_BYTES,
) -> int:
    """Bytes one decode-step call of ``impl`` allocates beyond its inputs q, K, V (an upper bound).

    Every call: its output (B, H, 1, D) and fp32 work on the query side
    (``4 * B*H*D * 4``), ``SCORE_BYTES`` per score (B*H*Tk) and
    ``workspace_bytes`` (default :data:`WORKSPACE_BYTES`). On top:

    * ``repeat_kv``: K and V at H heads, ``2 * B*H*Tk*D * elem_bytes``: the
      copy to H heads (G < H), or at G = H the contiguous copy a batched
      matmul may take of a strided K/V slice (seen on CPU in fp16/bf16);
    * ``grouped_matmul``: that contiguous copy of its G heads, ``2 * B*G*Tk*D * elem_bytes``;
    * ``sdpa_repeat_kv`` with G < H: K and V copied to H heads;
    * ``sdpa`` with G < H: SDPA's math backend (assumed on GPUs before
      sm80, e.g. a T4, where FlashAttention, the fused kernel that takes
      ``enable_gqa``, does not run): fp32 copies of K/V, repeated to H heads,
      and a scaled copy of K (see ``_math_sdpa_bytes``);
    * ``math_sdpa=True`` assumes *every* SDPA call runs the math backend
      (a device with no fused kernel for the dtype): ``grouped``, ``sdpa`` at
      G = H and ``sdpa_repeat_kv`` get the math backend's copies too.

    ``context`` is Tk, the keys read (not the spare cache positions).
    """
    if impl not in _KNOWN_IMPLS:
        raise ValueError(f"unknown implementation {impl!r}; choose from {list(_KNOWN_IMPLS)}")
    B, H = as_count("batch_size", batch_size), as_count("n_heads", n_heads)
    G = as_kv_heads(H, n_kv_heads)
    Tk, D, e = as_count("context", context), as_count("head_dim", head_dim), as_count("elem_bytes", elem_bytes)
    math_sdpa = _flag("math_sdpa", math_sdpa)
    workspace = as_count("workspace_bytes", workspace_bytes, minimum=0)
    total = B * H * D * e + 4 * B * H * D * _MATH_BYTES + SCORE_BYTES * B * H * Tk + workspace
    repeated = 2 * B * H * Tk * D * e if G < H else 0
    if impl == "grouped" and math_sdpa:
        total += _math_sdpa_bytes(B, G, G, Tk, D, e)  # folded query rows: G heads, no enable_gqa
    elif impl == "sdpa" and (G < H or math_sdpa):
        total += _math_sdpa_bytes(B, H, G, Tk, D, e)
    elif impl == "sdpa_repeat_kv":
        total += repeated + (_math_sdpa_bytes(B, H, H, Tk, D, e) if math_sdpa else 0)
    elif impl == "repeat_kv":
        total += 2 * B * H * Tk * D * e
    elif impl == "grouped_matmul":
        total += 2 * B * G * Tk * D * e
    return total


def attention_parts(
    batch_size: int, n_heads: int, n_kv_heads: int, head_dim: int, context: int, elem_bytes: int,
    implementations=CH5_IMPLEMENTATIONS, spare_positions: int = 0, *, math_sdpa: bool = False,
    workspace_bytes: int = WORKSPACE_BYTES,
) -> dict[str, int]:
    """Bytes the decode-attention timing of ONE G holds at once, by part.

    * ``"q"``: the query (B, H, 1, D);
    * ``"k_v"``: K and V (B, G, context + spare_positions, D), the buffers
      :func:`gqa_lib.speed.bench.bench_attention_decode` slices Tk = context from;
    * ``"call"``: the largest :func:`attention_call_bytes` over ``implementations``
      (calls run one after another, never together).

    ``q`` and ``k_v`` are exactly the ``nbytes`` of the tensors the benchmark
    builds in a dtype of ``elem_bytes`` bytes; ``call`` is an upper bound.
    """
    B, H = as_count("batch_size", batch_size), as_count("n_heads", n_heads)
    G = as_kv_heads(H, n_kv_heads)
    D, Tk, e = as_count("head_dim", head_dim), as_count("context", context), as_count("elem_bytes", elem_bytes)
    spare = as_count("spare_positions", spare_positions, minimum=0)
    impls = _impls(implementations)
    return {
        "q": B * H * D * e,
        "k_v": 2 * B * G * (Tk + spare) * D * e,
        "call": max(attention_call_bytes(i, B, H, G, Tk, D, e, math_sdpa=math_sdpa, workspace_bytes=workspace_bytes)
                    for i in impls),
    }


def attention_peak_bytes(
    batch_size: int, n_heads: int, head_dim: int, context: int, elem_bytes: int, groups=None,
    implementations=CH5_IMPLEMENTATIONS, spare_positions: int = 0, *, math_sdpa: bool = False,
    workspace_bytes: int = WORKSPACE_BYTES,
) -> int:
    """Peak device bytes of timing decode attention for every G in ``groups``, ONE G alive at a time.

    The largest sum of :func:`attention_parts` over G (default: every divisor
    of ``n_heads``). Assumes the benchmark builds q, K, V of one G, times all
    implementations on them and frees them before the next G (today's
    :func:`gqa_lib.speed.bench.bench_attention_decode` builds every G first: 1 + 2 +
    ... + H heads of K/V at once, about twice this for H = 32). Timing every
    G against one MHA-sized K/V buffer (views of its first B*G*T*D elements,
    as the DecodeExplorer does) would hold H heads for every G instead.
    """
    H = as_count("n_heads", n_heads)
    return max(
        sum(attention_parts(batch_size, H, g, head_dim, context, elem_bytes, implementations, spare_positions,
                            math_sdpa=math_sdpa, workspace_bytes=workspace_bytes).values())
        for g in _groups(H, groups)
    )


def attention_plan(
    free_bytes: int, bf16_supported: bool, *, batch_size: int = 8, n_heads: int = 32, head_dim: int = 128,
    context: int = 8192, min_context: int = 1024, sweep_contexts=CH5_SWEEP_CONTEXTS,
    implementations=CH5_IMPLEMENTATIONS, fraction: float = GPU_BUDGET_FRACTION,
) -> dict:
    """Chapter 5's decode-attention table and context sweep on a GPU with ``free_bytes`` free.

    Starts from today's sizes (B=8, H=32, D=128, CONTEXT=8192, sweep up to
    32768) and shrinks deterministically until both fit in ``fraction`` of
    ``free_bytes``: first the sweep's longest context (down to CONTEXT), then
    CONTEXT with it (halved down to ``min_context``), then the batch (halved
    down to 1). The sweep (``grouped`` only) keeps every context of
    ``sweep_contexts`` up to the longest that fits; once the batch has had to
    shrink, it stops at ``min_context``. ValueError naming ``free_bytes`` if
    even B=1 at ``min_context`` does not fit.

    Returns ``batch_size``, ``n_heads``, ``head_dim``, ``context``,
    ``sweep_contexts`` (list), ``dtype``, ``elem_bytes``, ``implementations``,
    ``table_peak_bytes``, ``sweep_peak_bytes``, ``peak_bytes`` (the larger;
    bytes), ``budget_bytes``, ``free_bytes``, and ``kwargs`` / ``sweep_kwargs``:
    the keyword arguments of ``bench_attention_decode`` / ``sweep_attention_decode``.
    """
    free = _free(free_bytes)
    dtype = decode_dtype(bf16_supported)
    e = element_bytes(dtype)
    budget = budget_bytes(free, fraction)
    B0, H, D = as_count("batch_size", batch_size), as_count("n_heads", n_heads), as_count("head_dim", head_dim)
    C0, cmin = as_count("context", context), as_count("min_context", min_context)
    impls = _impls(implementations)
    ladder = sorted({as_count("sweep context", c) for c in sweep_contexts})
    if cmin > C0 or not ladder or ladder[0] > cmin:
        raise ValueError(
            f"need min_context <= context and a sweep context <= min_context; got context={C0}, "
            f"min_context={cmin}, sweep_contexts={list(sweep_contexts)}"
        )
    contexts = _halvings(C0, cmin)
    tops = [s for s in reversed(ladder) if s >= C0] or [C0]
    chain = [(B0, C0, s) for s in tops]  # the sweep shrinks first, down to CONTEXT
    chain += [(B0, c, c) for c in contexts[1:]]  # then CONTEXT and the sweep together
    chain += [(b, contexts[-1], contexts[-1]) for b in _halvings(B0, 1)[1:]]  # then the batch

    def table(B, c):
        return attention_peak_bytes(B, H, D, c, e, None, impls)

    def sweep(B, s):
        return attention_peak_bytes(B, H, D, s, e, None, ("grouped",))

    B, C, top = _first_fitting(chain, lambda st: max(table(st[0], st[1]), sweep(st[0], st[2])), budget, free,
                               "chapter 5's attention table and sweep")
    if B == B0:  # the longest sweep context that fits at this batch
        top = max([s for s in ladder if s >= top and sweep(B, s) <= budget], default=top)
    swept = [s for s in ladder if s <= top]
    table_peak, sweep_peak = table(B, C), sweep(B, max(swept))
    return {
        "batch_size": B, "n_heads": H, "head_dim": D, "context": C, "sweep_contexts": swept, "dtype": dtype,
        "elem_bytes": e, "implementations": list(impls), "table_peak_bytes": table_peak,
        "sweep_peak_bytes": sweep_peak, "peak_bytes": max(table_peak, sweep_peak), "budget_bytes": budget,
        "free_bytes": free,
        "kwargs": dict(batch_size=B, n_heads=H, head_dim=D, context=C, dtype=dtype),
        "sweep_kwargs": dict(contexts=list(swept), batch_size=B, n_heads=H, head_dim=D, dtype=dtype),
    }


# ----------------------------------------------------------------------------- whole-model decode


def transformer_parameters(
    vocab_size: int, d_model: int, n_layers: int, n_heads: int, n_kv_heads: int, d_ff: int,
    tie_word_embeddings: bool = True,
) -> int:
    """Parameters of a :class:`gqa_lib.TransformerLM` (a miniature Llama, bias-free attention).

    The token embedding (and an untied output head of the same size), per
    layer two RMSNorm weight vectors, q/o projections d x d, k/v projections
    d x G*D and the SwiGLU MLP (three matrices d x d_ff), and the final
    RMSNorm. RoPE has no parameters, so the context length does not count.
    """
    V, d, L = as_count("vocab_size", vocab_size), as_count("d_model", d_model), as_count("n_layers", n_layers)
    H, G, F = as_count("n_heads", n_heads), as_count("n_kv_heads", n_kv_heads), as_count("d_ff", d_ff)
    if d % H or H % G:
        raise ValueError(f"need n_heads | d_model and n_kv_heads | n_heads; got d_model={d}, H={H}, G={G}")
    kv_width = G * (d // H)
    block = 2 * d + 2 * d * d + 2 * d * kv_width + 3 * d * F
    embeddings = V * d if tie_word_embeddings else 2 * V * d
    return embeddings + L * block + d


def _decode_activation_bytes(
    batch_size: int, d_model: int, d_ff: int, vocab_size: int, n_heads: int, n_kv_heads: int, tk: int,
    head_dim: int, elem: int, implementations, math_sdpa: bool, workspace_bytes: int,
) -> int:
    """Bytes one decoding step holds beyond weights and cache (an upper bound, fp32 for every activation).

    Per token, 16 residual-width and 4 MLP-width fp32 vectors and 3 copies of
    the logits, plus the largest attention call of one layer over ``tk`` keys.
    """
    per_token = (16 * d_model + 4 * d_ff + 3 * vocab_size) * _MATH_BYTES
    call = max(
        attention_call_bytes(i, batch_size, n_heads, n_kv_heads, tk, head_dim, elem, math_sdpa=math_sdpa,
                             workspace_bytes=workspace_bytes)
        for i in implementations
    )
    return batch_size * per_token + call


def model_parts(
    d_model: int, n_layers: int, d_ff: int, batch_size: int, context: int, elem_bytes: int, n_heads: int = 32,
    n_kv_heads: int | None = None, vocab_size: int = 256, new_tokens: int = 64, implementations=("grouped",),
    *, math_sdpa: bool = False, workspace_bytes: int = WORKSPACE_BYTES,
) -> dict[str, int]:
    """Bytes one G's decoding step holds at once (the setup of :func:`gqa_lib.speed.bench.decode_step_model`), by part.

    * ``"weights"``: every parameter of the TransformerLM with ``max_seq_len =
      context + new_tokens``, at ``elem_bytes`` each (exactly
      ``num_parameters() * element_size()``);
    * ``"cache"``: its KVCache for ``context + new_tokens`` positions
      (exactly ``cache.nbytes``): ``2 * L * B * G * (context + 64) * D * elem_bytes``;
    * ``"activations"``: a margin for one step's activations and the
      largest attention call of a layer over ``context + 1`` keys.

    ``n_kv_heads`` defaults to ``n_heads`` (MHA, the largest).
    """
    d, L, F = as_count("d_model", d_model), as_count("n_layers", n_layers), as_count("d_ff", d_ff)
    B, C, e = as_count("batch_size", batch_size), as_count("context", context), as_count("elem_bytes", elem_bytes)
    H = as_count("n_heads", n_heads)
    G = H if n_kv_heads is None else as_count("n_kv_heads", n_kv_heads)
    V, new = as_count("vocab_size", vocab_size), as_count("new_tokens", new_tokens, minimum=0)
    impls = _impls(implementations)
    math_sdpa = _flag("math_sdpa", math_sdpa)
    max_len = C + new
    params = transformer_parameters(V, d, L, H, G, F)
    D = d // H
    return {
        "weights": params * e,
        "cache": 2 * L * B * G * max_len * D * e,
        "activations": _decode_activation_bytes(B, d, F, V, H, G, C + 1, D, e, impls, math_sdpa, workspace_bytes),
    }


def model_peak_bytes(
    d_model: int, n_layers: int, d_ff: int, batch_size: int, context: int, elem_bytes: int, n_heads: int = 32,
    groups=None, vocab_size: int = 256, new_tokens: int = 64, implementations=("grouped",),
    *, math_sdpa: bool = False, workspace_bytes: int = WORKSPACE_BYTES,
) -> int:
    """Peak device bytes of :func:`gqa_lib.speed.bench.bench_model_decode` with ONE G's model and cache alive at a time.

    The largest sum of :func:`model_parts` over ``groups`` (default: every
    divisor of ``n_heads``): weights + a cache of ``context + new_tokens``
    positions + an activations margin; the MHA one (G = H) is the largest.
    Today's ``bench_model_decode`` builds every (G, implementation) first and
    times them interleaved: for G in 1..32 that holds six models and 63 heads
    of cache at once, about twice the MHA cache. It must build, time and free
    one G at a time (``del model, cache, step`` before the next) for this
    bound to hold.
    """
    H = as_count("n_heads", n_heads)
    return max(
        sum(model_parts(d_model, n_layers, d_ff, batch_size, context, elem_bytes, H, g, vocab_size, new_tokens,
                        implementations, math_sdpa=math_sdpa, workspace_bytes=workspace_bytes).values())
        for g in _groups(H, groups)
    )


def model_plan(
    free_bytes: int, bf16_supported: bool, *, n_heads: int = 32, d_model: int = 4096, n_layers: int = 4,
    d_ff: int = 4096, batch_size: int = 16, context: int = 8192, min_context: int = 1024, groups=None,
    vocab_size: int = 256, implementations=("grouped",), fraction: float = GPU_BUDGET_FRACTION,
    what: str = "chapter 5's whole-model decode benchmark",
) -> dict:
    """The whole-model decode benchmark (:func:`gqa_lib.speed.bench.bench_model_decode`) on a GPU with ``free_bytes`` free.

    Keeps the model's shape (d_model, n_layers, d_ff, H) and starts from
    today's batch and context (chapter 5: d_model 4096, 4 layers, d_ff 4096,
    batch 16, context 8192); halves the context down to ``min_context``, then
    the batch down to 1, until :func:`model_peak_bytes` fits in ``fraction``
    of ``free_bytes``. ValueError naming ``free_bytes`` if nothing fits.

    Returns the sizes, ``dtype``, ``elem_bytes``, ``groups``, ``peak_bytes``,
    ``budget_bytes``, ``free_bytes`` and ``kwargs``: the keyword arguments to
    pass to ``bench_model_decode`` (with ``n_heads``, ``device``, ``groups``).
    """
    free = _free(free_bytes)
    dtype = decode_dtype(bf16_supported)
    e = element_bytes(dtype)
    budget = budget_bytes(free, fraction)
    H, d = as_count("n_heads", n_heads), as_count("d_model", d_model)
    L, F = as_count("n_layers", n_layers), as_count("d_ff", d_ff)
    B0, C0 = as_count("batch_size", batch_size), as_count("context", context)
    cmin = as_count("min_context", min_context)
    if cmin > C0:
        raise ValueError(f"min_context={cmin} must be <= context={C0}")
    groups = _groups(H, groups)
    impls = _impls(implementations)
    contexts = _halvings(C0, cmin)
    chain = [(B0, c) for c in contexts] + [(b, contexts[-1]) for b in _halvings(B0, 1)[1:]]

    def peak(state):
        return model_peak_bytes(d, L, F, state[0], state[1], e, H, groups, vocab_size, 64, impls)

    B, C = _first_fitting(chain, peak, budget, free, what)
    kwargs = dict(d_model=d, n_layers=L, d_ff=F, vocab_size=vocab_size, batch_size=B, context=C, dtype=dtype)
    return {
        "n_heads": H, "d_model": d, "n_layers": L, "d_ff": F, "batch_size": B, "context": C, "groups": groups,
        "vocab_size": vocab_size, "dtype": dtype, "elem_bytes": e, "peak_bytes": peak((B, C)),
        "budget_bytes": budget, "free_bytes": free, "kwargs": kwargs,
    }


# ----------------------------------------------------------------------------- the explorer, chapter 1, training


def explorer_memory_parts(
    batch_size: int, context: int, elem_bytes: int, n_heads: int = 32, head_dim: int = 128,
    spare_positions: int = 64,
) -> dict[str, int]:
    """Bytes the DecodeExplorer's MHA-sized timing holds at once, by part (its memory guard sums them).

    * ``"k_v"``: K and V of all H heads over ``context + spare_positions``
      cache positions (the cache the G heads are sliced from), ``elem_bytes`` each;
    * ``"q"``: the query, a scaled copy of it and the output, each (B, H, 1, D);
    * ``"scores"``: the scores of all H heads over ``context`` keys, held at
      most three times at once in fp32 (scores, the fp32 copy a bf16/fp16
      softmax takes, the fp32 weights), as the plain matmul path holds them;
      an upper bound for the fused kernel, which keeps far less.

    For the sizes the explorer offers, K/V are over 95% of the total.
    """
    B, C, e = as_count("batch_size", batch_size), as_count("context", context), as_count("elem_bytes", elem_bytes)
    H, D = as_count("n_heads", n_heads), as_count("head_dim", head_dim)
    spare = as_count("spare_positions", spare_positions, minimum=0)
    return {"k_v": 2 * B * H * (C + spare) * D * e, "q": 3 * B * H * D * e, "scores": 3 * B * H * C * 4}


def explorer_peak_bytes(
    batch_size: int, context: int, elem_bytes: int, n_heads: int = 32, head_dim: int = 128,
    spare_positions: int = 64,
) -> int:
    """Bytes the DecodeExplorer's timing holds at once: the sum of :func:`explorer_memory_parts`."""
    return sum(explorer_memory_parts(batch_size, context, elem_bytes, n_heads, head_dim, spare_positions).values())


def explorer_plan(free_bytes: int, bf16_supported: bool, *, fraction: float = GPU_BUDGET_FRACTION) -> dict:
    """The DecodeExplorer's starting state in chapter 5: Llama 2 7B shape, G=8, batch 1, the plan's dtype.

    The context is the longest of 256 .. 8192 (today's GPU start) whose
    timing fits both the budget and the explorer's own guard (half the free
    memory). The reader can still move the sliders; the explorer refuses
    what does not fit.
    """
    free = _free(free_bytes)
    dtype = decode_dtype(bf16_supported)
    e = element_bytes(dtype)
    budget = min(budget_bytes(free, fraction), free // 2)
    x = CH5_EXPLORER

    def peak(c):
        return explorer_peak_bytes(x["batch_size"], c, e, x["n_heads"], x["head_dim"], x["spare_positions"])

    C = _first_fitting(list(reversed(CH5_EXPLORER_CONTEXTS)), peak, budget, free, "chapter 5's DecodeExplorer")
    kwargs = dict(preset=x["preset"], G=x["G"], context=C, batch_size=x["batch_size"], dtype=dtype)
    return {"context": C, "batch_size": x["batch_size"], "dtype": dtype, "elem_bytes": e, "peak_bytes": peak(C),
            "budget_bytes": budget, "free_bytes": free, "kwargs": kwargs}


def roofline_plan(free_bytes: int, *, fraction: float = GPU_BUDGET_FRACTION) -> dict:
    """Chapter 1's measured roofline (fp32 throughout: its prose asserts 268 MB of fp32 K/V).

    Three steps, one after another: the streaming-read buffer (256 MiB), an
    n x n fp32 matmul (a, b and the product; n = 4096 on a GPU, halved to
    1024 if need be) and the decode attention over ``k_all``/``v_all``
    (1, 8, 32768, 128) fp32 with q, output and scores. ``peak_bytes`` is
    the largest step. The K/V size is fixed by the text: ValueError naming
    ``free_bytes`` if it does not fit.
    """
    free = _free(free_bytes)
    budget = budget_bytes(free, fraction)
    x = CH1_DECODE
    kv = 2 * 1 * x["n_kv_heads"] * x["positions"] * x["head_dim"] * 4
    calls = [  # (1) MHA view G=32 over 8192 positions; (2), (3) G=8 over 8192 and 32768
        attention_call_bytes("grouped", 1, x["n_heads"], g, t, x["head_dim"], 4)
        for g, t in ((x["n_heads"], x["positions"] // 4), (x["n_kv_heads"], x["positions"]))
    ]
    decode = kv + x["n_heads"] * x["head_dim"] * 4 + max(calls)  # K/V, q, the largest call

    def peak(n):
        return max(CH1_BANDWIDTH_BYTES, 3 * n * n * 4, decode)

    n = _first_fitting(list(CH1_MATMUL_N), peak, budget, free, "chapter 1's roofline")
    return {"matmul_n": n, "bandwidth_bytes": CH1_BANDWIDTH_BYTES, "kv_bytes": kv, "dtype": "float32",
            "elem_bytes": 4, "peak_bytes": peak(n), "budget_bytes": budget, "free_bytes": free,
            "kwargs": {"n": n}}


def training_peak_bytes(
    batch_size: int, seq_len: int, vocab_size: int, d_model: int, n_layers: int, n_heads: int, n_kv_heads: int,
    d_ff: int, *, train: bool = True, models: int = 1,
) -> int:
    """Bytes (host or device) of a training step (``train=True``) or an evaluation batch of a TransformerLM, fp32.

    Training: parameter, gradient and AdamW's two moments (16 bytes per
    parameter) and the activations autograd keeps for every layer;
    evaluation (no autograd): ``models`` models' parameters (4 bytes each)
    and one layer's activations at a time. An upper bound (checked against
    CPU measurements): per token and layer 16 residual-width and 4 MLP-width
    fp32 vectors, 4 copies of the logits, and 2 fp32 score tensors per layer.
    """
    B, T, V = as_count("batch_size", batch_size), as_count("seq_len", seq_len), as_count("vocab_size", vocab_size)
    d, L, H = as_count("d_model", d_model), as_count("n_layers", n_layers), as_count("n_heads", n_heads)
    G, F = as_count("n_kv_heads", n_kv_heads), as_count("d_ff", d_ff)
    models = as_count("models", models)
    params = transformer_parameters(V, d, L, H, G, F)
    state = 16 * params if _flag("train", train) else 4 * params * models
    layers = L if train else 1  # autograd keeps every layer's activations; evaluation one layer's
    activations = 4 * B * T * (layers * (16 * d + 4 * F) + 4 * V) + layers * 2 * 4 * B * H * T * T
    return state + activations


# ----------------------------------------------------------------------------- every chapter


def chapter_plans(free_bytes: int, bf16_supported: bool, *, fraction: float = GPU_BUDGET_FRACTION) -> dict[str, dict]:
    """Every chapter's GPU plan for a device with ``free_bytes`` free (bytes) and native bf16 or not.

    Keys (run in this order; each plan's ``peak_bytes`` is what that step
    holds at once, and the steps never overlap):

    * ``ch1_roofline``: streaming-read buffer, fp32 matmul n, 268 MB of fp32 K/V;
    * ``ch3_live``: the live MHA-vs-MQA timing (B=4, H=16, D=64, Tk=2048, fp32; fixed by the prose);
    * ``ch5_attention``, ``ch5_sweep``: :func:`attention_plan`'s table and sweep;
    * ``ch5_profile``: the operator profile (G=8 at the table's B and CONTEXT; sdpa, folded, repeat_kv + sdpa);
    * ``ch5_bandwidth``: the 512 MiB streaming-read buffer;
    * ``ch5_explorer``: :func:`explorer_plan`;
    * ``ch5_model``: :func:`model_plan` (d_model 4096, 4 layers, d_ff 4096);
    * ``ch6_eval``, ``ch7_uptrain``: the toy experiments, on the CPU (their models never move to the GPU);
    * ``ch8_model``: :func:`model_plan` with H=8, d_model 1024, 2 layers, d_ff 1024, G in 1, 2, 4, 8.

    Each plan has ``chapter``, ``what``, ``sizes`` (text), ``device``
    (``"cuda"`` or ``"cpu"``), ``dtype``, ``peak_bytes`` and ``kwargs`` (the
    keyword arguments of the call it sizes). ValueError naming
    ``free_bytes`` if any chapter's smallest plan does not fit.
    """
    free = _free(free_bytes)
    bf16 = _flag("bf16_supported", bf16_supported)
    dtype = decode_dtype(bf16)
    budget = budget_bytes(free, fraction)
    plans: dict[str, dict] = {}

    r = roofline_plan(free, fraction=fraction)
    plans["ch1_roofline"] = {
        "chapter": 1, "what": "measured roofline", "device": "cuda", "dtype": "float32",
        "sizes": f"bandwidth buffer 256 MiB; matmul n={r['matmul_n']}; K/V (1, 8, 32768, 128) = 268 MB",
        "peak_bytes": r["peak_bytes"], "kwargs": r["kwargs"],
    }

    c3 = CH3_LIVE
    c3_peak = max(attention_parts(c3["batch_size"], c3["n_heads"], g, c3["head_dim"], c3["context"], 4,
                                  ("grouped",))["call"] for g in c3["groups"])
    c3_peak += c3["batch_size"] * c3["n_heads"] * c3["head_dim"] * 4  # q
    c3_peak += sum(2 * c3["batch_size"] * g * c3["context"] * c3["head_dim"] * 4 for g in c3["groups"])  # both G's K/V
    plans["ch3_live"] = {
        "chapter": 3, "what": "live MHA vs MQA decode timing", "device": "cuda", "dtype": "float32",
        "sizes": "B=4 H=16 D=64 Tk=2048, G in 16, 1", "peak_bytes": c3_peak, "kwargs": dict(c3),
    }

    a = attention_plan(free, bf16, fraction=fraction)
    B, H, D, C = a["batch_size"], a["n_heads"], a["head_dim"], a["context"]
    plans["ch5_attention"] = {
        "chapter": 5, "what": "decode-attention table (5 impls, every G)", "device": "cuda", "dtype": dtype,
        "sizes": f"B={B} H={H} D={D} CONTEXT={C}", "peak_bytes": a["table_peak_bytes"], "kwargs": a["kwargs"],
    }
    profile_peak = attention_peak_bytes(B, H, D, C, a["elem_bytes"], [8], ("sdpa", "grouped", "sdpa_repeat_kv"))
    plans["ch5_profile"] = {
        "chapter": 5, "what": "operator profile, G=8", "device": "cuda", "dtype": dtype,
        "sizes": f"B={B} H={H} G=8 D={D} Tk={C}", "peak_bytes": profile_peak,
        "kwargs": dict(batch_size=B, n_heads=H, n_kv_heads=8, head_dim=D, context=C, dtype=dtype),
    }
    plans["ch5_bandwidth"] = {
        "chapter": 5, "what": "streaming-read bandwidth", "device": "cuda", "dtype": "float32",
        "sizes": "buffer 512 MiB", "peak_bytes": CH5_BANDWIDTH_BYTES, "kwargs": {"n_bytes": CH5_BANDWIDTH_BYTES},
    }
    sweep = a["sweep_contexts"]
    plans["ch5_sweep"] = {
        "chapter": 5, "what": "context sweep (grouped, every G)", "device": "cuda", "dtype": dtype,
        "sizes": f"B={B} contexts {sweep[0]}..{sweep[-1]}", "peak_bytes": a["sweep_peak_bytes"],
        "kwargs": a["sweep_kwargs"],
    }
    x = explorer_plan(free, bf16, fraction=fraction)
    plans["ch5_explorer"] = {
        "chapter": 5, "what": "DecodeExplorer start", "device": "cuda", "dtype": dtype,
        "sizes": f"Llama 2 7B shape, G=8, batch 1, context {x['context']}", "peak_bytes": x["peak_bytes"],
        "kwargs": x["kwargs"],
    }
    m = model_plan(free, bf16, fraction=fraction)
    plans["ch5_model"] = {
        "chapter": 5, "what": "whole-model decode (one G at a time)", "device": "cuda", "dtype": dtype,
        "sizes": f"d_model {m['d_model']}, {m['n_layers']} layers, d_ff {m['d_ff']}, batch {m['batch_size']}, "
                 f"context {m['context']}", "peak_bytes": m["peak_bytes"], "kwargs": m["kwargs"],
    }

    t = TOY_MODEL
    plans["ch6_eval"] = {
        "chapter": 6, "what": "evaluate converted checkpoints (CPU)", "device": "cpu", "dtype": "float32",
        "sizes": f"batch {TOY_EVAL_BATCH} x {t['max_seq_len']} tokens; d_model {t['d_model']}, {t['n_layers']} layers",
        "peak_bytes": training_peak_bytes(TOY_EVAL_BATCH, t["max_seq_len"], t["vocab_size"], t["d_model"],
                                          t["n_layers"], t["n_heads"], t["n_kv_heads"], t["d_ff"], train=False,
                                          models=TOY_SEEDS + 1),
        "kwargs": {"batch_size": TOY_EVAL_BATCH},
    }
    plans["ch7_uptrain"] = {
        "chapter": 7, "what": "uptrain a converted MQA model (CPU)", "device": "cpu", "dtype": "float32",
        "sizes": f"batch {TOY_TRAIN_BATCH} x {t['max_seq_len']} tokens, AdamW",
        "peak_bytes": training_peak_bytes(TOY_TRAIN_BATCH, t["max_seq_len"], t["vocab_size"], t["d_model"],
                                          t["n_layers"], t["n_heads"], 1, t["d_ff"]),
        "kwargs": {"batch_size": TOY_TRAIN_BATCH},
    }
    c8 = CH8_MODEL
    m8 = model_plan(free, bf16, n_heads=c8["n_heads"], d_model=c8["d_model"], n_layers=c8["n_layers"],
                    d_ff=c8["d_ff"], batch_size=c8["batch_size"], context=c8["context"], groups=c8["groups"],
                    vocab_size=c8["vocab_size"], fraction=fraction, what="chapter 8's decode benchmark")
    plans["ch8_model"] = {
        "chapter": 8, "what": "decode step of the experiments' model shape, G in 1, 2, 4, 8", "device": "cuda",
        "dtype": dtype, "sizes": f"H=8, d_model {m8['d_model']}, {m8['n_layers']} layers, d_ff {m8['d_ff']}, "
                 f"batch {m8['batch_size']}, context {m8['context']}", "peak_bytes": m8["peak_bytes"],
        "kwargs": m8["kwargs"],
    }
    for plan in plans.values():
        plan["free_bytes"], plan["budget_bytes"] = free, budget
        if plan["device"] == "cuda" and plan["peak_bytes"] > budget:  # the fixed-size plans
            raise ValueError(
                f"free_bytes={free} ({free / GiB:.2f} GiB) is too little for chapter {plan['chapter']}'s "
                f"{plan['what']}: it needs {plan['peak_bytes']:,} bytes, more than the budget of {budget:,} bytes"
            )
    return plans


def describe_plans(plans: dict[str, dict]) -> str:
    """A Markdown table of :func:`chapter_plans`: chapter, what, sizes, dtype, device, peak GiB (2**30 bytes).

    Headed by the free memory and the budget the plans were made for.
    """
    if not isinstance(plans, dict) or not plans:
        raise ValueError(f"plans must be the non-empty dict chapter_plans returns; got {plans!r}")
    first = next(iter(plans.values()))
    lines = []
    if "free_bytes" in first and "budget_bytes" in first:
        lines += [
            f"Free GPU memory {first['free_bytes'] / GiB:.2f} GiB; each step holds at most "
            f"{first['budget_bytes'] / GiB:.2f} GiB ({GPU_BUDGET_FRACTION:.0%}). Peaks in GiB (2**30 bytes).",
            "",
        ]
    lines += ["| chapter | what | sizes | dtype | device | peak GiB |", "|---|---|---|---|---|---:|"]
    for plan in plans.values():
        lines.append(
            f"| {plan['chapter']} | {plan['what']} | {plan['sizes']} | {plan['dtype']} | {plan['device']} | "
            f"{plan['peak_bytes'] / GiB:.3f} |"
        )
    return "\n".join(lines)


def device_plans(device=None, *, fraction: float = GPU_BUDGET_FRACTION) -> dict[str, dict]:
    """:func:`chapter_plans` for a CUDA device as it is now: its free memory and whether it has native bf16.

    Native bf16 means compute capability 8.0 or newer (or ROCm), what
    ``torch.cuda.is_bf16_supported(including_emulation=False)`` answers; the
    default ``is_bf16_supported()`` also counts emulation and says True on a
    T4 (7.5), which gets fp16 here. ValueError for a device that is not CUDA.
    """
    import torch

    from .timing import available_memory_bytes, pick_device

    device = pick_device(device)
    if device.type != "cuda":
        raise ValueError(f"device_plans sizes GPU branches; got the {device.type} device {device}")
    native_bf16 = bool(torch.version.hip) or torch.cuda.get_device_capability(device)[0] >= 8
    return chapter_plans(available_memory_bytes(device), native_bf16, fraction=fraction)
