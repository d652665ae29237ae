"""gqa_lib: the small library behind the GQA book.

Multi-head, multi-query and grouped-query attention, a KV cache, a tiny
decoder-only language model, benchmarks of decoding speed, and the paper's
recipe in miniature: checkpoint conversion, a toy corpus, uptraining.
"""

from . import gpu_plan, plots
from .attention import (
    ATTENTION_IMPLEMENTATIONS,
    GroupedQueryAttention,
    grouped_attention,
    grouped_matmul_attention,
    repeat_kv,
    repeat_kv_attention,
    sdpa_attention,
)
from .convert import convert_to_gqa
from .corpus import CorpusConfig, make_corpus
from .kv_cache import KVCache, kv_cache_bytes
from .model import TransformerConfig, TransformerLM
from .model_configs import REAL_MODELS, RealModel, load_real_model
from .presets import PRESETS, ModelPreset, get_preset
from .source import show_source
from .timing import device_name, pick_device

__version__ = "0.1.0"

__all__ = [
    "ATTENTION_IMPLEMENTATIONS",
    "CorpusConfig",
    "convert_to_gqa",
    "make_corpus",
    "GroupedQueryAttention",
    "KVCache",
    "ModelPreset",
    "PRESETS",
    "TransformerConfig",
    "TransformerLM",
    "device_name",
    "get_preset",
    "pick_device",
    "grouped_attention",
    "grouped_matmul_attention",
    "kv_cache_bytes",
    "repeat_kv",
    "repeat_kv_attention",
    "sdpa_attention",
    "show_source",
    "REAL_MODELS",
    "RealModel",
    "load_real_model",
]
