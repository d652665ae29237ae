"""gqa_lib against Hugging Face transformers (gqa_lib/speed/peers.py): same function, generate()'s calls, the CLI.

Tiny sizes only: structure and arithmetic, never speed.
"""

import json
import sys

import pytest
import torch

from gqa_lib.core.attention import GroupedQueryAttention
from gqa_lib.speed import bench, peers

B, H, D, TK, NEW = 2, 4, 8, 10, 4  # batch, query heads, head dim, cached positions, room for new tokens


@pytest.fixture
def transformers():
    return pytest.importorskip("transformers")


def _layer_and_inputs(g: int, seed: int = 0):
    torch.manual_seed(seed)
    layer = GroupedQueryAttention(H * D, H, g).eval()
    k, v = torch.randn(B, g, TK, D), torch.randn(B, g, TK, D)  # (B, G, Tk, D)
    x = torch.randn(B, 1, H * D)  # (B, 1, d_model)
    return layer, k, v, x


@pytest.mark.parametrize("g", [1, 2, 4])
@pytest.mark.parametrize("impl", ["hf_sdpa_static", "hf_sdpa_dynamic", "hf_eager_static", "hf_eager_dynamic"])
def test_hf_layer_computes_gqa_lib_function_when_rope_is_identity(transformers, g, impl):
    layer, k, v, x = _layer_and_inputs(g)
    _cache, gqa_step = peers.gqa_decode_step(layer, k, v, x, NEW)
    attn, kind = peers.HF_IMPLS[impl]
    hf_layer = peers.hf_attention_like(layer, attn, max_positions=TK + NEW)
    identity = (torch.ones(B, 1, D), torch.zeros(B, 1, D))  # cos = 1, sin = 0: RoPE leaves q and k unchanged
    _hf_cache, hf_step = peers.hf_decode_step(hf_layer, kind, k, v, x, NEW, position_embeddings=identity)
    expected = gqa_step()
    for _ in range(2):  # each step rewinds: the second call decodes the same token again
        torch.testing.assert_close(hf_step(), expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(gqa_step(), expected, rtol=0, atol=0)


def test_hf_layer_shares_gqa_lib_weights_and_applies_rope(transformers):
    layer, k, v, x = _layer_and_inputs(2)
    hf_layer = peers.hf_attention_like(layer, "sdpa", max_positions=TK + NEW)
    for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
        assert getattr(hf_layer, name) is getattr(layer, name)
    assert hf_layer.config.num_key_value_heads == 2 and hf_layer.config.head_dim == D
    _c, gqa_step = peers.gqa_decode_step(layer, k, v, x, NEW)
    _c, hf_step = peers.hf_decode_step(hf_layer, "static", k, v, x, NEW)  # real RoPE at position Tk
    assert not torch.allclose(hf_step(), gqa_step(), atol=1e-4)


def test_caches_rewind_after_each_step(transformers):
    layer, k, v, x = _layer_and_inputs(2)
    gqa_cache, gqa_step = peers.gqa_decode_step(layer, k, v, x, NEW)
    hf_layer = peers.hf_attention_like(layer, "sdpa", max_positions=TK + NEW)
    static, static_step = peers.hf_decode_step(hf_layer, "static", k, v, x, NEW)
    dynamic, dynamic_step = peers.hf_decode_step(hf_layer, "dynamic", k, v, x, NEW)
    assert gqa_cache.max_len == TK + NEW and static.get_max_length() == TK + NEW  # as generate() sizes them
    for _ in range(3):
        gqa_step(), static_step(), dynamic_step()
        assert int(static.get_seq_length()) == dynamic.get_seq_length() == TK
    assert gqa_cache.seq_len == TK + 1  # gqa_lib rewinds before its step


def test_generate_mask_matches_what_generate_passes(transformers):
    layer, k, v, x = _layer_and_inputs(2)
    hf_layer = peers.hf_attention_like(layer, "sdpa", max_positions=TK + NEW)
    position = torch.full((B, 1), TK)
    static = peers._hf_cache(hf_layer.config, "static", TK + NEW)
    static.update(k, v, 0)
    mask = peers.generate_mask(hf_layer.config, static, B, 1, x.dtype, x.device, position)
    assert mask.shape == (B, 1, 1, TK + NEW) and mask.dtype == torch.bool  # a decode step sees every slot
    assert mask[:, :, :, : TK + 1].all() and not mask[:, :, :, TK + 1 :].any()  # ... the unwritten ones masked
    dynamic = peers._hf_cache(hf_layer.config, "dynamic", TK + NEW)
    dynamic.update(k, v, 0)
    assert peers.generate_mask(hf_layer.config, dynamic, B, 1, x.dtype, x.device, position) is None
    empty = peers._hf_cache(hf_layer.config, "static", TK + NEW)  # a prefill from an empty StaticCache: is_causal
    prompt = torch.arange(TK).expand(B, TK)
    assert peers.generate_mask(hf_layer.config, empty, B, TK, x.dtype, x.device, prompt) is None


def test_prefill_peers_hold_the_same_model(transformers):
    """gqa_lib's miniature Llama and LlamaForCausalLM share parameter names: the peer computes the same logits."""
    models = peers.build_prefill_models(vocab_size=50, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=96,
                                        max_len=12, device="cpu")
    ours, hf = models["gqa_lib"], models["hf_sdpa"]
    assert peers._mlp_params_per_layer(ours, 2) == peers._mlp_params_per_layer(hf, 2) == 3 * 32 * 96
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in hf.parameters())
    idx = torch.randint(0, 50, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(ours(idx), hf(idx).logits, atol=1e-5, rtol=1e-5)


def test_format_peers_table_summaries():
    ms = {(1, "gqa_lib"): 1.0, (2, "gqa_lib"): 1.5, (4, "gqa_lib"): 3.0,
          (1, "hf_x"): 2.0, (2, "hf_x"): 3.0, (4, "hf_x"): 4.0}
    rows = [{"G": g, "impl": i, "ms": t} for (g, i), t in ms.items()]
    text = peers.format_peers_table(rows, n_heads=4)
    assert "G=2: 2.00x, keeps 0.75" in text  # gqa_lib: 3 / 1.5; (3 - 1.5) / (3 - 1)
    assert "G=2: 1.33x, keeps 0.50" in text  # hf_x
    assert "0.50 (hf_x)" in text and "at every G: yes (largest ratio 0.750, at G=4)" in text


def _peers_argv(tmp_path):
    return ["peers", "--heads", "4", "--head-dim", "8", "--groups", "1,2,4", "--contexts", "8,16",
            "--dtypes", "float32", "--batch", "1", "--new-tokens", "4", "--min-run-time", "0.001",
            "--rounds", "2", "--device", "cpu", "--json", str(tmp_path / "peers.json")]


def test_peers_cli_writes_json(transformers, tmp_path, capsys):
    bench.main(_peers_argv(tmp_path))
    data = json.loads((tmp_path / "peers.json").read_text())
    assert {"benchmark", "device", "device_type", "torch", "transformers", "settings", "rows"} <= set(data)
    assert data["benchmark"] == "peers" and data["transformers"] == transformers.__version__
    assert {(r["context"], r["G"], r["impl"]) for r in data["rows"]} == {
        (c, g, i) for c in (8, 16) for g in (1, 2, 4) for i in peers.PEER_IMPLS
    }
    assert all(r["ms"] > 0 and r["dtype"] == "float32" for r in data["rows"])
    out = capsys.readouterr().out
    assert out.count("gqa_lib / fastest hf") == 2 and "keeps" in out and "RoPE" in out


def test_prefill_cli_writes_json(transformers, tmp_path, capsys):
    path = tmp_path / "prefill.json"
    bench.main(["prefill", "--batch", "1", "--prompt", "8", "--vocab", "50", "--d-model", "32", "--layers", "1",
                "--heads", "4", "--kv-heads", "2", "--d-ff", "64", "--new-tokens", "4", "--min-run-time", "0.001",
                "--device", "cpu", "--json", str(path)])
    data = json.loads(path.read_text())
    assert data["benchmark"] == "prefill" and {"torch", "transformers", "settings"} <= set(data)
    assert [r["impl"] for r in data["rows"]] == list(peers.PREFILL_IMPLS)
    for r in data["rows"]:
        assert r["tokens_per_s"] == pytest.approx(8 / (r["ms"] / 1e3))
    assert "SwiGLU MLP with d_ff=64, 6,144 parameters per layer" in capsys.readouterr().out


@pytest.mark.parametrize("bad", [
    ["peers", "--groups", "3"],  # does not divide H=4
    ["peers", "--groups", "1,x"],
    ["peers", "--contexts", "0"],
    ["peers", "--dtypes", "float64"],
    ["peers", "--impls", "gqa_lib,vllm"],
    ["peers", "--min-run-time", "-1"],
    ["peers", "--device", "tpu"],
    ["prefill", "--kv-heads", "3"],
    ["prefill", "--batch", "two"],
    ["prefill", "--d-model", "30"],  # not divisible by H=4
    ["prefill", "--dtype", "float64"],
    ["prefill", "--dtype", "float32,bfloat16"],  # one dtype per prefill run
])
def test_bad_arguments_are_usage_errors(transformers, bad, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench.main(bad + ["--heads", "4"])
    assert exit_info.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_missing_transformers_exits_with_install_hint(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "transformers", None)  # `import transformers` now raises ImportError
    with pytest.raises(SystemExit) as exit_info:
        bench.main(_peers_argv(tmp_path))
    assert "pip install 'gqa_lib[hf]'" in str(exit_info.value.code)
