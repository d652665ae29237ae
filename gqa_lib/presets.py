"""Attention shapes of published models, for KV-cache and speed arithmetic.

Every preset is derived from the model's published ``config.json``, shipped
in ``gqa_lib/data/model_configs/`` and read by :mod:`gqa_lib.model_configs`:
layers, query heads, KV heads, head dimension, model width, and the exact
parameter count used to compare weight bytes with KV-cache bytes.

DeepSeek-V2 is among the shipped configs but not a preset: its multi-head
latent attention caches a shared latent, so "G KV heads" does not describe it.
"""

from __future__ import annotations

from dataclasses import dataclass

from .core.kv_cache import kv_cache_bytes
from .model_configs import REAL_MODELS, RealModel

__all__ = ["ModelPreset", "PRESETS", "get_preset"]


@dataclass(frozen=True)
class ModelPreset:
    """The attention shape of one published decoder (or decoder stack)."""

    name: str
    n_layers: int  # decoder layers with self-attention
    n_heads: int  # query heads H
    n_kv_heads: int  # key/value heads G
    head_dim: int  # D
    d_model: int  # residual width
    n_params: float  # parameters whose bytes a decoding step reads (all of them; T5: decoder + head, no cross-attn k/v)
    cite: str  # key in references.bib
    n_active_params: float | None = None  # parameters one token passes through (MoE: top-k experts); default n_params
    source_key: str = ""  # key of the config in gqa_lib.model_configs.REAL_MODELS ("" for a hand-made preset)
    cross_kv_elems_per_source_token: int = 0  # encoder-decoder: cross-attention K/V per encoder token, all layers

    def __post_init__(self):
        if self.n_active_params is None:
            object.__setattr__(self, "n_active_params", self.n_params)

    @property
    def attention(self) -> str:
        """'MHA', 'MQA' or 'GQA-G'."""
        if self.n_kv_heads == self.n_heads:
            return "MHA"
        if self.n_kv_heads == 1:
            return "MQA"
        return f"GQA-{self.n_kv_heads}"

    def kv_bytes_per_token(self, bytes_per_elem: int = 2, n_kv_heads: int | None = None) -> int:
        """Self-attention KV-cache bytes one token adds (K and V, all layers); ``n_kv_heads`` overrides G."""
        g = self.n_kv_heads if n_kv_heads is None else n_kv_heads
        return kv_cache_bytes(self.n_layers, g, self.head_dim, seq_len=1, bytes_per_elem=bytes_per_elem)

    def cross_kv_bytes(self, source_len: int, bytes_per_elem: int = 2, n_kv_heads: int | None = None) -> int:
        """Cross-attention cache bytes of one sequence with ``source_len`` encoder tokens; 0 for decoder-only.

        Each decoder layer keeps K and V of every encoder token for the whole
        decode (the GQA paper shrinks these heads too); ``n_kv_heads`` overrides G.
        """
        if not self.cross_kv_elems_per_source_token:
            return 0
        g = self.n_kv_heads if n_kv_heads is None else n_kv_heads
        return kv_cache_bytes(self.n_layers, g, self.head_dim, seq_len=source_len, bytes_per_elem=bytes_per_elem)

    def weight_bytes(self, bytes_per_elem: int = 2) -> float:
        """Bytes of all weights at ``bytes_per_elem`` bytes each (2: fp16/bf16)."""
        return self.n_params * bytes_per_elem


def _preset(model: RealModel, name: str | None = None, decoder_only: bool = False) -> ModelPreset:
    """The preset of a shipped model; ``decoder_only``: count what a decode step reads (T5: no encoder)."""
    n_params = model.n_active_params if decoder_only else model.n_params
    return ModelPreset(
        name or model.name, model.n_layers, model.n_heads, model.n_kv_heads, model.head_dim, model.d_model,
        n_params, model.cite, n_active_params=model.n_active_params, source_key=model.key,
        cross_kv_elems_per_source_token=model.cross_kv_elems_per_source_token,
    )


PRESETS: dict[str, ModelPreset] = {
    p.name: p
    for p in [
        *(_preset(REAL_MODELS[key]) for key in (
            "llama-2-7b", "llama-2-13b", "llama-2-70b", "mistral-7b", "llama-3.1-8b", "llama-3.1-70b",
            "llama-3.1-405b", "mixtral-8x7b", "qwen2.5-7b", "qwen2.5-72b", "gemma-2-9b", "falcon-7b",  # MQA, H=71
        )),
        # T5.1.1-XXL's decoder (the model the GQA paper converts): 24 layers, 64 heads of dim 64.
        # n_params: its decoder and untied head without the cross-attention k, v projections, 5.70e9 (the encoder,
        # 4.63e9, and those projections, 0.81e9, run once per input on its way in, not once per generated token).
        _preset(REAL_MODELS["t5-v1_1-xxl"], name="T5-XXL decoder", decoder_only=True),
    ]
}

# Names the chapters used before the presets came from config files. Llama 3 and Llama 3.1
# share every shape (layers, heads, KV heads, widths, vocabulary); 3.1 only adds the RoPE
# scaling for its 128K context. So the old names answer with the 3.1 presets.
_ALIASES = {"Llama 3 8B": "Llama 3.1 8B", "Llama 3 70B": "Llama 3.1 70B"}


def get_preset(name: str) -> ModelPreset:
    """The preset called ``name`` (or an old alias); ValueError listing the known names otherwise."""
    name = _ALIASES.get(name, name) if isinstance(name, str) else name
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; known: {', '.join(PRESETS)}")
    return PRESETS[name]
