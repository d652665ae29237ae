"""KV cache, incremental decoding and the tiny language model."""

import pytest
import torch

from gqa_lib import GroupedQueryAttention, KVCache, TransformerConfig, TransformerLM, kv_cache_bytes


def tiny_model(n_kv_heads, seed=0, **overrides):
    torch.manual_seed(seed)
    cfg = dict(vocab_size=37, max_seq_len=32, d_model=32, n_layers=2, n_heads=8, n_kv_heads=n_kv_heads, d_ff=64)
    cfg.update(overrides)
    model = TransformerLM(TransformerConfig(**cfg))
    # Move the weights away from the tiny init so that the test can tell positions apart.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return model.eval()


@pytest.mark.parametrize("n_kv_heads", [1, 2, 4, 8])
def test_incremental_decoding_equals_full_forward(n_kv_heads):
    model = tiny_model(n_kv_heads)
    idx = torch.randint(0, 37, (3, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(idx)  # (B, T, V)
        cache = model.new_cache(batch_size=3)
        prefix = model(idx[:, :5], cache=cache)  # prefill 5 tokens
        steps = [model(idx[:, t : t + 1], cache=cache) for t in range(5, 12)]  # then one at a time
    incremental = torch.cat([prefix, *steps], dim=1)
    torch.testing.assert_close(incremental, full, atol=1e-5, rtol=1e-5)
    assert cache.seq_len == 12


@pytest.mark.parametrize("impl", ["repeat_kv", "sdpa"])
def test_incremental_decoding_equal_for_other_impls(impl):
    model = tiny_model(2, attn_impl=impl)
    idx = torch.randint(0, 37, (2, 9), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = model(idx)
        cache = model.new_cache(batch_size=2)
        model(idx[:, :4], cache=cache)
        last = [model(idx[:, t : t + 1], cache=cache) for t in range(4, 9)]
    torch.testing.assert_close(torch.cat(last, 1), full[:, 4:], atol=1e-5, rtol=1e-5)


def test_attention_module_with_cache_equals_full_pass():
    torch.manual_seed(0)
    attn = GroupedQueryAttention(32, 8, 2)
    x = torch.randn(2, 6, 32)
    cache = KVCache(n_layers=1, batch_size=2, n_kv_heads=2, max_len=6, head_dim=4)
    with torch.no_grad():
        steps = torch.cat([attn(x[:, t : t + 1], cache=cache) for t in range(6)], dim=1)
        torch.testing.assert_close(steps, attn(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("n_kv_heads", [1, 2, 8])
def test_cache_holds_only_kv_heads_and_bytes_match(n_kv_heads):
    model = tiny_model(n_kv_heads)
    cache = model.new_cache(batch_size=3, max_len=20)
    assert cache.keys.shape == (2, 3, n_kv_heads, 20, 4)  # (L, B, G, T, D)
    assert cache.values.shape == (2, 3, n_kv_heads, 20, 4)
    expected = kv_cache_bytes(n_layers=2, n_kv_heads=n_kv_heads, head_dim=4, seq_len=20, batch_size=3, bytes_per_elem=4)
    assert cache.nbytes == expected
    with torch.no_grad():
        model(torch.zeros(3, 7, dtype=torch.long), cache=cache)
    assert cache.used_bytes == kv_cache_bytes(2, n_kv_heads, 4, 7, 3, 4)


def test_kv_cache_bytes_formula_llama2_7b():
    # Llama 2 7B: 32 layers, 32 KV heads of dim 128; fp16 => 0.5 MiB per token.
    assert kv_cache_bytes(32, 32, 128, seq_len=1) == 524_288
    assert kv_cache_bytes(32, 32, 128, seq_len=4096, batch_size=1) == 2 * 2**30
    # Llama 2 70B: 80 layers, 8 KV heads (GQA-8).
    assert kv_cache_bytes(80, 8, 128, seq_len=1) == 327_680


@pytest.mark.parametrize("bad", [dict(n_layers=0), dict(n_kv_heads=-1), dict(head_dim=1.5), dict(seq_len=-3)])
def test_kv_cache_bytes_rejects_bad_values(bad):
    args = dict(n_layers=2, n_kv_heads=2, head_dim=4, seq_len=8)
    args.update(bad)
    name = next(iter(bad))
    with pytest.raises(ValueError, match=name):
        kv_cache_bytes(**args)


def test_cache_overflow_raises():
    cache = KVCache(n_layers=1, batch_size=1, n_kv_heads=2, max_len=4, head_dim=3)
    cache.update(0, torch.zeros(1, 2, 3, 3), torch.zeros(1, 2, 3, 3))
    with pytest.raises(ValueError, match="3 cached \\+ 2 new positions exceeds max_len=4"):
        cache.update(0, torch.zeros(1, 2, 2, 3), torch.zeros(1, 2, 2, 3))


def test_cache_rejects_wrong_head_count():
    cache = KVCache(n_layers=1, batch_size=1, n_kv_heads=2, max_len=4, head_dim=3)
    with pytest.raises(ValueError, match="G=2"):
        cache.update(0, torch.zeros(1, 4, 1, 3), torch.zeros(1, 4, 1, 3))


def test_model_rejects_sequence_past_max_len():
    model = tiny_model(2)
    with pytest.raises(ValueError, match="exceeds max_seq_len=32"):
        model(torch.zeros(1, 33, dtype=torch.long))
    cache = model.new_cache(1)
    model(torch.zeros(1, 30, dtype=torch.long), cache=cache)
    with pytest.raises(ValueError, match="overflow|exceeds"):
        model(torch.zeros(1, 3, dtype=torch.long), cache=cache)


@pytest.mark.parametrize(
    "bad,match",
    [
        (dict(n_heads=8, n_kv_heads=3), "n_heads=8 must be divisible by n_kv_heads=3"),
        (dict(n_heads=8, n_kv_heads=0), "got 0"),
        (dict(d_model=30, n_heads=8, n_kv_heads=8), "d_model=30"),
        (dict(vocab_size=0), "vocab_size"),
    ],
)
def test_config_rejects_bad_values(bad, match):
    with pytest.raises(ValueError, match=match):
        TransformerConfig(**bad)


def test_greedy_generate_equals_argmax_of_full_forward():
    model = tiny_model(2)
    prompt = torch.randint(0, 37, (2, 4), generator=torch.Generator().manual_seed(3))
    out = model.generate(prompt, max_new_tokens=6, temperature=0)
    assert out.shape == (2, 10)
    assert torch.equal(out[:, :4], prompt)
    # Re-derive every generated token without a cache.
    with torch.no_grad():
        for t in range(4, 10):
            assert torch.equal(out[:, t], model(out[:, :t])[:, -1].argmax(-1))


def test_sampled_generate_is_reproducible_with_generator():
    model = tiny_model(4)
    prompt = torch.zeros(1, 2, dtype=torch.long)
    a = model.generate(prompt, 8, temperature=1.0, top_k=5, generator=torch.Generator().manual_seed(0))
    b = model.generate(prompt, 8, temperature=1.0, top_k=5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(max_new_tokens=40), "exceeds max_seq_len=32"),
        (dict(max_new_tokens=-1), "max_new_tokens"),
        (dict(max_new_tokens=2, temperature=-1.0), "temperature"),
        (dict(max_new_tokens=2, top_k=0), "top_k"),
    ],
)
def test_generate_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tiny_model(2).generate(torch.zeros(1, 2, dtype=torch.long), **kwargs)


def test_fewer_kv_heads_means_fewer_parameters():
    mha, gqa, mqa = (tiny_model(g).num_parameters() for g in (8, 2, 1))
    # each layer's k_proj and v_proj shrink from 32x32 to (4*G)x32
    assert mha - gqa == 2 * 2 * (32 - 8) * 32
    assert gqa - mqa == 2 * 2 * (8 - 4) * 32


def test_presets_kv_bytes_per_token():
    from gqa_lib import get_preset

    assert get_preset("Llama 2 7B").kv_bytes_per_token() == 2 * 32 * 32 * 128 * 2  # 0.5 MiB
    assert get_preset("Llama 2 70B").attention == "GQA-8"
    assert get_preset("Llama 2 7B").attention == "MHA"
    # Llama 2 70B would need 8x the cache per token as MHA
    p = get_preset("Llama 2 70B")
    assert p.kv_bytes_per_token(n_kv_heads=64) == 8 * p.kv_bytes_per_token()
    with pytest.raises(ValueError, match="unknown model preset 'GPT-9'"):
        get_preset("GPT-9")
