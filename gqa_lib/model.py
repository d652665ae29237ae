"""A tiny decoder-only language model built from GroupedQueryAttention blocks."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .attention import ATTENTION_IMPLEMENTATIONS, GroupedQueryAttention, check_head_counts
from .checks import as_count, as_non_negative_float
from .kv_cache import KVCache

__all__ = ["TransformerConfig", "TransformerLM"]


@dataclass
class TransformerConfig:
    """Size of a :class:`TransformerLM`. Defaults give a model of about 0.4 M parameters."""

    vocab_size: int = 64  # number of distinct tokens
    max_seq_len: int = 128  # longest sequence (learned positions and cache length)
    d_model: int = 128  # residual stream width
    n_layers: int = 2  # transformer blocks
    n_heads: int = 8  # query heads, H
    n_kv_heads: int = 8  # key/value heads, G (H: MHA, 1: MQA)
    d_ff: int = 512  # hidden width of the MLP
    bias: bool = False  # biases in the attention projections
    attn_impl: str = "grouped"  # "grouped", "grouped_matmul", "repeat_kv" or "sdpa"

    def __post_init__(self) -> None:
        for name in ("vocab_size", "max_seq_len", "d_model", "n_layers", "d_ff"):
            setattr(self, name, as_count(name, getattr(self, name)))
        self.d_model, self.n_heads, self.n_kv_heads = check_head_counts(self.d_model, self.n_heads, self.n_kv_heads)
        if not isinstance(self.bias, bool):
            raise ValueError(f"bias must be True or False; got {self.bias!r}")
        if not isinstance(self.attn_impl, str) or self.attn_impl not in ATTENTION_IMPLEMENTATIONS:
            raise ValueError(f"attn_impl must be one of {sorted(ATTENTION_IMPLEMENTATIONS)}; got {self.attn_impl!r}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.attn_norm = nn.LayerNorm(config.d_model)
        self.attn = GroupedQueryAttention(
            config.d_model, config.n_heads, config.n_kv_heads, bias=config.bias, impl=config.attn_impl
        )
        self.mlp_norm = nn.LayerNorm(config.d_model)
        self.mlp = nn.Sequential(
            nn.Linear(config.d_model, config.d_ff),
            nn.GELU(),
            nn.Linear(config.d_ff, config.d_model),
        )

    def forward(self, x: torch.Tensor, cache: KVCache | None, layer: int) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), cache=cache, layer=layer)
        return x + self.mlp(self.mlp_norm(x))


class TransformerLM(nn.Module):
    """Decoder-only LM: token + learned position embeddings, blocks, tied output head."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)
        self.pos_emb = nn.Embedding(config.max_seq_len, config.d_model)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.final_norm = nn.LayerNorm(config.d_model)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def new_cache(self, batch_size: int, max_len: int | None = None) -> KVCache:
        """An empty KV cache sized for this model (``max_len`` defaults to ``max_seq_len``)."""
        c = self.config
        max_len = c.max_seq_len if max_len is None else as_count("max_len", max_len)
        if max_len > c.max_seq_len:
            raise ValueError(f"max_len={max_len} exceeds the model's max_seq_len={c.max_seq_len}")
        p = self.tok_emb.weight
        return KVCache(c.n_layers, batch_size, c.n_kv_heads, max_len, c.head_dim, dtype=p.dtype, device=p.device)

    def _check_tokens(self, idx: torch.Tensor, name: str = "idx") -> None:
        """ValueError naming ``idx`` unless it is a non-empty (B, T) tensor of token ids in range."""
        if not isinstance(idx, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor of token ids; got {type(idx).__name__}")
        if idx.dim() != 2:
            hint = " (for one sequence, pass idx[None])" if idx.dim() == 1 else ""
            raise ValueError(f"{name} must have shape (B, T){hint}; got {tuple(idx.shape)}")
        if idx.dtype == torch.bool or idx.is_floating_point() or idx.is_complex():
            raise ValueError(f"{name} must hold integer token ids; got dtype {idx.dtype}")
        if idx.shape[0] == 0 or idx.shape[1] == 0:
            raise ValueError(f"{name} must hold at least one sequence of at least one token; got {tuple(idx.shape)}")
        lo, hi = int(idx.min()), int(idx.max())
        if lo < 0 or hi >= self.config.vocab_size:
            raise ValueError(f"{name} holds token ids in [{lo}, {hi}]; valid ids are 0 .. {self.config.vocab_size - 1}")

    def forward(self, idx: torch.Tensor, cache: KVCache | None = None, *, last_only: bool = False) -> torch.Tensor:
        """idx: (B, T) token ids -> logits (B, T, vocab_size), or (B, 1, vocab_size) with ``last_only``.

        With a ``cache`` the tokens continue the cached sequence: their
        positions start at ``cache.seq_len`` and their keys/values are
        appended. If the call fails or is interrupted part-way (an exception,
        KeyboardInterrupt), the cache is left as it was before the call.
        ``last_only=True`` computes logits for the last position only (what
        generation needs after a prefill: it skips a (T, vocab) product).
        """
        self._check_tokens(idx)
        B, T = idx.shape
        start = 0
        if cache is not None:
            if not isinstance(cache, KVCache):
                raise ValueError(f"cache must be a KVCache; got {type(cache).__name__}")
            if cache.n_layers != self.config.n_layers or cache.batch_size != B:
                raise ValueError(
                    f"cache has {cache.n_layers} layers and batch {cache.batch_size}; "
                    f"this call needs {self.config.n_layers} layers and batch {B}"
                )
            start = cache.check_aligned()
        if start + T > self.config.max_seq_len:
            raise ValueError(
                f"sequence of {start + T} positions exceeds max_seq_len={self.config.max_seq_len}"
            )
        if cache is None:
            return self._forward(idx, None, start, last_only)
        with cache.rollback_on_error():  # the whole pass, output head included
            return self._forward(idx, cache, start, last_only)

    def _forward(self, idx: torch.Tensor, cache: KVCache | None, start: int, last_only: bool) -> torch.Tensor:
        T = idx.shape[1]
        positions = torch.arange(start, start + T, device=idx.device)  # (T,)
        x = self.tok_emb(idx) + self.pos_emb(positions)  # (B, T, d_model)
        for layer, block in enumerate(self.blocks):
            x = block(x, cache, layer)
        if last_only:
            x = x[:, -1:]  # (B, 1, d_model)
        return F.linear(self.final_norm(x), self.tok_emb.weight)  # (B, T or 1, vocab_size), tied weights

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Continue ``idx`` (B, T) by ``max_new_tokens`` tokens, decoding through a KV cache.

        The prompt is run once (prefill, logits for its last position only);
        each new token then costs one forward pass over a single position.
        ``temperature=0`` is greedy; ``top_k`` keeps only the k most likely
        tokens. Returns (B, T + max_new_tokens).
        """
        self._check_tokens(idx)
        max_new_tokens = as_count("max_new_tokens", max_new_tokens, minimum=0)
        temperature = as_non_negative_float("temperature", temperature)
        if top_k is not None:
            top_k = as_count("top_k", top_k)
            if top_k > self.config.vocab_size:
                raise ValueError(f"top_k must be between 1 and vocab_size={self.config.vocab_size}; got {top_k}")
        total = idx.shape[1] + max_new_tokens
        if total > self.config.max_seq_len:
            raise ValueError(
                f"prompt of {idx.shape[1]} + {max_new_tokens} new tokens exceeds max_seq_len={self.config.max_seq_len}"
            )
        if max_new_tokens == 0:
            return idx
        cache = self.new_cache(idx.shape[0], total)
        logits = self(idx, cache=cache, last_only=True)[:, -1, :]  # (B, V): prefill
        out = [idx]
        for step in range(max_new_tokens):
            next_token = self._sample(logits, temperature, top_k, generator)  # (B, 1)
            out.append(next_token)
            if step + 1 < max_new_tokens:
                logits = self(next_token, cache=cache)[:, -1, :]  # (B, V)
        return torch.cat(out, dim=1)

    @staticmethod
    def _sample(logits: torch.Tensor, temperature: float, top_k: int | None, generator) -> torch.Tensor:
        """Pick one token per row of logits (B, V) -> (B, 1), in fp64 whatever the model's dtype."""
        if temperature == 0:
            return logits.argmax(dim=-1, keepdim=True)
        # fp64 (a temperature of 1e-300 is 0 in fp32), maximum subtracted first: scores <= 0, so
        # dividing by even a subnormal temperature gives 0 or -inf (greedy in the limit), never NaN
        logits = logits.double()
        logits = (logits - logits.amax(dim=-1, keepdim=True)) / temperature
        if top_k is not None:
            kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = torch.softmax(logits, dim=-1)
        return torch.multinomial(probs, 1, generator=generator)
