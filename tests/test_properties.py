"""Property-based tests (hypothesis) of the core: attention, KV cache, model, conversion, validation.

Every attention implementation is held to an independent float64 reference
written here (plain loops, explicit softmax, explicit bottom-right causal
mask) over random shapes, dtypes and memory layouts. Shapes stay small so
the whole file runs in well under a minute on two CPU cores.
"""

from __future__ import annotations

import math
from decimal import Decimal
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from gqa_lib import GroupedQueryAttention, KVCache, TransformerConfig, TransformerLM, kv_cache_bytes
from gqa_lib.core.attention import ATTENTION_IMPLEMENTATIONS, grouped_attention, grouped_matmul_attention
from gqa_lib.core.rope import apply_rope, rope_cos_sin
from gqa_lib.recipe.convert import convert_to_gqa

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --------------------------------------------------------------------------------------------
# The independent reference
# --------------------------------------------------------------------------------------------


def reference_attention(q, k, v, causal):
    """float64 attention, one (batch, query head, query position) at a time.

    Query head h reads KV head h // (H // G). Causal queries are the *last* Tq
    of the Tk positions, so query i (absolute position Tk - Tq + i) sees keys
    0 .. Tk - Tq + i. Softmax written out with the max subtracted.
    Differentiable (plain torch ops), so it also serves as a gradient reference.
    """
    q, k, v = q.to(torch.float64), k.to(torch.float64), v.to(torch.float64)
    B, H, Tq, D = q.shape
    G, Tk = k.shape[1], k.shape[2]
    R = H // G
    rows = []
    for b in range(B):
        heads = []
        for h in range(H):
            g = h // R
            outs = []
            for i in range(Tq):
                last = Tk - Tq + i if causal else Tk - 1  # last key this query may see
                scores = (k[b, g, : last + 1] @ q[b, h, i]) / math.sqrt(D)  # (last+1,)
                e = torch.exp(scores - scores.max())
                weights = e / e.sum()
                outs.append(weights @ v[b, g, : last + 1])  # (D,)
            heads.append(torch.stack(outs) if outs else q.new_zeros(0, D))
        rows.append(torch.stack(heads) if heads else q.new_zeros(0, Tq, D))
    return torch.stack(rows) if rows else q.new_zeros(0, H, Tq, D)


# --------------------------------------------------------------------------------------------
# Tensors in many memory layouts
# --------------------------------------------------------------------------------------------

LAYOUTS = ("contiguous", "bthd_transposed", "cache_slice", "expanded_batch", "dt_transposed", "strided_heads")


def make_tensor(shape, layout, dtype, gen, scale=1.0):
    """A tensor of logical shape (B, heads, T, D) with the given memory layout.

    The values are drawn in float64 and cast to ``dtype`` *before* the layout
    is made, so the layout survives the cast.
    """
    B, N, T, D = shape

    def randn(*s):
        return (scale * torch.randn(*s, generator=gen, dtype=torch.float64)).to(dtype)

    if layout == "contiguous":
        t = randn(B, N, T, D)
    elif layout == "bthd_transposed":  # what a projection gives: (B, T, heads, D) -> (B, heads, T, D)
        t = randn(B, T, N, D).transpose(1, 2)
    elif layout == "cache_slice":  # a slice of a longer preallocated cache along T
        t = randn(B, N, T + 3, D)[:, :, 2 : 2 + T]
    elif layout == "expanded_batch":  # stride 0 along the batch
        t = randn(1, N, T, D).expand(B, N, T, D)
    elif layout == "dt_transposed":  # T is the fastest-moving dimension
        t = randn(B, N, D, T).transpose(-1, -2)
    elif layout == "strided_heads":  # every other head of a wider tensor
        t = randn(B, 2 * N, T, D)[:, ::2]
    else:
        raise AssertionError(layout)
    assert t.shape == shape
    return t


TOLERANCES = {
    torch.float64: dict(atol=1e-10, rtol=1e-10),
    torch.float32: dict(atol=1e-5, rtol=1e-5),
    # measured worst cases over 400 random draws: bf16 1.5e-2, fp16 1.1e-3 (about 2 eps)
    torch.float16: dict(atol=5e-3, rtol=5e-3),
    torch.bfloat16: dict(atol=5e-2, rtol=5e-2),
}


@st.composite
def attention_problems(draw, batch=st.integers(0, 3)):
    B = draw(batch)
    G = draw(st.integers(1, 3))
    H = G * draw(st.integers(1, 3))
    causal = draw(st.booleans())
    Tk = draw(st.integers(1, 6))
    Tq = draw(st.integers(0, Tk)) if causal else draw(st.integers(0, 6))
    D = draw(st.integers(1, 8))
    layouts = [draw(st.sampled_from(LAYOUTS)) for _ in range(3)]
    seed = draw(st.integers(0, 2**32 - 1))
    return (B, H, G, Tq, Tk, D), causal, layouts, seed


def build_qkv(shape, layouts, dtype, seed, scale=1.0):
    B, H, G, Tq, Tk, D = shape
    gen = torch.Generator().manual_seed(seed)
    q = make_tensor((B, H, Tq, D), layouts[0], dtype, gen, scale)
    k = make_tensor((B, G, Tk, D), layouts[1], dtype, gen, scale)
    v = make_tensor((B, G, Tk, D), layouts[2], dtype, gen, scale)
    return q, k, v


# --------------------------------------------------------------------------------------------
# 1. Every implementation equals the reference
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("name", sorted(ATTENTION_IMPLEMENTATIONS))
@settings(max_examples=60, **SETTINGS)
@given(problem=attention_problems())
def test_every_implementation_equals_float64_reference(name, dtype, problem):
    """Random B (0 included: an empty batch gives an empty output), H, G | H, Tq (0 included), Tk, D,
    causal or not, every dtype and non-contiguous layouts of q, k and v."""
    shape, causal, layouts, seed = problem
    B, H, G, Tq, Tk, D = shape
    q, k, v = build_qkv(shape, layouts, dtype, seed)
    expected = reference_attention(q, k, v, causal)
    got = ATTENTION_IMPLEMENTATIONS[name](q, k, v, causal=causal)
    assert got.shape == (B, H, Tq, D)
    assert got.dtype == dtype
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got.to(torch.float64), expected, **TOLERANCES[dtype])


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("name", sorted(ATTENTION_IMPLEMENTATIONS))
def test_empty_batch_and_no_queries_give_empty_outputs(name, causal):
    """B = 0 and Tq = 0 are accepted (nothing in the contract refuses them): the output is empty, of the
    right shape and dtype. Tk = 0 and D = 0 are refused (tests/test_core_edges.py)."""
    fn = ATTENTION_IMPLEMENTATIONS[name]
    out = fn(torch.zeros(0, 6, 2, 4, dtype=torch.float64), torch.zeros(0, 3, 5, 4, dtype=torch.float64),
             torch.zeros(0, 3, 5, 4, dtype=torch.float64), causal=causal)
    assert out.shape == (0, 6, 2, 4) and out.dtype == torch.float64
    out = fn(torch.zeros(2, 6, 0, 4, dtype=torch.bfloat16), torch.zeros(2, 3, 5, 4, dtype=torch.bfloat16),
             torch.zeros(2, 3, 5, 4, dtype=torch.bfloat16), causal=causal)
    assert out.shape == (2, 6, 0, 4) and out.dtype == torch.bfloat16


@settings(max_examples=30, **SETTINGS)
@given(problem=attention_problems(batch=st.integers(1, 2)))
def test_layout_does_not_change_the_result(problem):
    """The same values in a non-contiguous layout give the same output as their contiguous copy (fp64)."""
    shape, causal, layouts, seed = problem
    q, k, v = build_qkv(shape, layouts, torch.float64, seed)
    for name, fn in ATTENTION_IMPLEMENTATIONS.items():
        strided = fn(q, k, v, causal=causal)
        dense = fn(q.contiguous(), k.contiguous(), v.contiguous(), causal=causal)
        torch.testing.assert_close(strided, dense, atol=1e-12, rtol=1e-12, msg=name)


# --------------------------------------------------------------------------------------------
# 2. Gradients
# --------------------------------------------------------------------------------------------

GRAD_SHAPES = [
    # B, H, G, Tq, Tk, D
    (1, 4, 2, 1, 5, 3),  # decode: one query against a cache
    (2, 4, 1, 4, 4, 2),  # prefill, MQA
    (1, 6, 3, 3, 5, 2),  # a chunk of queries after a cached prefix
    (1, 2, 2, 3, 3, 4),  # MHA
]


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("shape", GRAD_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("fn", [grouped_attention, grouped_matmul_attention], ids=lambda f: f.__name__)
def test_gradcheck_float64(fn, shape, causal):
    gen = torch.Generator().manual_seed(sum(shape) + causal)
    B, H, G, Tq, Tk, D = shape
    q = torch.randn(B, H, Tq, D, dtype=torch.float64, generator=gen, requires_grad=True)
    k = torch.randn(B, G, Tk, D, dtype=torch.float64, generator=gen, requires_grad=True)
    v = torch.randn(B, G, Tk, D, dtype=torch.float64, generator=gen, requires_grad=True)
    assert torch.autograd.gradcheck(lambda q, k, v: fn(q, k, v, causal=causal), (q, k, v))


@pytest.mark.parametrize("fn", [grouped_attention, grouped_matmul_attention], ids=lambda f: f.__name__)
def test_gradcheck_float64_strided_inputs(fn):
    """Gradients flow through non-contiguous q, k, v (projection layout, a cache slice)."""
    gen = torch.Generator().manual_seed(7)
    q_base = torch.randn(1, 3, 4, 2, dtype=torch.float64, generator=gen, requires_grad=True)  # (B, T, H, D)
    kv_base = torch.randn(2, 1, 2, 6, 2, dtype=torch.float64, generator=gen, requires_grad=True)

    def f(q_base, kv_base):
        q = q_base.transpose(1, 2)  # (B, H, T, D), strided
        k, v = kv_base[0, :, :, 1:5], kv_base[1, :, :, 1:5]  # slices of a longer "cache"
        return fn(q, k, v, causal=True)

    assert torch.autograd.gradcheck(f, (q_base, kv_base))


@settings(max_examples=30, **SETTINGS)
@given(problem=attention_problems(batch=st.integers(1, 2)))
def test_float32_gradients_of_fast_path_equal_plain_path_and_reference(problem):
    shape, causal, layouts, seed = problem
    assume(shape[3] >= 1)  # Tq = 0: nothing to differentiate
    q0, k0, v0 = build_qkv(shape, layouts, torch.float32, seed)
    upstream = torch.randn(q0.shape, generator=torch.Generator().manual_seed(seed + 1))
    grads = {}
    for name, fn in (("fast", grouped_attention), ("plain", grouped_matmul_attention), ("ref", reference_attention)):
        q, k, v = (t.detach().clone().requires_grad_(True) for t in (q0, k0, v0))
        out = fn(q, k, v, causal=causal)
        (out.to(torch.float64) * upstream.to(torch.float64)).sum().backward()
        grads[name] = (q.grad, k.grad, v.grad)
    for a, b, c in zip(grads["fast"], grads["plain"], grads["ref"]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(a, c, atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------------------------
# 3. fp16: scores that overflow before scaling but fit after
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["grouped", "grouped_matmul", "repeat_kv"])
@settings(max_examples=15, **SETTINGS)
@given(
    B=st.integers(1, 2),
    G=st.integers(1, 2),
    R=st.integers(1, 3),
    Tk=st.integers(1, 5),
    data=st.data(),
)
def test_fp16_scores_that_overflow_unscaled_stay_finite_and_exact(name, B, G, R, Tk, data):
    """Entries +-32 with D = 64: a query row equal to a key row gives q.k = 65536 > 65504 (fp16 max),
    but q.k / sqrt(64) = 8192 fits. Every score is a multiple of 256 after scaling, so ties are exact
    and the softmax is an average over the best keys; fp16 must match the fp64 reference."""
    D, H = 64, G * R
    causal = data.draw(st.booleans())
    Tq = data.draw(st.integers(1, Tk)) if causal else data.draw(st.integers(1, 4))
    seed = data.draw(st.integers(0, 2**32 - 1))
    gen = torch.Generator().manual_seed(seed)
    signs = lambda *s: torch.randint(0, 2, s, generator=gen).mul(2).sub(1)  # noqa: E731
    k = (32 * signs(B, G, Tk, D)).to(torch.float16)
    # every query row copies key 0 of its group (visible to every causal query), some rows flipped in a few places
    q = k[:, :, :1].repeat_interleave(R, dim=1).expand(B, H, Tq, D).clone()
    flips = torch.rand(B, H, Tq, D, generator=gen) < 0.1
    flips[..., 0, :] = False  # the first query of every head keeps an exact copy: its score overflows unscaled
    q = torch.where(flips, -q, q)
    v = torch.randn(B, G, Tk, D, generator=gen).to(torch.float16)
    raw = q.float() @ k.float().repeat_interleave(R, dim=1).transpose(-1, -2)
    assert raw.max() > torch.finfo(torch.float16).max  # the unscaled product would overflow fp16
    got = ATTENTION_IMPLEMENTATIONS[name](q, k, v, causal=causal)
    assert got.dtype == torch.float16
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got.double(), reference_attention(q, k, v, causal), atol=2e-3, rtol=2e-3)


# --------------------------------------------------------------------------------------------
# 4. Cache path equals full path
# --------------------------------------------------------------------------------------------


def random_model(n_heads, n_kv_heads, head_dim, n_layers, impl, seed, dtype=torch.float64, max_seq_len=16):
    torch.manual_seed(seed)
    cfg = TransformerConfig(
        vocab_size=11,
        max_seq_len=max_seq_len,
        d_model=n_heads * head_dim,
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        d_ff=16,
        attn_impl=impl,
    )
    model = TransformerLM(cfg).to(dtype)
    with torch.no_grad():  # weights far from the tiny init, so that positions and heads matter
        for p in model.parameters():
            p.add_(0.5 * torch.randn_like(p))
    return model.eval()


@settings(max_examples=30, **SETTINGS)
@given(
    H=st.sampled_from([1, 2, 4, 6]),
    data=st.data(),
)
def test_cache_path_in_random_chunks_equals_full_forward(H, data):
    G = data.draw(st.sampled_from([g for g in range(1, H + 1) if H % g == 0]), label="G")
    head_dim = data.draw(st.sampled_from([2, 4, 6]), label="head_dim")  # RoPE: even
    n_layers = data.draw(st.integers(1, 2), label="n_layers")
    impl = data.draw(st.sampled_from(sorted(ATTENTION_IMPLEMENTATIONS)), label="impl")
    B = data.draw(st.integers(1, 2), label="B")
    T = data.draw(st.integers(1, 12), label="T")
    cuts = data.draw(st.sets(st.integers(1, T - 1), max_size=T - 1) if T > 1 else st.just(set()), label="cuts")
    seed = data.draw(st.integers(0, 2**16), label="seed")
    model = random_model(H, G, head_dim, n_layers, impl, seed)
    idx = torch.randint(0, 11, (B, T), generator=torch.Generator().manual_seed(seed))
    bounds = [0, *sorted(cuts), T]
    with torch.no_grad():
        full = model(idx)
        cache = model.new_cache(B, max_len=T)
        chunks = [model(idx[:, a:b], cache=cache) for a, b in zip(bounds, bounds[1:])]
    assert cache.lengths == [T] * n_layers
    torch.testing.assert_close(torch.cat(chunks, dim=1), full, atol=1e-10, rtol=1e-10)
    # the keys the cache holds are the ones a full pass computes, rotated by RoPE (layer 0: from the embeddings)
    attn0 = model.layers[0].self_attn
    with torch.no_grad():
        x = model.layers[0].input_layernorm(model.model.embed_tokens(idx))  # (B, T, d_model)
        k0 = attn0.k_proj(x).view(B, T, G, head_dim).transpose(1, 2)  # (B, G, T, D), not yet rotated
        k0 = apply_rope(k0, *rope_cos_sin(torch.arange(T), head_dim, dtype=k0.dtype))
    torch.testing.assert_close(cache.keys[0, :, :, :T], k0, atol=1e-12, rtol=1e-12)


@settings(max_examples=10, **SETTINGS)
@given(G=st.sampled_from([1, 2, 4]), T=st.integers(2, 10), data=st.data())
def test_cache_path_equals_full_forward_float32(G, T, data):
    cuts = data.draw(st.sets(st.integers(1, T - 1), max_size=T - 1))
    seed = data.draw(st.integers(0, 2**16))
    model = random_model(4, G, 4, 2, "grouped", seed, dtype=torch.float32)
    idx = torch.randint(0, 11, (2, T), generator=torch.Generator().manual_seed(seed))
    bounds = [0, *sorted(cuts), T]
    with torch.no_grad():
        full = model(idx)
        cache = model.new_cache(2)
        chunks = [model(idx[:, a:b], cache=cache) for a, b in zip(bounds, bounds[1:])]
    # float32 rounding differs between the chunked and the full kernels (float64 above is exact); it grows with
    # the logits, so the absolute tolerance does too (G=4, T=7, cuts {1, 2, 6}, seed 3: 2.4e-5 at |logits| <= 5.6)
    scale = max(1.0, full.abs().max().item())
    torch.testing.assert_close(torch.cat(chunks, dim=1), full, atol=1e-5 * scale, rtol=1e-5)


# --------------------------------------------------------------------------------------------
# 5. Conversion: pooling in two steps equals pooling in one
# --------------------------------------------------------------------------------------------


def divisors(n):
    return [d for d in range(1, n + 1) if n % d == 0]


@settings(max_examples=25, **SETTINGS)
@given(H=st.sampled_from([2, 4, 6, 8, 12]), method=st.sampled_from(["mean", "first"]), data=st.data())
def test_conversion_a_to_b_to_c_equals_a_to_c(H, method, data):
    a = data.draw(st.sampled_from(divisors(H)), label="a")  # the checkpoint's KV heads (a = H: multi-head)
    b = data.draw(st.sampled_from(divisors(a)), label="b")
    c = data.draw(st.sampled_from(divisors(b)), label="c")
    bias = data.draw(st.booleans(), label="bias")
    seed = data.draw(st.integers(0, 2**16), label="seed")
    torch.manual_seed(seed)
    cfg = TransformerConfig(
        vocab_size=13, max_seq_len=8, d_model=2 * H, n_layers=2, n_heads=H, n_kv_heads=a, d_ff=8, bias=bias
    )
    model = TransformerLM(cfg).double()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5 * torch.randn_like(p))
    model.eval()
    two_steps = convert_to_gqa(convert_to_gqa(model, b, method=method), c, method=method)
    one_step = convert_to_gqa(model, c, method=method)
    assert two_steps.config.n_kv_heads == one_step.config.n_kv_heads == c
    sd2, sd1 = two_steps.state_dict(), one_step.state_dict()
    assert sd2.keys() == sd1.keys()
    for key in sd1:
        torch.testing.assert_close(sd2[key], sd1[key], atol=1e-14, rtol=1e-12, msg=key)
    idx = torch.randint(0, 13, (2, 8), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        torch.testing.assert_close(two_steps(idx), one_step(idx), atol=1e-12, rtol=1e-12)


def test_conversion_8_to_4_to_2_equals_8_to_2():
    torch.manual_seed(3)
    cfg = TransformerConfig(vocab_size=13, max_seq_len=8, d_model=16, n_layers=2, n_heads=8, n_kv_heads=8, d_ff=8)
    model = TransformerLM(cfg).double()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5 * torch.randn_like(p))
    via4 = convert_to_gqa(convert_to_gqa(model, 4), 2)
    direct = convert_to_gqa(model, 2)
    for key, value in direct.state_dict().items():
        torch.testing.assert_close(via4.state_dict()[key], value, atol=1e-14, rtol=1e-12, msg=key)
    idx = torch.randint(0, 13, (3, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(via4(idx), direct(idx), atol=1e-12, rtol=1e-12)


# --------------------------------------------------------------------------------------------
# 6. Validation of sizes
# --------------------------------------------------------------------------------------------

# Values that are never a valid size: not integers, bools, or negative
NOT_INTEGERS = st.one_of(
    st.booleans(),
    st.sampled_from([np.True_, np.False_]),
    st.floats(allow_nan=True, allow_infinity=True),  # 2.0 too: a float is refused even when integral
    st.integers(-(2**40), 2**40).map(float),
    st.integers(1, 100).map(np.float64),
    st.integers(1, 100).map(np.float32),
    st.integers(1, 100).map(lambda n: Fraction(n, 1)),
    st.integers(1, 100).map(Decimal),
    st.integers(1, 100).map(lambda n: complex(n, 0)),
    st.integers(1, 100).map(str),
    st.none(),
    st.lists(st.integers(1, 4), max_size=2),
    st.integers(1, 100).map(lambda n: torch.tensor(float(n))),
)
NEGATIVE = st.one_of(st.integers(max_value=-1), st.integers(-(2**31), -1).map(np.int32), st.integers(-(2**63), -1).map(np.int64))
BAD_SIZE = st.one_of(NOT_INTEGERS, NEGATIVE)
BAD_POSITIVE_SIZE = st.one_of(BAD_SIZE, st.sampled_from([0, np.int64(0)]))  # 0 is no size for these either

KV_CACHE_ARGS = dict(n_layers=2, batch_size=1, n_kv_heads=2, max_len=4, head_dim=3)
GQA_ARGS = dict(d_model=8, n_heads=4, n_kv_heads=2)
CONFIG_ARGS = dict(vocab_size=7, max_seq_len=8, d_model=8, n_layers=1, n_heads=2, n_kv_heads=1, d_ff=8)
BYTES_ARGS = dict(n_layers=2, n_kv_heads=2, head_dim=4, seq_len=8, batch_size=1, bytes_per_elem=2)


def _raises_value_error(fn, kwargs):
    try:
        fn(**kwargs)
    except ValueError:
        return
    except Exception as e:  # TypeError, RuntimeError, IndexError, ...: the wrong kind of error
        raise AssertionError(f"{fn.__name__}({kwargs!r}) raised {type(e).__name__}: {e}") from e
    raise AssertionError(f"{fn.__name__}({kwargs!r}) accepted a bad value")


@settings(max_examples=150, **SETTINGS)
@given(
    target=st.sampled_from(
        [(KVCache, KV_CACHE_ARGS), (GroupedQueryAttention, GQA_ARGS), (TransformerConfig, CONFIG_ARGS), (kv_cache_bytes, BYTES_ARGS)]
    ),
    data=st.data(),
)
def test_bad_sizes_raise_value_error(target, data):
    fn, valid = target
    name = data.draw(st.sampled_from(sorted(valid)), label="argument")
    bad = data.draw(BAD_SIZE if (fn is kv_cache_bytes and name == "seq_len") else BAD_POSITIVE_SIZE, label="value")
    _raises_value_error(fn, {**valid, name: bad})


@settings(max_examples=60, **SETTINGS)
@given(
    n_layers=st.integers(1, 2**10),
    n_kv_heads=st.integers(1, 2**8),
    head_dim=st.integers(1, 2**9),
    seq_len=st.integers(0, 2**20),
    batch_size=st.integers(1, 2**10),
    bytes_per_elem=st.sampled_from([1, 2, 4, 8]),
    np_type=st.sampled_from([np.int32, np.int64, np.uint32, np.int16]),
)
def test_kv_cache_bytes_numpy_integers_equal_python_formula(
    n_layers, n_kv_heads, head_dim, seq_len, batch_size, bytes_per_elem, np_type
):
    sizes = dict(n_layers=n_layers, n_kv_heads=n_kv_heads, head_dim=head_dim, seq_len=seq_len, batch_size=batch_size)
    if np_type is np.int16:
        sizes = {k: min(v, 2**15 - 1) for k, v in sizes.items()}
    expected = 2 * math.prod(sizes.values()) * bytes_per_elem
    got = kv_cache_bytes(**{k: np_type(v) for k, v in sizes.items()}, bytes_per_elem=np_type(bytes_per_elem))
    assert type(got) is int
    assert got == expected


@pytest.mark.parametrize("np_type", [np.int32, np.int64])
def test_kv_cache_bytes_128k_context_batch_64_80_layers_is_exact(np_type):
    args = dict(n_layers=80, n_kv_heads=8, head_dim=128, seq_len=131072, batch_size=64, bytes_per_elem=2)
    expected = 2 * 80 * 8 * 128 * 131072 * 64 * 2  # 5 * 2**39 bytes = 2.5 TiB; 0 modulo 2**32
    assert kv_cache_bytes(**{k: np_type(v) for k, v in args.items()}) == expected == kv_cache_bytes(**args)
