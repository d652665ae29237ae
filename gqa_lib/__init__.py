"""gqa_lib: the small library behind the GQA book.

Its folders follow the book's parts:

- :mod:`gqa_lib.core`: attention (MHA, MQA, GQA), rotary embeddings, the KV
  cache and a small decoder-only language model (chapters 1-4);
- :mod:`gqa_lib.recipe`: the paper's recipe in miniature: mean-pool
  conversion of a checkpoint, a toy corpus, uptraining, the experiment grid,
  and Hugging Face checkpoints (chapters 6-9);
- :mod:`gqa_lib.speed`: timing, benchmarks, memory plans for GPUs, capacity
  of real models on real devices, tensor parallelism (chapters 1, 5, 8-10);
- :mod:`gqa_lib.viz`: figures, diagrams and widgets (every chapter).

Beside them: argument checks (``checks``), the published model shapes
(``presets``, ``model_configs``), the paper's numbers (``paper``), progress
bars and source listings. The names most chapters use are importable from
``gqa_lib`` itself.
"""

from . import core, recipe, speed, viz
from .core.attention import (
    ATTENTION_IMPLEMENTATIONS,
    GroupedQueryAttention,
    grouped_attention,
    grouped_matmul_attention,
    repeat_kv,
    repeat_kv_attention,
    sdpa_attention,
)
from .core.kv_cache import KVCache, kv_cache_bytes
from .core.model import TransformerConfig, TransformerLM
from .model_configs import REAL_MODELS, RealModel, load_real_model
from .presets import PRESETS, ModelPreset, get_preset
from .recipe.convert import convert_to_gqa
from .recipe.corpus import CorpusConfig, make_corpus
from .source import show_source
from .speed.timing import device_name, pick_device

__version__ = "0.1.0"

__all__ = [
    "core",
    "recipe",
    "speed",
    "viz",
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
