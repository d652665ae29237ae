"""gqa_lib.model_configs: the shipped config.json files, their shapes and parameter counts.

Shapes are held to the numbers the authors publish (papers, model cards), and
parameter counts both to the authors' totals and, exactly, to transformers'
own models built from the same config on the ``meta`` device (no weights, no
download).
"""

import json
import re
import warnings
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gqa_lib
from gqa_lib import model_configs
from gqa_lib.model_configs import REAL_MODELS, derive, load_real_model

KiB = 2**10
ROOT = Path(__file__).resolve().parents[1]

# (n_layers, n_heads H, n_kv_heads G, head_dim D, d_model) as the authors publish them.
PUBLISHED_SHAPES = {
    # Llama 2 paper (arXiv:2307.09288) Table 1: 7B and 13B without GQA; widths, heads and layers as the
    # same-sized Llama 1 models (arXiv:2302.13971 Table 2: 6.7B 4096/32/32, 13.0B 5120/40/40, 65.2B 8192/64/80).
    "llama-2-7b": (32, 32, 32, 128, 4096),
    "llama-2-13b": (40, 40, 40, 128, 5120),
    # Llama 2 paper §2.2: the 70B uses GQA; 8 KV heads per its App. A.2.1 and Meta's released params.json.
    "llama-2-70b": (80, 64, 8, 128, 8192),
    # Llama 3 paper (arXiv:2407.21783) Table 3: layers, model dim, attention heads, KV heads (D = dim / heads).
    "llama-3.1-8b": (32, 32, 8, 128, 4096),
    "llama-3.1-70b": (80, 64, 8, 128, 8192),
    "llama-3.1-405b": (126, 128, 8, 128, 16384),
    # Mistral 7B paper (arXiv:2310.06825) Table 1: dim, n_layers, head_dim, n_heads, n_kv_heads (window 4096).
    "mistral-7b": (32, 32, 8, 128, 4096),
    # Mixtral paper (arXiv:2401.04088) Table 1: same attention as Mistral 7B; 8 experts, top-2.
    "mixtral-8x7b": (32, 32, 8, 128, 4096),
    # Qwen2.5 report (arXiv:2412.15115) Table 1: layers, heads Q/KV; hidden size and head size 128 as the
    # same-sized Qwen2 models (Qwen2 report, arXiv:2407.10671, Table 1: 7B 3584, 72B 8192).
    "qwen2.5-7b": (28, 28, 4, 128, 3584),
    "qwen2.5-72b": (80, 64, 8, 128, 8192),
    # Gemma 2 paper (arXiv:2408.00118) Table 1, 9B: d_model 3584, 42 layers, 16 heads, 8 KV heads, head size 256.
    "gemma-2-9b": (42, 16, 8, 256, 3584),
    # Falcon paper (arXiv:2311.16867), Falcon-7B architecture: 32 layers, d_model 4544, 71 heads of 64, multiquery.
    "falcon-7b": (32, 71, 1, 64, 4544),
    # DeepSeek-V2 paper (arXiv:2405.04434) §3.1.2: 60 layers, hidden 5120, n_h = 128 heads of d_h = 128 plus a
    # decoupled RoPE part d_h^R = 64 (query/key head 192); K/V compressed to d_c = 512 (no G: MLA).
    "deepseek-v2": (60, 128, 128, 192, 5120),
    # T5.1.1 XXL as its authors released it (the T5 repository's T5.1.1 XXL gin config; the T5 paper's own 11B,
    # arXiv:1910.10683 Table 14, has other shapes): d_model 4096, 64 heads of d_kv 64, 24 decoder layers
    # (and 24 encoder layers). The GQA paper (§3.1) uptrains this checkpoint.
    "t5-v1_1-xxl": (24, 64, 64, 64, 4096),
}

# Total parameters as published: (value, where[, relative tolerance]). Derived counts must lie within 1.5%
# of the value, unless the authors round so coarsely that 1.5% is finer than their last digit.
PUBLISHED_PARAMS = {
    "llama-2-7b": (6.7e9, "Llama 1 paper Table 2: 6.7B for this shape (Llama 2 paper: 7B)"),
    "llama-2-13b": (13.0e9, "Llama 1 paper Table 2: 13.0B for this shape (Llama 2 paper: 13B)"),
    "llama-2-70b": (70e9, "Llama 2 paper: 70B (the release holds 68.98B)"),
    "llama-3.1-8b": (8e9, "Llama 3 paper: 8B (the release holds 8.03B)"),
    "llama-3.1-70b": (70e9, "Llama 3 paper: 70B (the release holds 70.55B)"),
    "llama-3.1-405b": (405e9, "Llama 3 paper: 405B"),
    "mistral-7b": (7.3e9, "Mistral AI's announcement: 7.3B (transformers: 7.24B)"),
    "mixtral-8x7b": (46.7e9, "Mixtral announcement: 46.7B total (paper: 47B)"),
    "qwen2.5-7b": (7.61e9, "Qwen2.5-7B model card: 7.61B"),
    "qwen2.5-72b": (72.7e9, "Qwen2.5-72B model card: 72.7B"),
    "gemma-2-9b": (9.24e9, "Gemma 2 paper Table 2: 917,635,072 embedding + 8,324,201,984 other"),
    "falcon-7b": (7e9, "Falcon-7B model card and paper: 7B"),
    "deepseek-v2": (236e9, "DeepSeek-V2 paper: 236B total"),
    "t5-v1_1-xxl": (11e9, "T5.1.1 release notes: XXL replaces the 11B model; whole model, encoder included"),
}
PUBLISHED_ACTIVE = {
    "mixtral-8x7b": (12.9e9, "Mixtral announcement: 12.9B active per token (paper: 13B)"),
    # "21B" is rounded to whole billions (+-0.5B, 2.4%); counting embeddings, a token passes through 21.38B
    "deepseek-v2": (21e9, "DeepSeek-V2 paper: 21B activated per token", 0.5e9 / 21e9),
}


def _close_to_published(derived: int, published: tuple) -> bool:
    value, _source, *rel = published
    return abs(derived - value) <= (rel[0] if rel else 0.015) * value


def test_every_shipped_file_loads_and_is_a_real_model():
    files = {f.name for f in model_configs.config_files().iterdir() if f.name.endswith(".json")}
    assert files == {f"{key}.json" for key in REAL_MODELS}
    assert set(PUBLISHED_SHAPES) == set(REAL_MODELS) == set(PUBLISHED_PARAMS)
    sources = model_configs.config_files().joinpath("SOURCES.md").read_text()
    bib = ROOT / "references.bib"
    for key, model in REAL_MODELS.items():
        raw = json.loads(model_configs.config_files().joinpath(f"{key}.json").read_text())
        assert model.config == raw and model.config is not raw
        assert model.key == key and model.hf_id in sources and f"`{key}.json`" in sources
        assert model.cite in sources
        if bib.is_file():  # a checkout; an installed wheel has no references.bib
            assert "{" + model.cite + "," in bib.read_text()


@pytest.mark.parametrize("key", list(PUBLISHED_SHAPES))
def test_shapes_equal_what_the_authors_publish(key):
    m = REAL_MODELS[key]
    assert (m.n_layers, m.n_heads, m.n_kv_heads, m.head_dim, m.d_model) == PUBLISHED_SHAPES[key]


@pytest.mark.parametrize("key", list(PUBLISHED_PARAMS))
def test_parameter_counts_are_near_the_published_totals(key):
    m = REAL_MODELS[key]
    assert _close_to_published(m.n_params, PUBLISHED_PARAMS[key]), (m.n_params, PUBLISHED_PARAMS[key])
    if key in PUBLISHED_ACTIVE:
        assert m.n_active_params < m.n_params
        assert _close_to_published(m.n_active_params, PUBLISHED_ACTIVE[key]), (m.n_active_params, key)
    elif key != "t5-v1_1-xxl":
        assert m.n_active_params == m.n_params  # dense decoder: every parameter, every token


def test_gemma_2_non_embedding_count_is_the_papers_exactly():
    m = REAL_MODELS["gemma-2-9b"]
    assert m.n_params - m.config["vocab_size"] * m.d_model == 8_324_201_984  # Gemma 2 paper, Table 2


def test_t5_active_count_is_the_decoder_and_head_without_cross_attention_kv():
    m = REAL_MODELS["t5-v1_1-xxl"]
    embedding = 32128 * 4096
    encoder = 24 * (4 * 4096 * 4096 + 3 * 4096 * 10240 + 2 * 4096) + 32 * 64 + 4096
    cross_kv = 24 * 2 * 4096 * 4096  # run once per input on the encoder's output, then cached
    assert m.n_params - m.n_active_params == encoder + cross_kv
    assert m.n_active_params > 2 * embedding and m.config["tie_word_embeddings"] is False


# --------------------------------------------------------------------------- exactly equal to transformers

_BOOKKEEPING = ("architectures", "auto_map", "_name_or_path", "transformers_version", "torch_dtype")


def _transformers_model(config: dict):
    """transformers' model of this config, built on the meta device (no memory for weights)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    kind = config["model_type"]
    kwargs = {k: v for k, v in config.items() if k not in _BOOKKEEPING}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            hf_config = transformers.AutoConfig.for_model(**kwargs)
        except (KeyError, ValueError) as err:  # model_type not in this transformers
            pytest.skip(f"transformers {transformers.__version__} has no config class for {kind}: {err}")
        with torch.device("meta"):
            if kind == "t5":
                return transformers.T5ForConditionalGeneration(hf_config)
            return transformers.AutoModelForCausalLM.from_config(hf_config)


def _numel(params) -> int:
    return sum(p.numel() for p in params)


@pytest.mark.parametrize("key", list(REAL_MODELS))
def test_parameter_counts_equal_transformers_exactly(key):
    m = REAL_MODELS[key]
    hf = _transformers_model(m.config)
    total = _numel(hf.parameters())  # shared (tied) tensors once
    if key == "t5-v1_1-xxl":
        # transformers 5 always ties T5's lm_head to the shared embedding; T5.1.1 publishes it untied
        # (tie_word_embeddings: false), so the released checkpoint holds one more vocab x d_model matrix.
        untied_head = 0 if hf.lm_head.weight is not hf.shared.weight else hf.lm_head.weight.numel()
        assert m.n_params == total + untied_head
        cross_kv = _numel(p for n, p in hf.decoder.named_parameters() if re.search(r"EncDecAttention\.[kv]\.", n))
        assert cross_kv == 24 * 2 * 4096 * 4096
        assert m.n_active_params == _numel(hf.decoder.parameters()) + hf.lm_head.weight.numel() - cross_kv
        return
    assert m.n_params == total
    # routed experts: E stacked experts per MoE layer, of which top-k run for each token
    routed = _numel(p for n, p in hf.named_parameters() if ".experts." in n)
    experts = m.config.get("num_local_experts") or m.config.get("n_routed_experts") or 1
    top_k = m.config.get("num_experts_per_tok") or 1
    assert m.n_active_params == total - routed * (experts - top_k) // experts


# --------------------------------------------------------------------------- the cache and the weights


def test_kv_bytes_per_token_examples():
    assert load_real_model("llama-2-7b").kv_bytes_per_token() == 512 * KiB  # 2 * 32 * 32 * 128 * 2
    assert load_real_model("Llama 2 70B").kv_bytes_per_token() == 2 * 80 * 8 * 128 * 2 == 320 * KiB
    assert load_real_model("falcon-7b").kv_bytes_per_token() == 2 * 32 * 1 * 64 * 2 == 8 * KiB
    mla = load_real_model("deepseek-v2")
    assert mla.attention == "MLA" and mla.kv_elems_per_token == 60 * (512 + 64)
    assert mla.kv_bytes_per_token() == 60 * 576 * 2
    t5 = load_real_model("t5-v1_1-xxl")
    assert t5.kv_bytes_per_token() == 2 * 24 * 64 * 64 * 2 == 384 * KiB  # decoder self-attention only
    assert t5.kv_bytes_per_token(n_kv_heads=8) == 48 * KiB
    assert load_real_model("llama-2-70b").kv_bytes_per_token(bytes_per_elem=1, n_kv_heads=64) == 1280 * KiB


def test_sliding_window_caps_the_cache():
    mistral = load_real_model("mistral-7b")
    assert mistral.sliding_window == 4096 and mistral.window_layers == 32
    per_token = mistral.kv_bytes_per_token()
    assert mistral.kv_bytes(1000) == 1000 * per_token
    assert mistral.kv_bytes(4096) == mistral.kv_bytes(32768) == 4096 * per_token
    assert mistral.kv_bytes(32768, batch=8, n_kv_heads=32) == 8 * 4096 * 4 * per_token
    # Gemma 2: 21 local layers (window 4096) and 21 global ones; no window for the model as a whole
    gemma = load_real_model("gemma-2-9b")
    assert gemma.sliding_window is None and (gemma.window_layers, gemma.local_window) == (21, 4096)
    per_layer = 2 * 8 * 256 * 2
    assert gemma.kv_bytes(8192) == per_layer * (21 * 8192 + 21 * 4096)
    assert gemma.kv_bytes(100) == gemma.kv_bytes_per_token() * 100
    # no window: grows without bound; Qwen2.5 ships sliding_window but use_sliding_window false
    for key in ("llama-3.1-8b", "qwen2.5-7b", "mixtral-8x7b"):
        m = load_real_model(key)
        assert m.sliding_window is None and m.window_layers == 0
        assert m.kv_bytes(100_000) == 100_000 * m.kv_bytes_per_token()
    assert load_real_model("llama-2-7b").kv_bytes(0) == 0


def test_cross_attention_cache_of_t5_and_none_elsewhere():
    t5 = load_real_model("t5-v1_1-xxl")
    assert t5.cross_kv_elems_per_source_token == 24 * 2 * 64 * 64
    assert t5.cross_kv_bytes(512) == 24 * 2 * 64 * 64 * 512 * 2
    assert t5.cross_kv_bytes(512, n_kv_heads=1) * 64 == t5.cross_kv_bytes(512)
    assert load_real_model("llama-2-7b").cross_kv_elems_per_source_token == 0
    assert load_real_model("llama-2-7b").cross_kv_bytes(512) == 0


def test_weight_bytes_of_a_converted_model_drop_the_kv_projections():
    llama = load_real_model("llama-2-7b")
    assert llama.kv_projection_params() == 32 * 2 * 4096 * 32 * 128
    assert llama.weight_bytes(bytes_per_elem=1) == llama.n_params
    dropped = llama.n_params - llama.weight_bytes(bytes_per_elem=1, n_kv_heads=1)
    assert dropped == 2 * 32 * (32 - 1) * 128 * 4096
    assert llama.weight_bytes(n_kv_heads=1) == 2 * (llama.n_params - dropped)
    # Qwen2's k and v carry biases, which shrink with them
    qwen = load_real_model("qwen2.5-7b")
    assert qwen.kv_projection_params(1) == 28 * 2 * (3584 * 128 + 128)
    # T5: the GQA paper converts decoder self- and cross-attention, not the encoder
    t5 = load_real_model("t5-v1_1-xxl")
    assert t5.kv_projection_params() - t5.kv_projection_params(8) == 2 * 24 * 2 * 4096 * (64 - 8) * 64
    # MLA has no G to change; its K/V path as published
    mla = load_real_model("deepseek-v2")
    assert mla.kv_projection_params() == 60 * (5120 * 576 + 512 + 512 * 128 * 256)
    assert mla.weight_bytes() == 2 * mla.n_params


def test_bad_values_are_named():
    with pytest.raises(ValueError, match=r"unknown real model 'gpt-9'.*llama-2-7b"):
        load_real_model("gpt-9")
    with pytest.raises(ValueError, match="unknown real model 42"):
        load_real_model(42)
    with pytest.raises(ValueError, match="unsupported model_type 'bert'"):
        derive({"model_type": "bert", "hidden_size": 768})
    with pytest.raises(ValueError, match="unsupported model_type None"):
        derive({"hidden_size": 768})
    with pytest.raises(ValueError, match="must be a dict"):
        derive("config.json")
    llama = load_real_model("llama-2-70b")
    with pytest.raises(ValueError, match=r"n_kv_heads=3 does not divide Llama 2 70B's n_heads H=64"):
        llama.kv_bytes_per_token(n_kv_heads=3)
    for call in (lambda: llama.kv_bytes(10, n_kv_heads=5), lambda: llama.weight_bytes(n_kv_heads=7),
                 lambda: llama.kv_projection_params(96)):
        with pytest.raises(ValueError, match="does not divide"):
            call()
    with pytest.raises(ValueError, match="n_kv_heads"):
        llama.kv_bytes_per_token(n_kv_heads=0)
    with pytest.raises(ValueError, match="MLA"):
        load_real_model("deepseek-v2").kv_bytes_per_token(n_kv_heads=1)
    with pytest.raises(ValueError, match="MLA"):
        load_real_model("deepseek-v2").weight_bytes(n_kv_heads=8)
    with pytest.raises(ValueError, match="seq_len"):
        llama.kv_bytes(-1)
    bad = {**llama.config, "num_key_value_heads": 7}
    with pytest.raises(ValueError, match="num_key_value_heads=7 does not divide num_attention_heads=64"):
        derive(bad)


def test_derive_copies_its_config():
    config = dict(REAL_MODELS["llama-2-7b"].config)
    m = derive(config, key="mine")
    config["num_hidden_layers"] = 1
    assert m.n_layers == 32 and m.name == "mine" and m.config["num_hidden_layers"] == 32


def test_exported_from_the_package():
    assert gqa_lib.REAL_MODELS is REAL_MODELS and gqa_lib.load_real_model is load_real_model
    assert gqa_lib.RealModel is model_configs.RealModel
    assert {"REAL_MODELS", "RealModel", "load_real_model"} <= set(gqa_lib.__all__)


# --------------------------------------------------------------------------- presets built on the configs


def test_presets_come_from_the_configs():
    for p in gqa_lib.PRESETS.values():
        m = REAL_MODELS[p.source_key]
        assert (p.n_layers, p.n_heads, p.n_kv_heads, p.head_dim, p.d_model) == (
            m.n_layers, m.n_heads, m.n_kv_heads, m.head_dim, m.d_model)
        assert p.cite == m.cite and p.attention == m.attention
        assert p.kv_bytes_per_token() == m.kv_bytes_per_token()
    assert "DeepSeek-V2" not in gqa_lib.PRESETS  # MLA: G does not apply
    assert gqa_lib.get_preset("Falcon 7B").attention == "MQA"
    mixtral = gqa_lib.get_preset("Mixtral 8x7B")
    assert mixtral.n_params == REAL_MODELS["mixtral-8x7b"].n_params > mixtral.n_active_params
    assert gqa_lib.get_preset("Llama 2 7B").n_active_params == gqa_lib.get_preset("Llama 2 7B").n_params


def test_t5_preset_is_what_a_decoding_step_reads():
    t5 = gqa_lib.get_preset("T5-XXL decoder")
    whole = REAL_MODELS["t5-v1_1-xxl"]
    assert t5.n_params == whole.n_active_params < whole.n_params
    assert 5.6e9 < t5.n_params < 5.8e9  # decoder + head, 6.50e9, less the cross-attention k, v: 0.81e9
    assert t5.cross_kv_bytes(1024) == whole.cross_kv_bytes(1024) == 24 * 2 * 64 * 64 * 1024 * 2
    assert t5.cross_kv_bytes(1024, n_kv_heads=8) * 8 == t5.cross_kv_bytes(1024)
    assert gqa_lib.get_preset("Llama 2 7B").cross_kv_bytes(1024) == 0


def test_old_llama_3_names_are_aliases_of_3_1():
    assert gqa_lib.get_preset("Llama 3 8B") is gqa_lib.get_preset("Llama 3.1 8B")
    assert gqa_lib.get_preset("Llama 3 70B") is gqa_lib.get_preset("Llama 3.1 70B")
    assert "Llama 3 8B" not in gqa_lib.PRESETS


def test_a_hand_made_preset_still_works():
    p = gqa_lib.ModelPreset("tiny", 2, 8, 2, 16, 128, 1e6, "none")
    assert p.n_active_params == 1e6 and p.source_key == "" and p.cross_kv_bytes(10) == 0
    assert p.kv_bytes_per_token() == 2 * 2 * 2 * 16 * 2


# --------------------------------------------------------------------------- random Llama-like configs


@st.composite
def llama_like_configs(draw):
    n_heads = draw(st.sampled_from([1, 2, 4, 6, 8]))
    n_kv_heads = draw(st.sampled_from([g for g in range(1, n_heads + 1) if n_heads % g == 0]))
    head_dim = draw(st.sampled_from([2, 4, 8]))
    config = {
        "model_type": "llama",
        "hidden_size": n_heads * draw(st.integers(1, 6)),  # transformers wants a multiple of H; D need not be d / H
        "head_dim": head_dim,
        "num_attention_heads": n_heads,
        "num_key_value_heads": n_kv_heads,
        "num_hidden_layers": draw(st.integers(1, 3)),
        "intermediate_size": draw(st.integers(1, 40)),
        "vocab_size": draw(st.integers(3, 50)),  # > the default eos_token_id 2
        "tie_word_embeddings": draw(st.booleans()),
        "attention_bias": draw(st.booleans()),
        "mlp_bias": draw(st.booleans()),
    }
    if draw(st.booleans()):  # a config.json without head_dim: D = d / H
        config["hidden_size"] = n_heads * head_dim
        del config["head_dim"]
    return config


@settings(max_examples=30, deadline=None)
@given(llama_like_configs())
def test_random_llama_configs_count_like_transformers(config):
    pytest.importorskip("transformers")
    m = derive(config)
    assert m.n_params == _numel(_transformers_model(config).parameters())
    g = config["num_key_value_heads"]
    assert m.kv_bytes_per_token() == 2 * config["num_hidden_layers"] * g * m.head_dim * 2
    assert m.n_params - m.kv_projection_params() + m.kv_projection_params(1) == m.weight_bytes(1, n_kv_heads=1)
