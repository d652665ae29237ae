"""Real models' published ``config.json`` files, and the attention numbers they imply.

``gqa_lib/data/model_configs/`` ships one Hugging Face ``config.json`` per
model (``SOURCES.md`` there names each original and the paper it is cited
as). This module reads them and derives, by counting the architecture's
tensors, what the book needs:

* the attention shape: layers L, query heads H, KV heads G, head dim D, width;
* the parameter count, total and per generated token (MoE routes each token
  through a few experts; T5's decoding step runs the decoder, not the encoder);
* the KV cache: elements one generated token adds, and bytes for a context,
  honouring sliding windows (Mistral) and local/global layers (Gemma 2);
* what converting the model to G KV heads does to its cache and its weights.

Units: parameter counts and elements are plain numbers; anything called
``*_bytes`` is bytes, at ``bytes_per_elem`` bytes per element (2: fp16/bf16).

The counts are exact, not estimates: ``tests/test_model_configs.py`` holds
each one equal to the number of parameters of the same config built by
Hugging Face transformers (on the ``meta`` device, no weights).
"""

from __future__ import annotations

import copy
import importlib.resources
import json
from dataclasses import dataclass
from typing import Callable

from .checks import as_count

__all__ = ["RealModel", "REAL_MODELS", "load_real_model", "derive", "config_files"]


@dataclass(frozen=True)
class RealModel:
    """One published model: its config and the attention numbers derived from it.

    Shape fields count what one decoder layer's self-attention holds; the
    derived numbers are for the model exactly as published (``n_kv_heads``
    is its own G). Methods that take ``n_kv_heads`` answer for the model
    converted to that many KV heads (the GQA paper's uptraining recipe).
    """

    key: str  # short name of the shipped file, e.g. "llama-2-70b"
    name: str  # display name, e.g. "Llama 2 70B"
    hf_id: str  # Hugging Face repository of the original config.json
    cite: str  # key in references.bib
    config: dict  # the loaded config.json (a copy of it)
    n_layers: int  # layers with self-attention that decoding caches (T5: decoder layers)
    n_heads: int  # query heads H
    n_kv_heads: int  # KV heads G as stored (MLA: H, but see kv_elems_per_token)
    head_dim: int  # D of the query/key heads (MLA: qk_nope_head_dim + qk_rope_head_dim)
    d_model: int  # residual width
    n_params: int  # all parameters (embeddings and output head included; a tied head counted once)
    n_active_params: int  # parameters one generated token passes through (MoE: top-k + shared; T5: decoder + head
    #                        without the cross-attention k, v, which run once per input)
    kv_elems_per_token: int  # elements (K and V, all layers) one generated token adds to the cache
    sliding_window: int | None  # window (tokens) if every self-attention layer attends within one, else None
    window_layers: int  # how many of the n_layers attend within local_window (Mistral v0.1: all 32; Gemma 2: 21 of 42)
    local_window: int | None  # that window's length in tokens (None when window_layers == 0)
    attention: str  # "MHA", "MQA", "GQA-<G>" or "MLA"
    kv_params_per_kv_head: int  # K/V projection parameters (weights and biases) per KV head, all converted layers
    cross_kv_elems_per_source_token: int = 0  # T5: encoder token's K/V in every decoder cross-attention; else 0

    # ----------------------------------------------------------------- KV heads
    def _g(self, n_kv_heads) -> int:
        """The G to answer for: the model's own, or ``n_kv_heads`` if it divides H."""
        if n_kv_heads is None:
            return self.n_kv_heads
        if self.attention == "MLA":
            raise ValueError(
                f"{self.name} uses multi-head latent attention (MLA): its cache is a shared latent, "
                f"not G KV heads, so n_kv_heads={n_kv_heads!r} does not apply"
            )
        g = as_count("n_kv_heads", n_kv_heads)
        if self.n_heads % g:
            divisors = [d for d in range(1, self.n_heads + 1) if self.n_heads % d == 0]
            raise ValueError(
                f"n_kv_heads={g} does not divide {self.name}'s n_heads H={self.n_heads}; valid G: {divisors}"
            )
        return g

    # ----------------------------------------------------------------- the cache
    def kv_bytes_per_token(self, bytes_per_elem: int = 2, n_kv_heads: int | None = None) -> int:
        """Bytes one generated token adds to the self-attention cache (K and V, all layers).

        ``n_kv_heads`` answers for the model converted to that G (ValueError for
        MLA, or a G that does not divide H). Sliding windows do not change this
        rate; they cap how many tokens the cache holds (see :meth:`kv_bytes`).
        """
        bytes_per_elem = as_count("bytes_per_elem", bytes_per_elem)
        if n_kv_heads is None:
            return self.kv_elems_per_token * bytes_per_elem
        return 2 * self.n_layers * self._g(n_kv_heads) * self.head_dim * bytes_per_elem

    def kv_bytes(
        self, seq_len: int, batch: int = 1, bytes_per_elem: int = 2, n_kv_heads: int | None = None
    ) -> int:
        """Bytes of the self-attention cache after ``seq_len`` tokens, for ``batch`` sequences.

        A layer with a local window holds ``min(seq_len, local_window)`` tokens;
        the others hold all ``seq_len``.
        """
        seq_len = as_count("seq_len", seq_len, minimum=0)
        batch = as_count("batch", batch)
        per_layer_token = self.kv_bytes_per_token(bytes_per_elem, n_kv_heads) // self.n_layers
        held = (self.n_layers - self.window_layers) * seq_len
        if self.window_layers:
            held += self.window_layers * min(seq_len, self.local_window)
        return per_layer_token * held * batch

    def cross_kv_bytes(self, source_len: int, bytes_per_elem: int = 2, n_kv_heads: int | None = None) -> int:
        """Bytes of the cross-attention cache of one sequence with ``source_len`` encoder tokens.

        An encoder-decoder (T5) computes each decoder layer's cross-attention K
        and V of every encoder token once per sequence and keeps them for every
        decoding step. 0 for decoder-only models.
        """
        source_len = as_count("source_len", source_len, minimum=0)
        bytes_per_elem = as_count("bytes_per_elem", bytes_per_elem)
        if not self.cross_kv_elems_per_source_token:
            return 0
        g = self._g(n_kv_heads)
        return self.cross_kv_elems_per_source_token // self.n_kv_heads * g * source_len * bytes_per_elem

    # ----------------------------------------------------------------- the weights
    def kv_projection_params(self, n_kv_heads: int | None = None) -> int:
        """K and V projection parameters (weights and biases) over all layers at G = ``n_kv_heads``.

        The layers are those a GQA conversion changes: every decoder layer's
        self-attention, and for T5 also the decoder's cross-attention (the GQA
        paper converts both, not the encoder). MLA: the K/V path
        (kv_a_proj_with_mqa, kv_a_layernorm, kv_b_proj) as published; it has
        no G to change.
        """
        if self.attention == "MLA":
            self._g(n_kv_heads)  # ValueError for any n_kv_heads
            return self.n_layers * _mla_kv_path_params(self.config)
        return self.kv_params_per_kv_head * self._g(n_kv_heads)

    def weight_bytes(self, bytes_per_elem: int = 2, n_kv_heads: int | None = None) -> int:
        """Bytes of all ``n_params`` weights; with ``n_kv_heads``, of the model converted to that G.

        Converting shrinks (or grows) only the K/V projections:
        ``n_params - kv_projection_params() + kv_projection_params(G)``.
        """
        bytes_per_elem = as_count("bytes_per_elem", bytes_per_elem)
        params = self.n_params - self.kv_projection_params() + self.kv_projection_params(n_kv_heads)
        return params * bytes_per_elem


# --------------------------------------------------------------------------- counting, one family at a time
# Each counter takes a config dict and returns the fields of RealModel it derives.


def _attention_label(n_heads: int, n_kv_heads: int) -> str:
    if n_kv_heads == n_heads:
        return "MHA"
    return "MQA" if n_kv_heads == 1 else f"GQA-{n_kv_heads}"


def _embeddings(cfg: dict, d: int, tied_by_default: bool) -> int:
    """Input embedding plus output head: vocab x d each, once if they are tied."""
    tied = cfg.get("tie_word_embeddings", tied_by_default)
    return cfg["vocab_size"] * d * (1 if tied else 2)


def _llama_family(cfg: dict) -> dict:
    """Llama, Mistral, Mixtral, Qwen2 and Gemma 2: pre-norm decoders with RMSNorm, RoPE and a gated MLP.

    Per layer: q_proj (d -> H*D), k_proj and v_proj (d -> G*D), o_proj
    (H*D -> d), with biases where the config asks (Qwen2: q, k, v always);
    gate/up/down (3*d*ff), or for Mixtral E experts of that size plus a
    router (d -> E); RMSNorm weights (2 of d; Gemma 2: 4). Then the final
    norm and the embeddings (tied: Gemma 2 by default).
    """
    kind = cfg["model_type"]
    d, L, H = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["num_attention_heads"]
    G = cfg.get("num_key_value_heads") or H
    D = cfg.get("head_dim") or d // H
    ff = cfg["intermediate_size"]

    # Biases: Qwen2 on q, k, v always; Llama and Gemma 2 on all four if attention_bias (Mistral and
    # Mixtral never); Llama's MLP if mlp_bias. (As transformers builds them.)
    attention_bias = kind in ("llama", "gemma2") and bool(cfg.get("attention_bias", False))
    qkv_bias, o_bias = kind == "qwen2" or attention_bias, attention_bias
    per_kv_head = 2 * (d * D + (D if qkv_bias else 0))  # k_proj + v_proj, one KV head
    attn = d * H * D + (H * D if qkv_bias else 0) + G * per_kv_head + H * D * d + (d if o_bias else 0)

    mlp = 3 * d * ff + ((2 * ff + d) if kind == "llama" and cfg.get("mlp_bias", False) else 0)
    experts, top_k = cfg.get("num_local_experts", 0), cfg.get("num_experts_per_tok", 0)
    if kind == "mixtral":
        ffn_total, ffn_active = experts * mlp + d * experts, top_k * mlp + d * experts  # experts + router
    else:
        ffn_total = ffn_active = mlp
    norms = (4 if kind == "gemma2" else 2) * d

    outside = _embeddings(cfg, d, tied_by_default=kind == "gemma2") + d  # + final norm
    n_params = L * (attn + ffn_total + norms) + outside
    n_active = L * (attn + ffn_active + norms) + outside

    # Windows: Mistral v0.1 slides every layer over `sliding_window` tokens; Qwen2 has the
    # field but `use_sliding_window: false`; Gemma 2 alternates local (even) and global layers.
    window = cfg.get("sliding_window")
    if kind == "gemma2":
        window_layers = (L + 1) // 2 if window else 0
    elif kind == "qwen2":
        window_layers = L if (window and cfg.get("use_sliding_window", False)) else 0
        # (transformers' max_window_layers would exempt some layers; all Qwen2.5 configs ship it off)
    else:
        window_layers = L if window else 0
    return dict(
        n_layers=L, n_heads=H, n_kv_heads=G, head_dim=D, d_model=d,
        n_params=n_params, n_active_params=n_active, kv_elems_per_token=2 * L * G * D,
        sliding_window=window if window_layers == L else None,
        window_layers=window_layers, local_window=window if window_layers else None,
        attention=_attention_label(H, G), kv_params_per_kv_head=L * per_kv_head,
    )


def _falcon(cfg: dict) -> dict:
    """Falcon: fused query_key_value, parallel attention and MLP, LayerNorm with bias, tied head.

    Per layer: query_key_value (d -> H*D + 2*G*D), dense (H*D -> d), a 4x MLP
    h_to_4h / 4h_to_h, biases on all four only if ``bias`` is true; LayerNorm
    weight and bias: one (Falcon-7B's parallel_attn), two for the new decoder
    architecture or sequential attention. Then ln_f and the (tied) embedding.
    G: ``num_kv_heads`` for the new architecture, 1 for ``multi_query``, else H.
    """
    d, L, H = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["num_attention_heads"]
    D = d // H
    new_arch = cfg.get("new_decoder_architecture", False)
    if new_arch:
        G = cfg.get("num_kv_heads") or H
    else:
        G = 1 if cfg.get("multi_query", True) else H
    ff = cfg.get("ffn_hidden_size") or 4 * d
    bias = cfg.get("bias", False)

    per_kv_head = 2 * (d * D + (D if bias else 0))
    attn = d * H * D + G * per_kv_head + H * D * d + ((H * D + d) if bias else 0)
    mlp = 2 * d * ff + ((ff + d) if bias else 0)
    if new_arch:
        layer_norms = cfg.get("num_ln_in_parallel_attn") or 2
    else:
        layer_norms = 1 if cfg.get("parallel_attn", True) else 2
    per_layer = attn + mlp + layer_norms * 2 * d
    n_params = L * per_layer + 2 * d + _embeddings(cfg, d, tied_by_default=True)  # + ln_f
    return dict(
        n_layers=L, n_heads=H, n_kv_heads=G, head_dim=D, d_model=d,
        n_params=n_params, n_active_params=n_params, kv_elems_per_token=2 * L * G * D,
        sliding_window=None, window_layers=0, local_window=None,
        attention=_attention_label(H, G), kv_params_per_kv_head=L * per_kv_head,
    )


def _mla_kv_path_params(cfg: dict) -> int:
    """One layer's MLA K/V path: kv_a_proj_with_mqa (d -> r + rope), kv_a_layernorm (r), kv_b_proj (r -> H*(nope+v))."""
    d, H, r = cfg["hidden_size"], cfg["num_attention_heads"], cfg["kv_lora_rank"]
    bias = cfg.get("attention_bias", False)
    down = d * (r + cfg["qk_rope_head_dim"]) + ((r + cfg["qk_rope_head_dim"]) if bias else 0)
    return down + r + r * H * (cfg["qk_nope_head_dim"] + cfg["v_head_dim"])


def _deepseek_v2(cfg: dict) -> dict:
    """DeepSeek-V2: multi-head latent attention (MLA) and DeepSeekMoE.

    Attention per layer: q_a_proj (d -> q_lora_rank), q_a_layernorm,
    q_b_proj (q_lora_rank -> H*(nope+rope)) (or one q_proj when
    q_lora_rank is null), the K/V path (see :func:`_mla_kv_path_params`),
    o_proj (H*v -> d). The cache keeps, per layer and token, the compressed
    latent (kv_lora_rank) and the shared RoPE key (qk_rope_head_dim).
    FFN: the first ``first_k_dense_replace`` layers (and layers off
    ``moe_layer_freq``) are dense (3*d*intermediate_size); the rest hold
    n_routed_experts experts of 3*d*moe_intermediate_size, shared experts as
    one MLP of n_shared_experts*moe_intermediate_size, and a router d -> E.
    """
    d, L, H = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["num_attention_heads"]
    nope, rope, v = cfg["qk_nope_head_dim"], cfg["qk_rope_head_dim"], cfg["v_head_dim"]
    q_rank, kv_rank = cfg.get("q_lora_rank"), cfg["kv_lora_rank"]
    bias = cfg.get("attention_bias", False)

    if q_rank:
        q = d * q_rank + (q_rank if bias else 0) + q_rank + q_rank * H * (nope + rope)
    else:
        q = d * H * (nope + rope)
    attn = q + _mla_kv_path_params(cfg) + H * v * d + (d if bias else 0)

    expert = 3 * d * cfg["moe_intermediate_size"]
    experts, top_k = cfg["n_routed_experts"], cfg["num_experts_per_tok"]
    shared = (cfg.get("n_shared_experts") or 0) * expert
    router = d * experts
    dense_mlp = 3 * d * cfg["intermediate_size"]
    first_dense, freq = cfg.get("first_k_dense_replace", 0), cfg.get("moe_layer_freq", 1)
    n_moe = sum(1 for i in range(L) if i >= first_dense and i % freq == 0)

    common = L * (attn + 2 * d) + (L - n_moe) * dense_mlp + d + _embeddings(cfg, d, tied_by_default=False)
    n_params = common + n_moe * (experts * expert + shared + router)
    n_active = common + n_moe * (top_k * expert + shared + router)
    return dict(
        n_layers=L, n_heads=H, n_kv_heads=cfg.get("num_key_value_heads") or H, head_dim=nope + rope, d_model=d,
        n_params=n_params, n_active_params=n_active, kv_elems_per_token=L * (kv_rank + rope),
        sliding_window=None, window_layers=0, local_window=None, attention="MLA", kv_params_per_kv_head=0,
    )


def _t5(cfg: dict) -> dict:
    """T5 (and T5.1.1): encoder-decoder with relative position biases and RMS-style layer norms.

    Attention blocks have q, k, v (d -> H*d_kv) and o (H*d_kv -> d), no
    biases. Encoder layer: self-attention, FFN, 2 norms; decoder layer:
    self-attention, cross-attention, FFN, 3 norms. FFN: wi (d -> d_ff) and
    wo, or for ``gated-*`` (T5.1.1) wi_0 and wi_1. The first layer of each
    stack holds a relative attention bias table (num_buckets x H). Final
    norm per stack; one shared embedding; lm_head separate when
    ``tie_word_embeddings`` is false (T5.1.1).

    ``n_active_params`` is what a decoding step reads: the decoder (its
    embedding, layers and final norm) plus lm_head, without the encoder and
    without the decoder's cross-attention k and v projections. Those run
    once per input (on the encoder's output, whose keys and values are then
    cached), not once per generated token.
    """
    d, H, dk = cfg["d_model"], cfg["num_heads"], cfg["d_kv"]
    L_enc = cfg["num_layers"]
    L_dec = cfg.get("num_decoder_layers") or L_enc
    inner = H * dk
    attn = 2 * d * inner + 2 * d * inner  # q, o + k, v
    gated = cfg.get("feed_forward_proj", "relu").startswith("gated")
    ffn = (3 if gated else 2) * d * cfg["d_ff"]
    bias_table = cfg.get("relative_attention_num_buckets", 32) * H

    encoder = L_enc * (attn + ffn + 2 * d) + bias_table + d
    decoder_layers = L_dec * (2 * attn + ffn + 3 * d) + bias_table + d
    embedding = cfg["vocab_size"] * d
    head = 0 if cfg.get("tie_word_embeddings", True) else cfg["vocab_size"] * d

    per_kv_head = 2 * d * dk  # k and v of one head, one attention block
    return dict(
        n_layers=L_dec, n_heads=H, n_kv_heads=H, head_dim=dk, d_model=d,
        n_params=embedding + encoder + decoder_layers + head,
        n_active_params=embedding + decoder_layers + head - L_dec * 2 * d * inner,  # minus cross-attention k, v
        kv_elems_per_token=2 * L_dec * H * dk,
        sliding_window=None, window_layers=0, local_window=None,
        attention="MHA", kv_params_per_kv_head=2 * L_dec * per_kv_head,  # self- and cross-attention
        cross_kv_elems_per_source_token=2 * L_dec * H * dk,
    )


_COUNTERS: dict[str, Callable[[dict], dict]] = {
    "llama": _llama_family,
    "mistral": _llama_family,
    "mixtral": _llama_family,
    "qwen2": _llama_family,
    "gemma2": _llama_family,
    "falcon": _falcon,
    "deepseek_v2": _deepseek_v2,
    "t5": _t5,
}


def derive(config: dict, key: str = "custom", name: str | None = None, hf_id: str = "", cite: str = "") -> RealModel:
    """The :class:`RealModel` of any config dict of a supported ``model_type``.

    Supported: llama, mistral, mixtral, qwen2, gemma2, falcon, deepseek_v2,
    t5. ValueError naming the model_type otherwise. The config is copied.
    """
    if not isinstance(config, dict):
        raise ValueError(f"config must be a dict (a loaded config.json); got {type(config).__name__}")
    kind = config.get("model_type")
    if kind not in _COUNTERS:
        raise ValueError(f"unsupported model_type {kind!r}; supported: {', '.join(_COUNTERS)}")
    config = copy.deepcopy(config)
    numbers = _COUNTERS[kind](config)
    if numbers["n_heads"] % numbers["n_kv_heads"]:
        raise ValueError(
            f"num_key_value_heads={numbers['n_kv_heads']} does not divide num_attention_heads={numbers['n_heads']}"
        )
    return RealModel(key=key, name=name or key, hf_id=hf_id, cite=cite, config=config, **numbers)


# --------------------------------------------------------------------------- the shipped files
#: key (file name without .json), display name, Hugging Face id, references.bib key
_CATALOGUE = [
    ("llama-2-7b", "Llama 2 7B", "meta-llama/Llama-2-7b-hf", "touvron2023llama2"),
    ("llama-2-13b", "Llama 2 13B", "meta-llama/Llama-2-13b-hf", "touvron2023llama2"),
    ("llama-2-70b", "Llama 2 70B", "meta-llama/Llama-2-70b-hf", "touvron2023llama2"),
    ("llama-3.1-8b", "Llama 3.1 8B", "meta-llama/Llama-3.1-8B", "dubey2024llama3"),
    ("llama-3.1-70b", "Llama 3.1 70B", "meta-llama/Llama-3.1-70B", "dubey2024llama3"),
    ("llama-3.1-405b", "Llama 3.1 405B", "meta-llama/Llama-3.1-405B", "dubey2024llama3"),
    ("mistral-7b", "Mistral 7B", "mistralai/Mistral-7B-v0.1", "jiang2023mistral"),
    ("mixtral-8x7b", "Mixtral 8x7B", "mistralai/Mixtral-8x7B-v0.1", "jiang2024mixtral"),
    ("qwen2.5-7b", "Qwen2.5 7B", "Qwen/Qwen2.5-7B", "qwen2024qwen25"),
    ("qwen2.5-72b", "Qwen2.5 72B", "Qwen/Qwen2.5-72B", "qwen2024qwen25"),
    ("gemma-2-9b", "Gemma 2 9B", "google/gemma-2-9b", "gemmateam2024gemma2"),
    ("falcon-7b", "Falcon 7B", "tiiuae/falcon-7b", "almazrouei2023falcon"),
    ("deepseek-v2", "DeepSeek-V2", "deepseek-ai/DeepSeek-V2", "deepseek2024v2"),
    ("t5-v1_1-xxl", "T5.1.1 XXL", "google/t5-v1_1-xxl", "raffel2020t5"),
]


def config_files():
    """The folder of shipped configs, ``gqa_lib/data/model_configs/`` (an importlib Traversable)."""
    return importlib.resources.files("gqa_lib").joinpath("data", "model_configs")


def _load(key: str, name: str, hf_id: str, cite: str) -> RealModel:
    config = json.loads(config_files().joinpath(f"{key}.json").read_text(encoding="utf-8"))
    return derive(config, key=key, name=name, hf_id=hf_id, cite=cite)


#: Every shipped model, by key, in the order above (Llama 2, Llama 3.1, Mistral, Qwen2.5, Gemma 2, Falcon, MLA, T5).
REAL_MODELS: dict[str, RealModel] = {entry[0]: _load(*entry) for entry in _CATALOGUE}


def load_real_model(key_or_name: str) -> RealModel:
    """The shipped model with this key ("llama-2-70b") or display name ("Llama 2 70B").

    ValueError naming the value and listing the known keys otherwise.
    """
    if isinstance(key_or_name, str):
        if key_or_name in REAL_MODELS:
            return REAL_MODELS[key_or_name]
        for model in REAL_MODELS.values():
            if model.name == key_or_name:
                return model
    raise ValueError(f"unknown real model {key_or_name!r}; known keys: {', '.join(REAL_MODELS)}")
