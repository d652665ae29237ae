"""Attention shapes of published models, for KV-cache and speed arithmetic.

Figures come from each model's paper or released configuration file
(``config.json``): layers, query heads, KV heads, head dimension, model
width, and the total parameter count used to compare weight bytes with
KV-cache bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

from .kv_cache import kv_cache_bytes

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
    n_params: float  # total parameters (for weight bytes)
    cite: str  # key in references.bib

    @property
    def attention(self) -> str:
        """'MHA', 'MQA' or 'GQA-G'."""
        if self.n_kv_heads == self.n_heads:
            return "MHA"
        if self.n_kv_heads == 1:
            return "MQA"
        return f"GQA-{self.n_kv_heads}"

    def kv_bytes_per_token(self, bytes_per_elem: int = 2, n_kv_heads: int | None = None) -> int:
        """KV-cache bytes one token adds (K and V, all layers); ``n_kv_heads`` overrides G."""
        g = self.n_kv_heads if n_kv_heads is None else n_kv_heads
        return kv_cache_bytes(self.n_layers, g, self.head_dim, seq_len=1, bytes_per_elem=bytes_per_elem)

    def weight_bytes(self, bytes_per_elem: int = 2) -> float:
        """Bytes of all weights at ``bytes_per_elem`` bytes each (2: fp16/bf16)."""
        return self.n_params * bytes_per_elem


PRESETS: dict[str, ModelPreset] = {
    p.name: p
    for p in [
        ModelPreset("Llama 2 7B", 32, 32, 32, 128, 4096, 6.74e9, "touvron2023llama2"),
        ModelPreset("Llama 2 13B", 40, 40, 40, 128, 5120, 13.0e9, "touvron2023llama2"),
        ModelPreset("Llama 2 70B", 80, 64, 8, 128, 8192, 69.0e9, "touvron2023llama2"),
        ModelPreset("Mistral 7B", 32, 32, 8, 128, 4096, 7.24e9, "jiang2023mistral"),
        ModelPreset("Llama 3 8B", 32, 32, 8, 128, 4096, 8.03e9, "dubey2024llama3"),
        ModelPreset("Llama 3 70B", 80, 64, 8, 128, 8192, 70.6e9, "dubey2024llama3"),
        # T5.1.1-XXL's decoder (the model the GQA paper converts): 24 layers, 64 heads of dim 64.
        ModelPreset("T5-XXL decoder", 24, 64, 64, 64, 4096, 11.3e9, "raffel2020t5"),
    ]
}


def get_preset(name: str) -> ModelPreset:
    """The preset called ``name``; ValueError listing the known names otherwise."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; known: {', '.join(PRESETS)}")
    return PRESETS[name]
