"""The miniature Llama (gqa_lib.core.model, gqa_lib.core.rope) against Hugging Face's LlamaForCausalLM and first principles.

* the whole model computes exactly what ``transformers``' ``LlamaForCausalLM``
  computes from the same state dict (same parameter names, strict loading);
* the RoPE helpers equal ``transformers``' own, and a rotated query/key dot
  product depends on the offset m - n only;
* the KV cache stores rotated keys, and decoding in any chunks equals the full pass;
* RMSNorm of float16/bfloat16 input is computed in float32.

The ``transformers`` parts are skipped when it is not installed. Sizes are tiny.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gqa_lib.core.model import RMSNorm, TransformerConfig, TransformerLM
from gqa_lib.core.rope import apply_rope, rope_cos_sin, rope_inverse_frequencies, rotate_half

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def transformers():
    return pytest.importorskip("transformers")


def _perturbed_model(config: TransformerConfig, seed: int = 0, dtype: torch.dtype = torch.float32) -> TransformerLM:
    """A TransformerLM whose every weight (RMSNorm gains included) is moved away from its initial value."""
    torch.manual_seed(seed)
    model = TransformerLM(config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model.to(dtype).eval()


def _llama_config(transformers, c: TransformerConfig, attn_implementation: str):
    """The LlamaConfig of the same sizes as ``c``."""
    config = transformers.LlamaConfig(
        vocab_size=c.vocab_size,
        hidden_size=c.d_model,
        intermediate_size=c.d_ff,
        num_hidden_layers=c.n_layers,
        num_attention_heads=c.n_heads,
        num_key_value_heads=c.n_kv_heads,
        head_dim=c.head_dim,
        max_position_embeddings=c.max_seq_len,
        rms_norm_eps=c.norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": c.rope_theta},
        tie_word_embeddings=c.tie_word_embeddings,
        attention_bias=False,
        mlp_bias=False,
        hidden_act="silu",
    )
    config._attn_implementation = attn_implementation
    return config


# --------------------------------------------------------------------------------------------
# The whole model against LlamaForCausalLM
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "n_heads, n_kv_heads, tie, theta",
    [(4, 4, True, 10000.0), (4, 2, True, 10000.0), (4, 1, True, 500.0), (8, 2, False, 10000.0), (2, 1, False, 1e6)],
)
@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_model_equals_transformers_llama(transformers, n_heads, n_kv_heads, tie, theta, attn_implementation):
    config = TransformerConfig(vocab_size=29, max_seq_len=24, d_model=32, n_layers=2, n_heads=n_heads,
                               n_kv_heads=n_kv_heads, d_ff=40, rope_theta=theta, norm_eps=1e-6,
                               tie_word_embeddings=tie)
    ours = _perturbed_model(config)
    hf = transformers.LlamaForCausalLM(_llama_config(transformers, config, attn_implementation))
    state = ours.state_dict()
    assert set(state) == set(hf.state_dict())  # the same names, nothing added or renamed
    hf.load_state_dict(state, strict=True)
    hf.eval()
    if tie:
        assert ours.lm_head.weight is ours.model.embed_tokens.weight
        assert hf.lm_head.weight.data_ptr() == hf.model.embed_tokens.weight.data_ptr()
    else:
        assert not torch.equal(ours.lm_head.weight, ours.model.embed_tokens.weight)
    idx = torch.randint(0, config.vocab_size, (3, config.max_seq_len), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = hf(input_ids=idx).logits  # (B, T, V)
        got = ours(idx)
    assert got.shape == expected.shape == (3, config.max_seq_len, config.vocab_size)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    assert expected.std() > 0.1  # logits far from constant: the comparison has something to compare


def test_model_parameter_names_are_llamas():
    config = TransformerConfig(vocab_size=16, max_seq_len=8, d_model=16, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=24)
    names = set(TransformerLM(config).state_dict())
    per_layer = ["self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight",
                 "self_attn.o_proj.weight", "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight",
                 "input_layernorm.weight", "post_attention_layernorm.weight"]
    expected = {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"}
    expected |= {f"model.layers.{i}.{n}" for i in range(2) for n in per_layer}
    assert names == expected  # no biases anywhere


# --------------------------------------------------------------------------------------------
# RoPE helpers
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("head_dim, theta", [(2, 10000.0), (8, 10000.0), (16, 500.0), (64, 500000.0)])
def test_rope_helpers_equal_transformers(transformers, head_dim, theta):
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb
    from transformers.models.llama.modeling_llama import rotate_half as hf_rotate_half

    n_heads, T = 2, 40
    config = transformers.LlamaConfig(hidden_size=n_heads * head_dim, num_attention_heads=n_heads,
                                      head_dim=head_dim, max_position_embeddings=T,
                                      rope_parameters={"rope_type": "default", "rope_theta": theta})
    rotary = LlamaRotaryEmbedding(config)
    assert torch.equal(rope_inverse_frequencies(head_dim, theta), rotary.inv_freq)
    g = torch.Generator().manual_seed(head_dim)
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        x = torch.randn(2, n_heads, T, head_dim, generator=g).to(dtype)  # (B, H, T, D)
        assert torch.equal(rotate_half(x), hf_rotate_half(x))
        positions = torch.arange(T)
        cos, sin = rope_cos_sin(positions, head_dim, theta, dtype=dtype)  # (T, D)
        hf_cos, hf_sin = rotary(x, positions[None])  # (1, T, D)
        assert cos.dtype == sin.dtype == dtype
        assert torch.equal(cos, hf_cos[0]) and torch.equal(sin, hf_sin[0])
        k = torch.randn(2, 1, T, head_dim, generator=g).to(dtype)  # one KV head
        hf_q, hf_k = apply_rotary_pos_emb(x, k, hf_cos, hf_sin)
        assert torch.equal(apply_rope(x, cos, sin), hf_q)
        assert torch.equal(apply_rope(k, cos, sin), hf_k)


def test_rope_at_position_zero_is_the_identity_and_rotations_keep_the_norm():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 3, 50, 16, generator=g, dtype=torch.float64)
    cos, sin = rope_cos_sin(torch.arange(50), 16, dtype=torch.float64)
    rotated = apply_rope(x, cos, sin)
    assert torch.equal(rotated[:, :, 0], x[:, :, 0])
    # cos and sin are rounded to float32 (cos**2 + sin**2 = 1 to float32 precision), as in Hugging Face
    torch.testing.assert_close(rotated.norm(dim=-1), x.norm(dim=-1), rtol=2e-7, atol=0)
    # pair i = (i, i + D/2) turns by position * theta**(-2i/D)
    m, i = 7, 3
    angle = m * 10000.0 ** (-2 * i / 16)
    a, b = x[0, 0, m, i], x[0, 0, m, i + 8]
    expected = torch.stack([a * math.cos(angle) - b * math.sin(angle), a * math.sin(angle) + b * math.cos(angle)])
    torch.testing.assert_close(rotated[0, 0, m, [i, i + 8]], expected, rtol=0, atol=1e-6)  # angles in float32


@settings(max_examples=60, **SETTINGS)
@given(
    half=st.integers(1, 16),
    m=st.integers(0, 255),
    n=st.integers(0, 255),
    shift=st.integers(-255, 255),
    theta=st.sampled_from([10.0, 10000.0, 500000.0]),
    seed=st.integers(0, 2**31 - 1),
)
def test_rotated_dot_product_depends_only_on_the_offset(half, m, n, shift, theta, seed):
    D = 2 * half
    shift = max(shift, -min(m, n))  # keep both shifted positions >= 0
    g = torch.Generator().manual_seed(seed)
    q, k = torch.randn(2, D, generator=g, dtype=torch.float64)
    cos, sin = rope_cos_sin(torch.tensor([m, n, m + shift, n + shift]), D, theta, dtype=torch.float64)  # (4, D)
    rq, rk = apply_rope(q, cos[[0, 2]], sin[[0, 2]]), apply_rope(k, cos[[1, 3]], sin[[1, 3]])  # (2, D): at m, m+s / n, n+s
    # the angles are computed in float32 (as Hugging Face does): a position p < 512 is off by at most ~3e-5 rad
    tol = 2e-4 * float(q.norm() * k.norm())
    assert abs(float(rq[0] @ rk[0]) - float(rq[1] @ rk[1])) <= tol
    if m == n:  # offset 0: the rotation cancels, q.k itself
        assert abs(float(rq[0] @ rk[0]) - float(q @ k)) <= tol


def test_odd_head_dim_is_a_value_error_naming_it():
    with pytest.raises(ValueError, match="head_dim=3"):
        TransformerConfig(vocab_size=8, max_seq_len=8, d_model=12, n_heads=4, n_kv_heads=4)
    with pytest.raises(ValueError, match="head_dim=5"):
        rope_inverse_frequencies(5)
    with pytest.raises(ValueError, match="head_dim=7"):
        rope_cos_sin(torch.arange(4), 7)
    TransformerConfig(vocab_size=8, max_seq_len=8, d_model=8, n_heads=4, n_kv_heads=4)  # head_dim 2 is fine


# --------------------------------------------------------------------------------------------
# KV cache: rotated keys, any chunking
# --------------------------------------------------------------------------------------------


def test_kv_cache_holds_rotated_keys():
    config = TransformerConfig(vocab_size=19, max_seq_len=16, d_model=16, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=24)
    model = _perturbed_model(config, dtype=torch.float64)
    idx = torch.randint(0, 19, (2, 10), generator=torch.Generator().manual_seed(0))
    inputs = {}
    hooks = [layer.self_attn.register_forward_hook(lambda mod, args, out, i=i: inputs.__setitem__(i, args[0]))
             for i, layer in enumerate(model.layers)]
    cache = model.new_cache(2)
    with torch.no_grad():
        model(idx[:, :6], cache=cache)
        model(idx[:, 6:], cache=cache)  # a second chunk, starting at position 6
    for h in hooks:
        h.remove()
    cos, sin = rope_cos_sin(torch.arange(6, 10), config.head_dim, config.rope_theta, dtype=torch.float64)
    for i, layer in enumerate(model.layers):
        attn = layer.self_attn
        with torch.no_grad():
            k = attn.k_proj(inputs[i]).view(2, 4, 2, config.head_dim).transpose(1, 2)  # (B, G, 4, D), unrotated
            v = attn.v_proj(inputs[i]).view(2, 4, 2, config.head_dim).transpose(1, 2)
        torch.testing.assert_close(cache.keys[i, :, :, 6:10], apply_rope(k, cos, sin), rtol=0, atol=1e-12)
        torch.testing.assert_close(cache.values[i, :, :, 6:10], v, rtol=0, atol=1e-12)  # values are not rotated
        assert not torch.allclose(cache.keys[i, :, :, 6:10], k, atol=1e-3)


@pytest.mark.parametrize("impl", ["grouped", "grouped_matmul", "repeat_kv", "sdpa"])
@pytest.mark.parametrize("n_kv_heads", [1, 2, 4])
def test_token_by_token_decoding_equals_the_full_pass(impl, n_kv_heads):
    config = TransformerConfig(vocab_size=23, max_seq_len=12, d_model=16, n_layers=2, n_heads=4,
                               n_kv_heads=n_kv_heads, d_ff=24, attn_impl=impl)
    model = _perturbed_model(config, seed=n_kv_heads, dtype=torch.float64)
    idx = torch.randint(0, 23, (2, 12), generator=torch.Generator().manual_seed(3))
    cache = model.new_cache(2)
    with torch.no_grad():
        full = model(idx)
        steps = torch.cat([model(idx[:, t : t + 1], cache=cache) for t in range(12)], dim=1)
    torch.testing.assert_close(steps, full, rtol=0, atol=1e-10)
    assert cache.seq_len == 12


_CHUNK_MODELS: dict[tuple, TransformerLM] = {}


def _chunk_model(n_kv_heads: int, impl: str) -> TransformerLM:
    key = (n_kv_heads, impl)
    if key not in _CHUNK_MODELS:
        config = TransformerConfig(vocab_size=23, max_seq_len=20, d_model=16, n_layers=2, n_heads=4,
                                   n_kv_heads=n_kv_heads, d_ff=24, attn_impl=impl)
        _CHUNK_MODELS[key] = _perturbed_model(config, seed=7, dtype=torch.float64)
    return _CHUNK_MODELS[key]


@settings(max_examples=40, **SETTINGS)
@given(
    n_kv_heads=st.sampled_from([1, 2, 4]),
    impl=st.sampled_from(["grouped", "grouped_matmul", "repeat_kv", "sdpa"]),
    chunks=st.lists(st.integers(1, 7), min_size=1, max_size=8),
    batch=st.integers(1, 2),
    seed=st.integers(0, 2**31 - 1),
)
def test_decoding_in_random_chunks_equals_the_full_pass(n_kv_heads, impl, chunks, batch, seed):
    model = _chunk_model(n_kv_heads, impl)
    T = min(sum(chunks), 20)
    idx = torch.randint(0, 23, (batch, T), generator=torch.Generator().manual_seed(seed))
    cache = model.new_cache(batch, T)
    outs, start = [], 0
    with torch.no_grad():
        full = model(idx)
        for size in chunks:
            if start >= T:
                break
            outs.append(model(idx[:, start : start + size], cache=cache))
            start += size
    torch.testing.assert_close(torch.cat(outs, dim=1), full, rtol=0, atol=1e-10)
    assert cache.seq_len == T


# --------------------------------------------------------------------------------------------
# RMSNorm precision
# --------------------------------------------------------------------------------------------


def _rmsnorm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    x64 = x.double()
    return weight.double() * x64 / torch.sqrt(x64.pow(2).mean(dim=-1, keepdim=True) + eps)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("scale, eps", [(1.0, 1e-5), (400.0, 1e-5), (1e-4, 0.0)])
def test_rmsnorm_of_half_precision_input_is_computed_in_float32(dtype, scale, eps):
    # scale 400: x**2 overflows float16 (> 65504); scale 1e-4 with eps 0: x**2 underflows float16 to 0
    g = torch.Generator().manual_seed(0)
    norm = RMSNorm(64, eps)
    with torch.no_grad():
        norm.weight.copy_(1 + 0.5 * torch.randn(64, generator=g))
    norm = norm.to(dtype)
    x = (scale * torch.randn(3, 5, 64, generator=g)).to(dtype)
    out = norm(x)
    assert out.dtype == dtype
    assert torch.isfinite(out).all()
    expected = _rmsnorm_reference(x, norm.weight, eps)
    unit = torch.finfo(dtype).eps  # two roundings: the normalised x to dtype, then the product with the weight
    torch.testing.assert_close(out.double(), expected, rtol=2 * unit, atol=0)
    if dtype == torch.float16 and scale != 1.0:  # what a float16 computation would have given: inf or nan
        naive = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
        assert not torch.isfinite(naive).all() or not torch.allclose(naive.double(), expected / norm.weight.double(),
                                                                      rtol=0.1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_rmsnorm_equals_transformers(transformers, dtype):
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    g = torch.Generator().manual_seed(1)
    ours, theirs = RMSNorm(32, 1e-6), LlamaRMSNorm(32, eps=1e-6)
    with torch.no_grad():
        ours.weight.copy_(torch.randn(32, generator=g))
        theirs.weight.copy_(ours.weight)
    ours, theirs = ours.to(dtype), theirs.to(dtype)
    x = (30 * torch.randn(4, 32, generator=g)).to(dtype)
    assert torch.equal(ours(x), theirs(x))
