"""Regression tests: one per defect fixed in the core (attention, KV cache, model, sizes).

Each test fails on the old behaviour named in its docstring.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gqa_lib import GroupedQueryAttention, KVCache, TransformerConfig, TransformerLM, kv_cache_bytes
from gqa_lib.core.attention import ATTENTION_IMPLEMENTATIONS

IMPLS = sorted(ATTENTION_IMPLEMENTATIONS)


def reference_attention(q, k, v, causal):
    """float64 loop reference: query head h reads KV head h // (H // G); causal queries are the last Tq."""
    q, k, v = q.double(), k.double(), v.double()
    B, H, Tq, D = q.shape
    G, Tk = k.shape[1], k.shape[2]
    out = torch.zeros(B, H, Tq, D, dtype=torch.float64)
    for b in range(B):
        for h in range(H):
            g = h // (H // G)
            for i in range(Tq):
                last = Tk - Tq + i if causal else Tk - 1
                s = (k[b, g, : last + 1] @ q[b, h, i]) / math.sqrt(D)
                e = torch.exp(s - s.max())
                out[b, h, i] = (e / e.sum()) @ v[b, g, : last + 1]
    return out


def tiny_model(n_kv_heads=2, seed=0, dtype=torch.float32, **overrides):
    torch.manual_seed(seed)
    cfg = dict(vocab_size=23, max_seq_len=32, d_model=16, n_layers=2, n_heads=4, n_kv_heads=n_kv_heads, d_ff=32)
    cfg.update(overrides)
    model = TransformerLM(TransformerConfig(**cfg))
    with torch.no_grad():  # away from the tiny init, so that positions matter
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model.to(dtype).eval()


def tokens(B, T, seed=1, vocab=23):
    return torch.randint(0, vocab, (B, T), generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------------------------
# fp64 end to end
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("name", IMPLS)
def test_fp64_stays_fp64_and_is_accurate_to_1e_12(name, causal):
    """Old: the softmax was forced to fp32, so fp64 inputs were only accurate to ~1e-7."""
    gen = torch.Generator().manual_seed(0)
    # scores spread over a wide range: an fp32 softmax is off by ~1e-7 here
    q = 3 * torch.randn(2, 6, 4, 16, dtype=torch.float64, generator=gen)
    k = 3 * torch.randn(2, 2, 7, 16, dtype=torch.float64, generator=gen)
    v = torch.randn(2, 2, 7, 16, dtype=torch.float64, generator=gen)
    out = ATTENTION_IMPLEMENTATIONS[name](q, k, v, causal=causal)
    assert out.dtype == torch.float64
    expected = reference_attention(q, k, v, causal)
    assert (out - expected).abs().max().item() < 1e-12


# --------------------------------------------------------------------------------------------
# Bad tensors: ValueError naming them
# --------------------------------------------------------------------------------------------


def _qkv(dtype=torch.float32, D=4):
    return torch.randn(1, 4, 3, D, dtype=dtype), torch.randn(1, 2, 3, D, dtype=dtype), torch.randn(1, 2, 3, D, dtype=dtype)


@pytest.mark.parametrize("name", IMPLS)
def test_mixed_dtypes_raise_naming_the_tensors(name):
    q, k, v = _qkv()
    with pytest.raises(ValueError, match=r"q torch\.float32, k torch\.bfloat16"):
        ATTENTION_IMPLEMENTATIONS[name](q, k.bfloat16(), v, causal=True)
    with pytest.raises(ValueError, match=r"v torch\.float64"):
        ATTENTION_IMPLEMENTATIONS[name](q, k, v.double())


@pytest.mark.parametrize("name", IMPLS)
def test_mixed_devices_raise_naming_the_tensors(name):
    q, k, v = _qkv()
    with pytest.raises(ValueError, match=r"q meta, k cpu"):
        ATTENTION_IMPLEMENTATIONS[name](q.to("meta"), k, v)
    with pytest.raises(ValueError, match=r"v meta"):
        ATTENTION_IMPLEMENTATIONS[name](q, k, v.to("meta"))


@pytest.mark.parametrize("which", ["q", "k", "v"])
@pytest.mark.parametrize("int_dtype", [torch.int64, torch.int32, torch.bool])
@pytest.mark.parametrize("name", IMPLS)
def test_integer_tensors_raise_naming_the_tensor(name, int_dtype, which):
    tensors = dict(zip("qkv", _qkv()))
    tensors[which] = tensors[which].to(int_dtype)
    with pytest.raises(ValueError, match=rf"{which} must have a floating dtype"):
        ATTENTION_IMPLEMENTATIONS[name](tensors["q"], tensors["k"], tensors["v"])


@pytest.mark.parametrize("name", IMPLS)
def test_head_dim_zero_and_no_keys_raise(name):
    q, k, v = _qkv(D=0)
    with pytest.raises(ValueError, match=r"head dim D must be >= 1; got q \(1, 4, 3, 0\)"):
        ATTENTION_IMPLEMENTATIONS[name](q, k, v)
    q, k, v = _qkv()
    with pytest.raises(ValueError, match=r"k and v hold no positions \(Tk=0\)"):
        ATTENTION_IMPLEMENTATIONS[name](q, k[:, :, :0], v[:, :, :0])


# --------------------------------------------------------------------------------------------
# A forward interrupted between layers leaves the cache as it was
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("error", [KeyboardInterrupt, RuntimeError])
@pytest.mark.parametrize("prefix", [0, 4])
def test_interrupted_forward_leaves_cache_unchanged(monkeypatch, error, prefix):
    """Old: layer 0 kept its new positions (lengths [3, 0]) and the next call's logits were off."""
    model = tiny_model()
    seq = tokens(2, prefix + 3)
    with torch.no_grad():
        expected = model(seq)[:, prefix:]  # a fresh run over the whole sequence
        cache = model.new_cache(2)
        if prefix:
            model(seq[:, :prefix], cache=cache)
        before = list(cache.lengths)

        def boom(*args, **kwargs):
            raise error("interrupted in the second block")

        with monkeypatch.context() as m:
            m.setattr(model.layers[1], "forward", boom)
            with pytest.raises(error):
                model(seq[:, prefix:], cache=cache)
        assert cache.lengths == before == [prefix, prefix]
        assert cache.check_aligned() == prefix
        got = model(seq[:, prefix:], cache=cache)
    assert cache.lengths == [prefix + 3] * 2
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_interrupt_in_output_head_leaves_cache_unchanged(monkeypatch):
    model = tiny_model()
    cache = model.new_cache(1)

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    with torch.no_grad(), monkeypatch.context() as m:
        m.setattr(model.model.norm, "forward", boom)
        with pytest.raises(KeyboardInterrupt):
            model(tokens(1, 3), cache=cache)
    assert cache.lengths == [0, 0]


def test_rollback_on_error_restores_lengths_directly():
    cache = KVCache(n_layers=2, batch_size=1, n_kv_heads=1, max_len=4, head_dim=2)
    with pytest.raises(KeyboardInterrupt):
        with cache.rollback_on_error():
            cache.update(0, torch.ones(1, 1, 2, 2), torch.ones(1, 1, 2, 2))
            raise KeyboardInterrupt
    assert cache.lengths == [0, 0]


# --------------------------------------------------------------------------------------------
# Decoding with autograd on does not keep the graph in the cache
# --------------------------------------------------------------------------------------------


def _graph_size(t: torch.Tensor) -> int:
    """Number of autograd nodes reachable from t.grad_fn."""
    seen, stack = set(), [t.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        stack.extend(n for n, _ in node.next_functions)
    return len(seen)


def test_decoding_with_autograd_keeps_cache_detached_and_graph_bounded():
    """Old: the cache stored k and v with their grad_fn, so every step's graph stayed alive
    (the cache's tensors had a grad_fn and the graph grew with the number of steps)."""
    steps = 200
    model = tiny_model(max_seq_len=steps + 1)
    assert torch.is_grad_enabled()
    cache = model.new_cache(1)
    tok = tokens(1, 1)
    sizes = {}
    norm_inputs = {}
    hooks = [
        block.input_layernorm.register_forward_hook(lambda mod, inp, out, i=i: norm_inputs.__setitem__(i, out.detach()))
        for i, block in enumerate(model.layers)
    ]
    try:
        for step in range(steps):
            logits = model(tok, cache=cache)  # autograd on
            assert logits.requires_grad
            if step in (2, 10, steps - 1):
                sizes[step] = _graph_size(logits)
            tok = logits[:, -1].argmax(-1, keepdim=True).detach()
    finally:
        for h in hooks:
            h.remove()
    assert cache.lengths == [steps, steps]
    for t in (cache.keys, cache.values):
        assert t.grad_fn is None
        assert not t.requires_grad
    # one step's graph does not grow with the number of cached steps
    assert sizes[steps - 1] == sizes[10] == sizes[2]
    # backward through the last step works; only the new position feeds k_proj's gradient
    model.zero_grad()
    logits[0, -1].logsumexp(-1).backward()
    for i, block in enumerate(model.layers):
        grad = block.self_attn.k_proj.weight.grad  # (G*D, d_model)
        assert grad is not None and torch.isfinite(grad).all()
        assert grad.abs().max() > 0
        # with the cached keys constant, grad = dL/dk_new (outer) x_new: every row is a multiple of x_new
        x_new = norm_inputs[i][0, -1]  # (d_model,)
        along = grad @ x_new / x_new.dot(x_new)  # (G*D,)
        torch.testing.assert_close(grad, along[:, None] * x_new[None, :], atol=1e-6, rtol=1e-5)
    assert cache.keys.grad is None


# --------------------------------------------------------------------------------------------
# KVCache refuses what it cannot hold
# --------------------------------------------------------------------------------------------


def test_kv_cache_update_refuses_other_dtype_and_device_and_writes_nothing():
    cache = KVCache(n_layers=2, batch_size=1, n_kv_heads=2, max_len=4, head_dim=3)
    good = torch.ones(1, 2, 1, 3)
    with pytest.raises(ValueError, match=r"k has dtype torch\.float64 but the cache holds torch\.float32"):
        cache.update(0, good.double(), good)
    with pytest.raises(ValueError, match=r"v has dtype torch\.float16"):
        cache.update(0, good, good.half())
    with pytest.raises(ValueError, match=r"k is on meta but the cache is on cpu"):
        cache.update(0, good.to("meta"), good)
    with pytest.raises(ValueError, match=r"v is on meta"):
        cache.update(0, good, good.to("meta"))
    assert cache.lengths == [0, 0]
    assert cache.keys.abs().sum() == 0 and cache.values.abs().sum() == 0
    with pytest.raises(ValueError, match="layer"):
        cache.update(True, good, good)


@pytest.mark.parametrize("arg", ["n_layers", "batch_size", "n_kv_heads", "max_len", "head_dim"])
@pytest.mark.parametrize("bad", [True, False, 2.0, 2.5, np.float64(2.0), -1, 0])
def test_kv_cache_refuses_bool_float_and_non_positive_sizes(arg, bad):
    sizes = dict(n_layers=2, batch_size=1, n_kv_heads=2, max_len=4, head_dim=3)
    sizes[arg] = bad
    with pytest.raises(ValueError, match=arg):
        KVCache(**sizes)


def test_kv_cache_refuses_non_float_dtype():
    with pytest.raises(ValueError, match="dtype"):
        KVCache(1, 1, 1, 4, 2, dtype=torch.int64)


def test_kv_cache_truncate():
    cache = KVCache(n_layers=2, batch_size=1, n_kv_heads=1, max_len=6, head_dim=2)
    for layer in (0, 1):
        cache.update(layer, torch.ones(1, 1, 3, 2), torch.ones(1, 1, 3, 2))
    with pytest.raises(ValueError, match=r"length=4 exceeds the positions held \[3, 3\]"):
        cache.truncate(4)
    for bad in (-1, True, 1.0):
        with pytest.raises(ValueError, match="length"):
            cache.truncate(bad)
    assert cache.lengths == [3, 3]
    cache.truncate(1)
    assert cache.lengths == [1, 1]
    k, _ = cache.update(0, 2 * torch.ones(1, 1, 1, 2), 2 * torch.ones(1, 1, 1, 2))
    assert k.shape == (1, 1, 2, 2)
    assert torch.equal(k[0, 0, :, 0], torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match=r"different numbers of positions \[2, 1\]"):
        cache.check_aligned()


# --------------------------------------------------------------------------------------------
# kv_cache_bytes never wraps around
# --------------------------------------------------------------------------------------------


def test_kv_cache_bytes_numpy_int32_128k_context_is_exact():
    """Old: the product was taken in numpy int32 and wrapped around to 0."""
    sizes = dict(n_layers=80, n_kv_heads=8, head_dim=128, seq_len=128 * 1024, batch_size=64, bytes_per_elem=2)
    expected = 2 * 80 * 8 * 128 * 131072 * 64 * 2
    assert expected % 2**32 == 0  # what a 32-bit product would have wrapped to
    got = kv_cache_bytes(**{k: np.int32(v) for k, v in sizes.items()})
    assert type(got) is int
    assert got == expected == 2_748_779_069_440


@pytest.mark.parametrize("arg", ["n_layers", "n_kv_heads", "head_dim", "seq_len", "batch_size", "bytes_per_elem"])
@pytest.mark.parametrize("bad", [2.0, 2.5, np.float32(2.0), True])
def test_kv_cache_bytes_float_or_bool_raises(arg, bad):
    """Old: a float size was accepted and a float returned."""
    sizes = dict(n_layers=2, n_kv_heads=2, head_dim=4, seq_len=8, batch_size=1, bytes_per_elem=2)
    sizes[arg] = bad
    with pytest.raises(ValueError, match=arg):
        kv_cache_bytes(**sizes)


# --------------------------------------------------------------------------------------------
# generate
# --------------------------------------------------------------------------------------------


def test_generate_fp16_model_tiny_temperature_returns_valid_tokens():
    """Old: logits / temperature was taken in fp16, overflowed to inf and the sampling crashed."""
    model = tiny_model(dtype=torch.float16)
    prompt = tokens(2, 3)
    out = model.generate(prompt, 5, temperature=1e-6, generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 8) and out.dtype == prompt.dtype
    assert torch.equal(out[:, :3], prompt)
    assert ((out >= 0) & (out < 23)).all()


@pytest.mark.parametrize("temperature", [1e-40, 1e-300])
def test_generate_subnormal_temperature_samples_like_greedy(temperature):
    model = tiny_model()
    prompt = tokens(2, 3)
    out = model.generate(prompt, 4, temperature=temperature, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, model.generate(prompt, 4, temperature=0))


@pytest.mark.parametrize(
    "prompt,kwargs,match",
    [
        (torch.zeros(1, 0, dtype=torch.long), dict(max_new_tokens=2), r"idx must hold at least one sequence"),
        (torch.zeros(0, 3, dtype=torch.long), dict(max_new_tokens=2), r"idx must hold at least one sequence"),
        (torch.zeros(3, dtype=torch.long), dict(max_new_tokens=2), r"idx must have shape \(B, T\)"),
        (torch.zeros(1, 3, dtype=torch.long), dict(max_new_tokens=2, temperature=float("nan")), "temperature"),
        (torch.zeros(1, 3, dtype=torch.long), dict(max_new_tokens=2, temperature=float("inf")), "temperature"),
        (torch.zeros(1, 3, dtype=torch.long), dict(max_new_tokens=2, top_k=True), "top_k"),
        (torch.zeros(1, 3, dtype=torch.long), dict(max_new_tokens=2, top_k=2.0), "top_k"),
        (torch.zeros(1, 3, dtype=torch.long), dict(max_new_tokens=True), "max_new_tokens"),
        (torch.zeros(1, 3, dtype=torch.long), dict(max_new_tokens=2.0), "max_new_tokens"),
    ],
    ids=["empty-prompt", "batch-0", "1-d-prompt", "nan-temperature", "inf-temperature", "bool-top_k",
         "float-top_k", "bool-max_new_tokens", "float-max_new_tokens"],
)
def test_generate_rejects_bad_arguments_naming_them(prompt, kwargs, match):
    with pytest.raises(ValueError, match=match):
        tiny_model().generate(prompt, **kwargs)


# --------------------------------------------------------------------------------------------
# GroupedQueryAttention sizes and layer
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sizes,match",
    [
        (dict(d_model=True, n_heads=1, n_kv_heads=1), "d_model"),
        (dict(d_model=8, n_heads=True, n_kv_heads=1), "n_heads"),
        (dict(d_model=8, n_heads=2, n_kv_heads=True), "n_kv_heads"),
        (dict(d_model=0, n_heads=2, n_kv_heads=1), "d_model"),
        (dict(d_model=8.0, n_heads=2, n_kv_heads=1), "d_model"),
        (dict(d_model=8, n_heads=2.0, n_kv_heads=1), "n_heads"),
        (dict(d_model=8, n_heads=2, n_kv_heads=1.0), "n_kv_heads"),
        (dict(d_model=-8, n_heads=2, n_kv_heads=1), "d_model"),
        (dict(d_model=8, n_heads=-2, n_kv_heads=-1), "n_heads"),
        (dict(d_model=8, n_heads=2, n_kv_heads=-1), "n_kv_heads"),
    ],
)
def test_gqa_module_refuses_bad_sizes(sizes, match):
    with pytest.raises(ValueError, match=match):
        GroupedQueryAttention(**sizes)


@pytest.mark.parametrize("bad", [[], {}, ["grouped"]], ids=["list", "dict", "list-of-name"])
def test_unhashable_impl_raises_value_error(bad):
    with pytest.raises(ValueError, match="impl"):
        GroupedQueryAttention(8, 2, 1, impl=bad)
    with pytest.raises(ValueError, match="attn_impl"):
        TransformerConfig(attn_impl=bad)


@pytest.mark.parametrize(
    "make",
    [
        lambda: KVCache(torch.tensor(True), 1, 1, 4, 2),
        lambda: GroupedQueryAttention(8, 2, torch.tensor(True)),
        lambda: TransformerConfig(n_layers=torch.tensor(True)),
        lambda: kv_cache_bytes(torch.tensor(True), 1, 1, 1),
    ],
    ids=["KVCache", "GroupedQueryAttention", "TransformerConfig", "kv_cache_bytes"],
)
def test_bool_tensor_size_raises(make):
    with pytest.raises(ValueError):
        make()


@pytest.mark.parametrize("layer", [True, False, 0.0, 1.0, -1, 2, "0"])
def test_gqa_forward_with_bad_layer_raises(layer):
    """Old: layer=True indexed the cache's tensors with a bool (RuntimeError, or a write to layer 1),
    a float layer hit the lengths list (TypeError)."""
    attn = GroupedQueryAttention(8, 2, 1)
    cache = KVCache(n_layers=2, batch_size=1, n_kv_heads=1, max_len=4, head_dim=4)
    with pytest.raises(ValueError, match="layer"):
        attn(torch.randn(1, 2, 8), cache=cache, layer=layer)
    assert cache.lengths == [0, 0]


# --------------------------------------------------------------------------------------------
# Prefill computes the last position's logits only
# --------------------------------------------------------------------------------------------


def test_last_only_logits_equal_last_row_of_full_logits():
    model = tiny_model()
    idx = tokens(3, 7)
    with torch.no_grad():
        full = model(idx)
        last = model(idx, last_only=True)
        cache = model.new_cache(3)
        cached_last = model(idx, cache=cache, last_only=True)
    assert full.shape == (3, 7, 23)
    assert last.shape == cached_last.shape == (3, 1, 23)
    torch.testing.assert_close(last, full[:, -1:], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(cached_last, full[:, -1:], atol=1e-5, rtol=1e-5)


def test_generate_prefill_computes_logits_for_the_last_position_only():
    """Old: the prefill computed (B, T, vocab) logits and kept the last row."""
    model = tiny_model()
    shapes = []
    hook = model.model.norm.register_forward_hook(lambda mod, inp, out: shapes.append(tuple(out.shape)))
    try:
        out = model.generate(tokens(2, 9), 3, temperature=0)
    finally:
        hook.remove()
    assert out.shape == (2, 12)
    assert shapes == [(2, 1, 16)] * 3  # prefill + 2 decode steps, each one position wide


@pytest.mark.parametrize(
    "n_heads,value,match",
    [
        (8, 3, r"n_heads=8 must be divisible by G=3 \(valid: \[1, 2, 4, 8\]\)"),
        (8, 16, "G=16 must be between 1 and n_heads=8"),
        (8, 0, "G must be an integer >= 1; got 0"),
        (8, 2.0, "G must be an integer >= 1; got 2.0"),
        (8, True, "G must be an integer >= 1; got the bool True"),
    ],
)
def test_kv_head_counts_are_checked_in_one_place(n_heads, value, match):
    from gqa_lib.checks import as_kv_heads

    with pytest.raises(ValueError, match=match):
        as_kv_heads(n_heads, value, "G")


def test_valid_kv_head_counts_are_the_divisors():
    from gqa_lib.checks import as_kv_heads, divisors

    assert divisors(12) == [1, 2, 3, 4, 6, 12] and divisors(1) == [1]
    assert [as_kv_heads(12, g) for g in divisors(12)] == divisors(12)
    with pytest.raises(ValueError, match="n must be an integer >= 1; got 0"):
        divisors(0)
