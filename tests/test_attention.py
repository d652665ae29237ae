"""grouped_attention and friends against independent references."""

import math

import pytest
import torch
import torch.nn.functional as F

import gqa_lib
from gqa_lib import GroupedQueryAttention, grouped_attention, repeat_kv_attention, sdpa_attention


def reference_attention_loop(q, k, v, causal):
    """Independent reference: one query head at a time, plain loops over heads.

    Query head h reads KV head h // (H // G); causal queries are the last Tq positions.
    """
    B, H, Tq, D = q.shape
    G, Tk = k.shape[1], k.shape[2]
    out = torch.empty_like(q)
    for b in range(B):
        for h in range(H):
            g = h // (H // G)
            s = q[b, h].double() @ k[b, g].double().T / math.sqrt(D)  # (Tq, Tk)
            if causal:
                for i in range(Tq):
                    s[i, Tk - Tq + i + 1 :] = float("-inf")
            out[b, h] = (torch.softmax(s, dim=-1) @ v[b, g].double()).to(q.dtype)
    return out


def random_qkv(B, H, G, Tq, Tk, D, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, Tq, D, generator=gen, dtype=dtype)
    k = torch.randn(B, G, Tk, D, generator=gen, dtype=dtype)
    v = torch.randn(B, G, Tk, D, generator=gen, dtype=dtype)
    return q, k, v


SHAPES = [
    # B, H, G, Tq, Tk, D
    (2, 8, 8, 5, 5, 16),  # MHA, square
    (2, 8, 1, 5, 5, 16),  # MQA
    (1, 12, 4, 7, 7, 8),
    (3, 6, 2, 1, 9, 4),  # one decode step
    (2, 8, 2, 3, 11, 16),  # several queries against a longer cache
    (1, 4, 4, 1, 1, 32),
]


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("B,H,G,Tq,Tk,D", SHAPES)
def test_grouped_matches_loop_reference_repeat_kv_and_sdpa(B, H, G, Tq, Tk, D, causal):
    q, k, v = random_qkv(B, H, G, Tq, Tk, D)
    expected = reference_attention_loop(q, k, v, causal)
    got = grouped_attention(q, k, v, causal=causal)
    assert got.shape == (B, H, Tq, D)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(repeat_kv_attention(q, k, v, causal=causal), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sdpa_attention(q, k, v, causal=causal), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("causal", [False, True])
def test_grouped_matches_torch_sdpa_enable_gqa_directly(causal):
    q, k, v = random_qkv(2, 16, 4, 6, 6, 32, seed=3)
    expected = F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True)
    torch.testing.assert_close(grouped_attention(q, k, v, causal=causal), expected, atol=1e-5, rtol=1e-5)


def test_g_equals_h_is_multi_head_reference():
    """G = H: every query head has its own K/V head, i.e. textbook multi-head attention."""
    q, k, v = random_qkv(2, 4, 4, 6, 6, 8, seed=1)
    scores = torch.einsum("bhqd,bhkd->bhqk", q, k) / math.sqrt(8)
    expected = torch.einsum("bhqk,bhkd->bhqd", torch.softmax(scores, -1), v)
    torch.testing.assert_close(grouped_attention(q, k, v), expected, atol=1e-5, rtol=1e-5)


def test_g_equals_one_is_multi_query_reference():
    """G = 1: all query heads share the single K/V head (Shazeer 2019)."""
    q, k, v = random_qkv(2, 4, 1, 6, 6, 8, seed=2)
    k1, v1 = k[:, 0], v[:, 0]  # (B, Tk, D)
    scores = torch.einsum("bhqd,bkd->bhqk", q, k1) / math.sqrt(8)
    expected = torch.einsum("bhqk,bkd->bhqd", torch.softmax(scores, -1), v1)
    torch.testing.assert_close(grouped_attention(q, k, v), expected, atol=1e-5, rtol=1e-5)


def test_grouping_is_contiguous_not_strided():
    """Query heads 0..H/G-1 read KV head 0: changing KV head 1 must not move head 0's output."""
    q, k, v = random_qkv(1, 8, 2, 3, 3, 4, seed=5)
    base = grouped_attention(q, k, v)
    v2 = v.clone()
    v2[:, 1] += 10.0
    changed = grouped_attention(q, k, v2)
    torch.testing.assert_close(changed[:, :4], base[:, :4])  # heads 0-3 read KV head 0
    assert (changed[:, 4:] - base[:, 4:]).abs().min() > 1.0  # heads 4-7 read KV head 1


def test_grouped_attention_half_precision_close_to_fp32():
    q, k, v = random_qkv(1, 8, 2, 1, 16, 16, seed=4)
    expected = grouped_attention(q, k, v, causal=True)
    got = grouped_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), causal=True)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), expected, atol=3e-2, rtol=3e-2)


def test_decode_does_not_copy_kv(monkeypatch):
    """The fast path must not call repeat_kv / repeat_interleave / expand+copy on K or V."""
    calls = []
    monkeypatch.setattr(gqa_lib.core.attention, "repeat_kv", lambda *a: calls.append(a))
    real_ri = torch.Tensor.repeat_interleave
    monkeypatch.setattr(torch.Tensor, "repeat_interleave", lambda *a, **kw: calls.append(a) or real_ri(*a, **kw))
    q, k, v = random_qkv(2, 8, 2, 1, 10, 4)
    grouped_attention(q, k, v, causal=True)
    assert calls == []


@pytest.mark.parametrize(
    "q_shape,k_shape,v_shape,match",
    [
        ((2, 8, 3), (2, 2, 3, 4), (2, 2, 3, 4), "q must have rank 4"),
        ((2, 8, 3, 4), (2, 3, 4), (2, 2, 3, 4), "k must have rank 4"),
        ((2, 8, 3, 4), (2, 2, 3, 4), (2, 2, 5, 4), "k and v must have the same shape"),
        ((2, 8, 3, 4), (3, 2, 3, 4), (3, 2, 3, 4), r"batch size of q \(2\) differs from k/v \(3\)"),
        ((2, 8, 3, 4), (2, 2, 3, 5), (2, 2, 3, 5), r"head dim of q \(4\) differs from k/v \(5\)"),
        ((2, 8, 3, 4), (2, 3, 3, 4), (2, 3, 3, 4), "H=8 must be a multiple of the number of KV heads G=3"),
    ],
)
@pytest.mark.parametrize("fn", [grouped_attention, repeat_kv_attention, sdpa_attention])
def test_bad_shapes_raise(fn, q_shape, k_shape, v_shape, match):
    with pytest.raises(ValueError, match=match):
        fn(torch.zeros(q_shape), torch.zeros(k_shape), torch.zeros(v_shape))


def test_causal_with_more_queries_than_keys_raises():
    q, k, v = random_qkv(1, 4, 2, 5, 3, 4)
    with pytest.raises(ValueError, match="Tq=5, Tk=3"):
        grouped_attention(q, k, v, causal=True)


@pytest.mark.parametrize(
    "d_model,n_heads,n_kv_heads,match",
    [
        (64, 8, 3, "n_heads=8 must be divisible by n_kv_heads=3"),
        (64, 8, 0, "n_kv_heads must be an integer >= 1; got 0"),
        (64, 8, 16, "n_kv_heads=16 must be between 1 and n_heads=8"),
        (66, 8, 2, "d_model=66 must be divisible by n_heads=8"),
    ],
)
def test_module_rejects_bad_head_counts(d_model, n_heads, n_kv_heads, match):
    with pytest.raises(ValueError, match=match):
        GroupedQueryAttention(d_model, n_heads, n_kv_heads)


def test_module_projection_sizes_and_names():
    attn = GroupedQueryAttention(64, 8, 2)
    assert attn.q_proj.weight.shape == (64, 64)
    assert attn.k_proj.weight.shape == (16, 64)  # 2 KV heads x head_dim 8
    assert attn.v_proj.weight.shape == (16, 64)
    assert attn.o_proj.weight.shape == (64, 64)
    assert set(dict(attn.named_children())) == {"q_proj", "k_proj", "v_proj", "o_proj"}


def test_module_rejects_bad_input_width():
    with pytest.raises(ValueError, match=r"d_model=64\); got \(2, 3, 32\)"):
        GroupedQueryAttention(64, 8, 2)(torch.zeros(2, 3, 32))


@pytest.mark.parametrize("impl", ["grouped", "repeat_kv", "sdpa"])
def test_module_impls_agree(impl):
    torch.manual_seed(0)
    ref = GroupedQueryAttention(32, 4, 2)
    other = GroupedQueryAttention(32, 4, 2, impl=impl)
    other.load_state_dict(ref.state_dict())
    x = torch.randn(2, 7, 32)
    torch.testing.assert_close(other(x), ref(x), atol=1e-5, rtol=1e-5)


def test_module_is_causal():
    """Changing a later token must not change earlier outputs."""
    torch.manual_seed(0)
    attn = GroupedQueryAttention(32, 4, 2)
    x = torch.randn(1, 6, 32)
    x2 = x.clone()
    x2[:, 4:] += 1.0
    torch.testing.assert_close(attn(x)[:, :4], attn(x2)[:, :4])
    assert not torch.allclose(attn(x)[:, 4:], attn(x2)[:, 4:])
