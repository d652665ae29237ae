"""The serving-capacity arithmetic of chapter 9 (gqa_lib.speed.capacity), held to hand computations."""

from __future__ import annotations

import json

import pytest

import gqa_lib
from gqa_lib.model_configs import REAL_MODELS, load_real_model
from gqa_lib.speed import capacity

GiB = 2**30


def test_cache_per_sequence_by_hand():
    m = load_real_model("Llama 3.1 8B")
    assert capacity.kv_bytes_per_sequence(m, 8192) == 2 * 32 * 8 * 128 * 2 * 8192 == GiB
    assert capacity.kv_bytes_per_sequence(m, 8192, n_kv_heads=32) == 4 * GiB
    assert capacity.kv_bytes_per_sequence(m, 8192, n_kv_heads=1, bytes_per_elem=1) == GiB // 16


def test_windows_cap_the_cache():
    mistral = load_real_model("Mistral 7B")  # every layer slides over 4096 tokens
    assert capacity.kv_bytes_per_sequence(mistral, 100_000) == capacity.kv_bytes_per_sequence(mistral, 4096)
    gemma = load_real_model("Gemma 2 9B")  # 21 of 42 layers local (4096), the others global
    per_layer_token = 2 * 8 * 256 * 2
    assert capacity.kv_bytes_per_sequence(gemma, 32768) == per_layer_token * (21 * 32768 + 21 * 4096)
    assert capacity.kv_bytes_per_sequence(gemma, 1000) == per_layer_token * 42 * 1000
    full, windowed, window = capacity.kv_bytes_split(gemma)
    assert (full, windowed, window) == (21 * per_layer_token, 21 * per_layer_token, 4096)


def test_max_batch_by_hand_and_when_the_weights_do_not_fit():
    m = load_real_model("Llama 3.1 8B")
    weights = 2 * m.n_params
    assert capacity.max_batch(m, 80e9, 8192) == int((80e9 - weights) // GiB) == 59
    converted_weights = weights - 2 * 32 * 2 * (8 - 1) * 128 * 4096  # K/V projections at G = 1
    assert capacity.max_batch(m, 80e9, 8192, n_kv_heads=1) == int((80e9 - converted_weights) // (GiB // 8))
    assert capacity.max_batch("Llama 3.1 405B", 80e9, 1024) == 0  # 811 GB of weights


def test_tokens_per_second_bound_by_hand():
    m = load_real_model("Llama 2 7B")
    bw = 2e12
    b, t = 16, 4096
    expected = b * bw / (2 * m.n_params + b * 512 * 1024 * t)
    assert capacity.decode_tokens_per_second_bound(m, b, t, bw) == pytest.approx(expected, rel=1e-12)
    # more KV heads never make the bound higher
    bounds = [capacity.decode_tokens_per_second_bound(m, b, t, bw, n_kv_heads=g) for g in (1, 2, 4, 8, 16, 32)]
    assert bounds == sorted(bounds, reverse=True)


def test_mixture_of_experts_reads_the_routed_experts():
    m = load_real_model("Mixtral 8x7B")
    read = [capacity.weight_bytes_read_per_step(m, b) for b in (1, 2, 8, 64, 512)]
    assert read[0] == pytest.approx(2 * m.n_active_params, rel=1e-12)
    assert read == sorted(read) and read[-1] == pytest.approx(2 * m.n_params, rel=1e-6)
    # two tokens: an expert is untouched with probability (6/8)^2
    expert_bytes = 2 * (m.n_params - m.n_active_params) / (1 - 2 / 8)
    assert read[1] == pytest.approx(2 * m.n_params - expert_bytes * (6 / 8) ** 2, rel=1e-12)
    dense = load_real_model("Llama 2 7B")
    assert capacity.weight_bytes_read_per_step(dense, 1) == capacity.weight_bytes_read_per_step(dense, 256)


def test_t5_step_reads_the_decoder_and_head_only():
    """Not the encoder, not the cross-attention k, v (run once per input): what the T5-XXL decoder preset counts."""
    t5 = load_real_model("T5.1.1 XXL")
    preset = gqa_lib.get_preset("T5-XXL decoder")
    read = capacity.weight_bytes_read_per_step(t5, 1)
    assert read == 2 * t5.n_active_params == preset.weight_bytes() < t5.weight_bytes()
    assert capacity.weight_bytes_read_per_step(t5, 64) == read  # dense: the batch shares every weight
    # GQA-8 keeps 8 of 64 self-attention k, v heads in each of 24 layers: 24 * 2 * 4096 * 56 * 64 fewer parameters
    assert read - capacity.weight_bytes_read_per_step(t5, 1, n_kv_heads=8) == 2 * 24 * 2 * 4096 * 56 * 64


def test_bad_input_names_the_value():
    with pytest.raises(ValueError, match="latent"):
        capacity.kv_bytes_per_sequence("DeepSeek-V2", 1024)
    with pytest.raises(ValueError, match="context"):
        capacity.kv_bytes_per_sequence("Llama 2 7B", 0)
    with pytest.raises(ValueError, match="batch"):
        capacity.weight_bytes_read_per_step("Llama 2 7B", -1)
    with pytest.raises(ValueError, match="memory_bytes"):
        capacity.max_batch("Llama 2 7B", 0, 1024)
    with pytest.raises(ValueError, match="bandwidth"):
        capacity.decode_tokens_per_second_bound("Llama 2 7B", 1, 1024, -5.0)
    with pytest.raises(ValueError, match="unknown real model"):
        capacity.max_batch("Llama 9 1B", 80e9, 1024)


def test_calculator_data_covers_every_model_with_kv_heads():
    data = calculator = capacity.calculator_data()
    json.dumps(data, allow_nan=False)
    names = [m["name"] for m in calculator["models"]]
    assert names == [m.name for m in REAL_MODELS.values() if m.attention != "MLA"]
    for entry in data["models"]:
        m = load_real_model(entry["name"])
        for label, nbytes in capacity.CACHE_DTYPES.items():
            rows = entry["dtypes"][label]
            assert [r["G"] for r in rows] == [g for g in range(1, m.n_heads + 1) if m.n_heads % g == 0]
            for r in rows:
                for ctx in (512, 4096, 131072):
                    window = entry["window"]
                    js = r["kvFull"] * ctx + r["kvWindowed"] * (ctx if window is None else min(ctx, window))
                    assert js == capacity.kv_bytes_per_sequence(m, ctx, r["G"], nbytes)
                assert len(r["read"]) == len(capacity.BATCHES)


def test_calculator_html_is_self_contained():
    page = capacity.calculator_html("calc-test")
    assert 'id="calc-test"' in page and "Plotly.react" in page and "NaN" not in page
    bundle = capacity.calculator()._repr_mimebundle_()
    assert set(bundle) == {"text/html", "text/plain"}


def test_compute_bound_caps_the_memory_bound():
    m = load_real_model("Llama 3.1 8B")
    flops = capacity.decode_flops_per_token(m, 8192)
    assert flops == 2 * m.n_params + 4 * 32 * 32 * 128 * 8192
    mem = capacity.decode_tokens_per_second_bound(m, 479, 8192, 3.35e12, n_kv_heads=1)
    capped = capacity.decode_tokens_per_second_bound(m, 479, 8192, 3.35e12, n_kv_heads=1, peak_flops=989e12)
    assert capped == min(mem, 989e12 / flops)
    with pytest.raises(ValueError, match="peak_flops"):
        capacity.decode_tokens_per_second_bound(m, 1, 8192, 3.35e12, peak_flops=0)


def test_choose_n_kv_heads_prefers_the_larger_g_among_ties():
    m = load_real_model("Llama 3.1 8B")
    h100 = next(d for d in capacity.DEVICES if d.name.startswith("NVIDIA H100"))
    loss = {32: 0.0, 8: 0.1, 4: 0.3, 1: 0.6}
    strict = capacity.choose_n_kv_heads(m, h100, 8192, loss, tolerance=0.0)
    assert strict["choice"] == 32
    loose = capacity.choose_n_kv_heads(m, h100, 8192, loss, tolerance=1.0)
    assert loose["choice"] == 1  # memory-bound only: the smallest cache wins
    capped = capacity.choose_n_kv_heads(m, h100, 8192, loss, tolerance=1.0, peak_flops=989e12)
    rows = {r["G"]: r for r in capped["rows"]}
    best = max(r["tokens_per_s"] for r in capped["rows"])
    assert rows[capped["choice"]]["tokens_per_s"] >= 0.98 * best
    assert all(rows[g]["tokens_per_s"] < 0.98 * best for g in rows if g > capped["choice"])
    assert capacity.choose_n_kv_heads("Llama 3.1 405B", h100, 8192, loss, 1.0)["choice"] is None


def test_choose_n_kv_heads_counts_tensor_parallel_replication():
    m = load_real_model("Llama 3.1 70B")
    server = capacity.Device("8 x H100", 8 * 80e9, 8 * 3350e9)
    loss = {64: 0.0, 8: 0.1, 1: 0.6}
    one = capacity.choose_n_kv_heads(m, server, 8192, loss, tolerance=1.0)
    eight = capacity.choose_n_kv_heads(m, server, 8192, loss, tolerance=1.0, tp_degree=8)
    assert one["choice"] == 1 and eight["choice"] == 8  # below W, MQA's cache is stored 8 times: no gain
    rows = {r["G"]: r for r in eight["rows"]}
    per_seq = capacity.kv_bytes_per_sequence(m, 8192, 8)
    assert rows[1]["batch"] == int((server.memory_bytes - m.weight_bytes(n_kv_heads=1)) // per_seq)
    with pytest.raises(ValueError, match="tp_degree"):
        capacity.choose_n_kv_heads(m, server, 8192, loss, 1.0, tp_degree=0)
