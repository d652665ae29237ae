"""The quantized KV cache (gqa_lib.core.quantized_cache): bytes, the round-trip bound, decoding, evaluation.

The decoding tests hold QuantizedKVCache to an independent reference written
here: a plain KVCache whose keys and values are replaced by their
quantize-dequantize round trip (per (batch, head, token) absmax scales)
before they are stored.
"""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gqa_lib import KVCache, TransformerConfig, TransformerLM, kv_cache_bytes
from gqa_lib.core.quantized_cache import (
    QuantizedKVCache,
    dequantize_kv,
    evaluate_with_cache,
    generate_quantized,
    int8_quality,
    new_quantized_cache,
    pack_int4,
    quantize_kv,
    quantized_kv_cache_bytes,
    unpack_int4,
)
from gqa_lib.recipe.corpus import CorpusConfig, make_corpus
from gqa_lib.recipe.train import evaluate

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow])
QMAX = {8: 127, 4: 7}
TINY = torch.finfo(torch.float32).tiny


def tiny_model(n_kv_heads, seed=0, **overrides):
    torch.manual_seed(seed)
    cfg = dict(vocab_size=62, max_seq_len=24, d_model=32, n_layers=2, n_heads=8, n_kv_heads=n_kv_heads, d_ff=64)
    cfg.update(overrides)
    model = TransformerLM(TransformerConfig(**cfg))
    with torch.no_grad():  # away from the tiny init: peaked attention, so K/V errors show in the logits
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model.eval()


def tokens(B, T, seed=1, vocab=62):
    return torch.randint(0, vocab, (B, T), generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------------------------
# Bytes
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("shape", [(2, 3, 1, 10, 16), (1, 1, 4, 7, 8), (3, 2, 2, 5, 2)])
def test_bytes_equal_hand_formula(shape, bits):
    L, B, G, T, D = shape
    cache = QuantizedKVCache(L, B, G, T, D, bits=bits)
    per_token_head = D * bits // 8 + 4  # integers of one head vector, then its float32 scale
    assert cache.nbytes == 2 * L * B * G * T * per_token_head
    assert cache.nbytes == quantized_kv_cache_bytes(L, G, D, T, batch_size=B, bits=bits)
    assert cache.nbytes == sum(t.numel() * t.element_size()
                               for t in (cache.keys_q, cache.values_q, cache.key_scales, cache.value_scales))
    assert cache.used_bytes == 0
    for layer in range(L):
        cache.update(layer, torch.randn(B, G, 3, D), torch.randn(B, G, 3, D))
    assert cache.used_bytes == 2 * L * B * G * 3 * per_token_head
    # against the bf16 KVCache of the same shape: (2D*bits/8 + 8) / (4D)
    bf16 = KVCache(L, B, G, T, D, dtype=torch.bfloat16)
    assert bf16.nbytes == kv_cache_bytes(L, G, D, T, B, bytes_per_elem=2)
    assert Fraction(cache.nbytes, bf16.nbytes) == Fraction(2 * D * bits // 8 + 8, 4 * D)


def test_bytes_table_for_the_book_shape():
    """Per token per layer, H = 8 heads of D = 16 (the toy model), batch 1."""
    H, D = 8, 16
    per_token = {
        "fp32": kv_cache_bytes(1, H, D, 1, bytes_per_elem=4),
        "bf16": kv_cache_bytes(1, H, D, 1, bytes_per_elem=2),
        "int8": quantized_kv_cache_bytes(1, H, D, 1, bits=8),
        "int4": quantized_kv_cache_bytes(1, H, D, 1, bits=4),
    }
    assert per_token == {"fp32": 1024, "bf16": 512, "int8": 256 + 64, "int4": 128 + 64}
    for G in (4, 2, 1):  # GQA divides every row by H / G
        assert quantized_kv_cache_bytes(1, G, D, 1) * H // G == per_token["int8"]
    assert quantized_kv_cache_bytes(1, 8, 128, 1) / kv_cache_bytes(1, 8, 128, 1) == pytest.approx(0.5 + 4 / 128 / 2)


# --------------------------------------------------------------------------------------------
# The round trip
# --------------------------------------------------------------------------------------------

DTYPE_MAX = {torch.float32: torch.finfo(torch.float32).max, torch.float16: 65504.0,
             torch.bfloat16: torch.finfo(torch.bfloat16).max}


@st.composite
def kv_tensors(draw):
    """A float tensor of 1-4 small dims: arbitrary finite values, zero slices and outliers among them."""
    dtype = draw(st.sampled_from(list(DTYPE_MAX)))
    shape = draw(st.lists(st.integers(1, 5), min_size=1, max_size=4))
    n = 1
    for s in shape:
        n *= s
    big = DTYPE_MAX[dtype]
    finite = st.floats(-big, big, width=32, allow_nan=False, allow_infinity=False)
    scale = draw(st.sampled_from([1e-40, 1e-20, 1e-3, 1.0, 1e3, 1e30]))
    normal = st.floats(-1, 1, width=32).map(lambda v: v * scale)
    values = draw(st.lists(st.one_of(finite, normal, st.just(0.0), st.just(-0.0)), min_size=n, max_size=n))
    x = torch.tensor(values, dtype=torch.float32).clamp(-big, big).reshape(shape).to(dtype)
    if draw(st.booleans()):  # an all-zero slice
        x[..., 0] = 0
    dim = draw(st.integers(-len(shape), len(shape) - 1))
    return x, dim


@settings(max_examples=200, **SETTINGS)
@given(kv_tensors(), st.sampled_from([8, 4]))
def test_round_trip_error_is_at_most_half_a_step(case, bits):
    x, dim = case
    q, scale = quantize_kv(x, dim=dim, bits=bits)
    assert q.dtype == torch.int8 and q.shape == x.shape
    assert scale.dtype == torch.float32 and scale.shape[dim] == 1 and scale.dim() == x.dim()
    assert int(q.abs().max()) <= QMAX[bits]
    x64 = x.double()
    absmax = x64.abs().amax(dim=dim, keepdim=True)
    # scale = absmax / qmax (to float32 rounding), never below the smallest normal float32
    expected = torch.maximum(absmax / QMAX[bits], torch.full_like(absmax, TINY))
    torch.testing.assert_close(scale.double(), expected, rtol=2**-23, atol=0)
    err = (dequantize_kv(q, scale).double() - x64).abs()
    assert bool((err <= scale.double() * (0.5 + 2**-17)).all()), float((err / scale.double()).max())
    # the slice's absmax element is always exact to a step of the grid, and zeros stay zeros
    assert bool((dequantize_kv(q, scale)[x == 0] == 0).all())


def test_round_trip_with_an_outlier_channel_and_zero_rows():
    x = torch.randn(2, 3, 4, 16, generator=torch.Generator().manual_seed(0))
    x[..., 5] *= 1000  # an outlier channel: it sets every token's scale
    x[0, 1, 2] = 0  # a zero head vector
    q, scale = quantize_kv(x)
    assert torch.equal(scale[0, 1, 2], torch.tensor([TINY]))
    assert torch.equal(q[0, 1, 2], torch.zeros(16, dtype=torch.int8))
    err = (dequantize_kv(q, scale) - x).abs()
    assert bool((err <= scale * (0.5 + 2**-17)).all())
    nonzero = x[..., 5] != 0
    assert bool((q[..., 5][nonzero].abs() == 127).all())  # the outlier takes the top of the grid ...
    assert float((q[..., :5].abs().float()).mean()) < 1  # ... and crushes the other channels of its token


def test_non_finite_values_poison_their_slice_only():
    x = torch.ones(3, 4)
    x[0, 1] = float("inf")
    x[1, 2] = float("nan")
    deq = dequantize_kv(*quantize_kv(x))
    assert not torch.isfinite(deq[0]).any() and not torch.isfinite(deq[1]).any()
    torch.testing.assert_close(deq[2], torch.ones(4))


def test_dequantize_returns_the_requested_dtype():
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    q, s = quantize_kv(x)
    for dtype in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
        assert dequantize_kv(q, s, dtype).dtype == dtype
    assert bool(((dequantize_kv(q, s, torch.float64) - x).abs() <= s.double() * (0.5 + 2**-17)).all())


def test_int4_packing_round_trips_every_nibble():
    q = torch.arange(-8, 8, dtype=torch.int8)
    grid = torch.stack(torch.meshgrid(q, q, indexing="ij"), -1).reshape(-1, 2)  # every (low, high) pair
    packed = pack_int4(grid)
    assert packed.shape == (256, 1) and packed.dtype == torch.int8
    assert len(set(packed.flatten().tolist())) == 256  # one byte value per pair
    assert torch.equal(unpack_int4(packed), grid)
    with pytest.raises(ValueError, match="even last dimension"):
        pack_int4(torch.zeros(3, dtype=torch.int8))


@pytest.mark.parametrize("bad", [3, 16, 0, 2, True, 8.0, "8", None])
def test_bad_bits_are_refused_naming_them(bad):
    with pytest.raises(ValueError, match=r"bits must be one of \(8, 4\)"):
        QuantizedKVCache(1, 1, 1, 4, 8, bits=bad)
    with pytest.raises(ValueError, match="bits"):
        quantize_kv(torch.ones(2, 4), bits=bad)
    with pytest.raises(ValueError, match="bits"):
        new_quantized_cache(tiny_model(2), 1, 4, bits=bad)
    with pytest.raises(ValueError, match="bits"):
        quantized_kv_cache_bytes(1, 1, 8, 4, bits=bad)


def test_other_bad_arguments():
    with pytest.raises(ValueError, match="head_dim=3 must be even"):
        QuantizedKVCache(1, 1, 1, 4, 3, bits=4)
    QuantizedKVCache(1, 1, 1, 4, 3, bits=8)  # int8 takes any head_dim
    with pytest.raises(ValueError, match="dtype"):
        QuantizedKVCache(1, 1, 1, 4, 8, dtype=torch.int8)
    with pytest.raises(ValueError, match="max_len"):
        QuantizedKVCache(1, 1, 1, 0, 8)
    with pytest.raises(ValueError, match="dim"):
        quantize_kv(torch.ones(2, 4), dim=2)
    with pytest.raises(ValueError, match="floating"):
        quantize_kv(torch.ones(2, 4, dtype=torch.int32))
    with pytest.raises(ValueError, match="max_len=25 exceeds"):
        new_quantized_cache(tiny_model(2), 1, 25)


# --------------------------------------------------------------------------------------------
# The cache: same contract as KVCache
# --------------------------------------------------------------------------------------------


def reference_round_trip(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Independent quantize-dequantize of (B, G, T, D): one absmax scale per head vector, in float32."""
    qmax = QMAX[bits]
    x32 = x.float()
    scale = torch.clamp(x32.abs().max(dim=-1, keepdim=True).values / qmax, min=TINY)
    return (torch.clamp(torch.round(x32 / scale), -qmax, qmax) * scale).to(x.dtype)


class RoundTripKVCache(KVCache):
    """The reference: a float KVCache that stores the round trip of what it is given."""

    def __init__(self, *args, bits: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.bits = bits

    def update(self, layer, k, v):
        k_rt, v_rt = reference_round_trip(k, self.bits), reference_round_trip(v, self.bits)
        return super().update(layer, k_rt, v_rt)


def decode(model, idx, cache, prefill=0):
    """Logits (B, T, V): a prefill of ``prefill`` tokens, then one token at a time."""
    with torch.no_grad():
        parts = [model(idx[:, :prefill], cache=cache)] if prefill else []
        parts += [model(idx[:, t : t + 1], cache=cache) for t in range(prefill, idx.shape[1])]
    return torch.cat(parts, dim=1)


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("n_kv_heads", [1, 2, 4])
def test_decoding_equals_the_round_trip_reference(n_kv_heads, bits):
    model = tiny_model(n_kv_heads)
    c = model.config
    idx = tokens(3, 16)
    quant = decode(model, idx, new_quantized_cache(model, 3, 16, bits=bits), prefill=5)
    reference = decode(model, idx, RoundTripKVCache(c.n_layers, 3, n_kv_heads, 16, c.head_dim, bits=bits), prefill=5)
    torch.testing.assert_close(quant, reference, atol=1e-5, rtol=0)
    # and close to the float cache (this model's attention is peaked: weights of std 0.3), int8 far closer than int4
    full = decode(model, idx, model.new_cache(3, 16), prefill=5)
    diff = float((quant - full).abs().max())
    scale = float(full.abs().max())
    assert diff < (0.02 if bits == 8 else 0.6) * scale, (diff, scale)
    agreement = float((quant.argmax(-1) == full.argmax(-1)).float().mean())
    assert agreement >= (0.95 if bits == 8 else 0.6), agreement


def test_prefill_and_token_by_token_store_the_same_cache():
    """Per-token scales: a token's bytes do not depend on what else arrived with it."""
    model = tiny_model(2)
    idx = tokens(2, 12)
    a, b = new_quantized_cache(model, 2, 12), new_quantized_cache(model, 2, 12)
    decode(model, idx, a, prefill=12)
    decode(model, idx, b, prefill=0)
    # the two paths compute K and V with different float rounding; the quantizer adds nothing to that
    for qa, qb in ((a.keys_q, b.keys_q), (a.values_q, b.values_q)):
        assert int((qa.int() - qb.int()).abs().max()) <= 1
        assert float((qa != qb).float().mean()) < 0.01
    torch.testing.assert_close(a.key_scales, b.key_scales, atol=0, rtol=1e-5)
    torch.testing.assert_close(a.value_scales, b.value_scales, atol=0, rtol=1e-5)


def test_update_returns_dequantized_positions_of_the_cache_dtype():
    cache = QuantizedKVCache(2, 1, 2, 6, 8, dtype=torch.bfloat16)
    k, v = torch.randn(1, 2, 4, 8, dtype=torch.bfloat16), torch.randn(1, 2, 4, 8, dtype=torch.bfloat16)
    keys, values = cache.update(1, k, v)
    assert keys.dtype == values.dtype == torch.bfloat16 and keys.shape == (1, 2, 4, 8)
    torch.testing.assert_close(keys, reference_round_trip(k, 8), atol=0, rtol=0)
    torch.testing.assert_close(values, reference_round_trip(v, 8), atol=0, rtol=0)
    assert cache.lengths == [0, 4]
    with pytest.raises(ValueError, match=r"different numbers of positions \[0, 4\]"):
        cache.check_aligned()
    assert torch.equal(cache.read(1)[0], keys)
    with pytest.raises(AttributeError, match="keys_q"):
        cache.keys


def test_update_refuses_what_kvcache_refuses_and_writes_nothing():
    cache = QuantizedKVCache(n_layers=2, batch_size=1, n_kv_heads=2, max_len=4, head_dim=4)
    good = torch.ones(1, 2, 1, 4)
    for args, match in [
        ((0, good.double(), good), r"k has dtype torch\.float64 but the cache holds torch\.float32"),
        ((0, good, good.to("meta")), r"v is on meta"),
        ((2, good, good), r"layer must be in \[0, 2\)"),
        ((0, torch.ones(1, 2, 1, 3), torch.ones(1, 2, 1, 3)), r"shape \(B=1, G=2, T, D=4\)"),
        ((0, torch.ones(1, 2, 5, 4), torch.ones(1, 2, 5, 4)), "overflow"),
    ]:
        with pytest.raises(ValueError, match=match):
            cache.update(*args)
    assert cache.lengths == [0, 0]
    assert cache.keys_q.abs().sum() == 0 and cache.key_scales.abs().sum() == 0


def test_truncate_rewinds_like_kvcache():
    model = tiny_model(2)
    idx, other = tokens(2, 10), tokens(2, 10, seed=7)
    cache = new_quantized_cache(model, 2, 10)
    decode(model, other[:, :7], cache, prefill=7)  # fill with something else first
    with pytest.raises(ValueError, match=r"length=8 exceeds the positions held \[7, 7\]"):
        cache.truncate(8)
    cache.truncate(0)
    assert cache.used_bytes == 0
    got = decode(model, idx, cache, prefill=4)
    fresh = decode(model, idx, new_quantized_cache(model, 2, 10), prefill=4)
    torch.testing.assert_close(got, fresh, atol=0, rtol=0)
    cache.truncate(6)  # rewind into the middle and continue
    with torch.no_grad():
        again = torch.cat([model(idx[:, t : t + 1], cache=cache) for t in range(6, 10)], dim=1)
    torch.testing.assert_close(again, fresh[:, 6:], atol=1e-6, rtol=0)


@pytest.mark.parametrize("error", [KeyboardInterrupt, RuntimeError])
def test_interrupted_forward_leaves_the_cache_as_it_was(monkeypatch, error):
    model = tiny_model(2)
    seq = tokens(2, 7)
    cache = new_quantized_cache(model, 2, 7)
    expected = decode(model, seq, new_quantized_cache(model, 2, 7), prefill=4)[:, 4:]
    with torch.no_grad():
        model(seq[:, :4], cache=cache)

        def boom(*args, **kwargs):
            raise error("interrupted in the second block")

        with monkeypatch.context() as m:
            m.setattr(model.layers[1], "forward", boom)
            with pytest.raises(error):
                model(seq[:, 4:], cache=cache)
        assert cache.lengths == [4, 4] and cache.used_bytes == 4 * cache.bytes_per_position * 2
        got = torch.cat([model(seq[:, t : t + 1], cache=cache) for t in range(4, 7)], dim=1)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    with pytest.raises(KeyboardInterrupt):
        with cache.rollback_on_error():
            cache.update(0, torch.zeros(2, 2, 0, 4), torch.zeros(2, 2, 0, 4))
            cache.truncate(1)
            raise KeyboardInterrupt
    assert cache.lengths == [7, 7]


def test_autograd_passes_straight_through_the_new_positions():
    model = tiny_model(2)
    cache = new_quantized_cache(model, 1, 6)
    with torch.no_grad():
        model(tokens(1, 5), cache=cache)
    logits = model(tokens(1, 1, seed=3), cache=cache)  # autograd on
    with torch.no_grad():
        cache.truncate(5)
        plain = model(tokens(1, 1, seed=3), cache=cache)
    torch.testing.assert_close(logits.detach(), plain, atol=0, rtol=0)  # same values as without autograd
    logits.logsumexp(-1).sum().backward()
    for block in model.layers:
        assert block.self_attn.k_proj.weight.grad.abs().max() > 0
    assert not cache.keys_q.requires_grad and not cache.key_scales.requires_grad


def test_generate_quantized_matches_a_manual_greedy_loop():
    model = tiny_model(4)
    prompt = tokens(2, 5)
    out = generate_quantized(model, prompt, 6, temperature=0)
    cache, seq = new_quantized_cache(model, 2, 11), prompt
    with torch.no_grad():
        logits = model(seq, cache=cache)[:, -1]
        for _ in range(6):
            nxt = logits.argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], 1)
            logits = model(nxt, cache=cache)[:, -1] if seq.shape[1] < 11 else None
    assert torch.equal(out, seq)
    assert torch.equal(generate_quantized(model, prompt, 0), prompt)
    with pytest.raises(ValueError, match="exceeds max_seq_len"):
        generate_quantized(model, prompt, 20)


# --------------------------------------------------------------------------------------------
# Evaluation through the cache
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_corpus():
    config = CorpusConfig(seq_len=24, n_keys=8, n_values=4, n_pairs=6, min_pairs=2, n_words=16,
                          n_train=8, n_heldout=40)
    return make_corpus(0, config)


def test_float_cache_evaluation_equals_train_evaluate(small_corpus):
    model = tiny_model(2)
    model.train()
    reference = evaluate(model, small_corpus, batch_size=16)
    for mode in ("prefill", "decode"):
        got = evaluate_with_cache(model, small_corpus, batch_size=16, mode=mode)
        assert model.training  # the mode is restored
        assert got["n_answers"] == reference["n_answers"] > 0
        for key in ("loss", "text_loss", "recall_loss", "recall_acc"):
            assert got[key] == pytest.approx(reference[key], rel=1e-6, abs=1e-9), (mode, key)
    sub = evaluate_with_cache(model, small_corpus, n_sequences=10)
    assert sub["n_answers"] < reference["n_answers"]


def test_int8_quality_reports_both_caches(small_corpus):
    model = tiny_model(1)
    r = int8_quality(model, small_corpus, batch_size=16)
    assert set(r) == {"float", "int8", "logits"}
    float_only = evaluate_with_cache(model, small_corpus, batch_size=16)
    for key in ("loss", "recall_acc", "n_answers"):
        assert r["float"][key] == pytest.approx(float_only[key], rel=1e-9)
    int8 = evaluate_with_cache(model, small_corpus, batch_size=16, bits=8)
    assert r["int8"]["loss"] == pytest.approx(int8["loss"], rel=1e-9)
    assert r["int8"]["loss"] == pytest.approx(r["float"]["loss"], rel=2e-3)
    assert 0 < r["logits"]["max_abs_diff"] < 0.5 and r["logits"]["argmax_agreement"] > 0.97
    decoded = int8_quality(model, small_corpus, batch_size=16, mode="decode")
    assert decoded["int8"]["loss"] == pytest.approx(r["int8"]["loss"], rel=1e-6)
    r4 = int8_quality(model, small_corpus, bits=4, n_sequences=8)
    assert set(r4) == {"float", "int4", "logits"}
    with pytest.raises(ValueError, match="mode"):
        int8_quality(model, small_corpus, mode="stream")
    with pytest.raises(ValueError, match="split"):
        evaluate_with_cache(model, small_corpus, "test")


def test_shipped_checkpoint_loses_almost_nothing_at_int8():
    from gqa_lib.recipe.experiments import DATA_DIR, SETUP, checkpoint_name, load_checkpoint

    path = DATA_DIR / checkpoint_name(0)
    if not path.exists():
        pytest.skip("the pre-trained checkpoint is not shipped in this checkout")
    model, _ = load_checkpoint(path)
    r = int8_quality(model, SETUP.make_corpus(), n_sequences=64)
    assert abs(r["int8"]["loss"] - r["float"]["loss"]) < 2e-3
    assert abs(r["int8"]["recall_acc"] - r["float"]["recall_acc"]) <= 2 / r["float"]["n_answers"] + 1e-12
