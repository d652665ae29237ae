"""A miniature Llama: a decoder-only language model built from GroupedQueryAttention blocks.

The architecture of Llama (Touvron et al. 2023) and of most models the book
cites: pre-norm blocks with RMSNorm, rotary position embeddings on queries
and keys (no learned positions), a SwiGLU MLP, no biases, and an output head
tied to the token embedding. Module names follow Hugging Face's
``LlamaForCausalLM``, so a state dict maps one to one (``model.embed_tokens``,
``model.layers.{i}.self_attn.{q,k,v,o}_proj``, ``model.layers.{i}.mlp.{gate,up,down}_proj``,
``model.layers.{i}.input_layernorm``, ``model.layers.{i}.post_attention_layernorm``,
``model.norm``, ``lm_head``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..checks import as_count, as_non_negative_float, as_positive_float
from .attention import ATTENTION_IMPLEMENTATIONS, GroupedQueryAttention, check_head_counts
from .kv_cache import KVCache
from .rope import rope_cos_sin

__all__ = ["TransformerConfig", "TransformerLM", "RMSNorm", "SwiGLU", "DecoderLayer"]


@dataclass
class TransformerConfig:
    """Size of a :class:`TransformerLM`. Defaults give a model of about 0.4 M parameters."""

    vocab_size: int = 64  # number of distinct tokens
    max_seq_len: int = 128  # longest sequence (the KV cache's length)
    d_model: int = 128  # residual stream width
    n_layers: int = 2  # decoder layers
    n_heads: int = 8  # query heads, H
    n_kv_heads: int = 8  # key/value heads, G (H: MHA, 1: MQA)
    d_ff: int = 344  # hidden width of the SwiGLU MLP (Llama: about 8/3 d_model)
    rope_theta: float = 10000.0  # RoPE base: pair i turns by position * theta**(-2i/D) radians
    norm_eps: float = 1e-5  # added to the mean square in RMSNorm
    tie_word_embeddings: bool = True  # output head shares the token embedding matrix
    bias: bool = False  # biases in the attention projections (Llama: none; Qwen2: q, k, v)
    attn_impl: str = "grouped"  # "grouped", "grouped_matmul", "repeat_kv" or "sdpa"

    def __post_init__(self) -> None:
        for name in ("vocab_size", "max_seq_len", "d_model", "n_layers", "d_ff"):
            setattr(self, name, as_count(name, getattr(self, name)))
        self.d_model, self.n_heads, self.n_kv_heads = check_head_counts(self.d_model, self.n_heads, self.n_kv_heads)
        if self.head_dim % 2:
            raise ValueError(
                f"d_model={self.d_model} / n_heads={self.n_heads} gives head_dim={self.head_dim}; "
                "RoPE needs an even head_dim"
            )
        self.rope_theta = as_positive_float("rope_theta", self.rope_theta)
        self.norm_eps = as_non_negative_float("norm_eps", self.norm_eps)
        for name in ("bias", "tie_word_embeddings"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False; got {getattr(self, name)!r}")
        if not isinstance(self.attn_impl, str) or self.attn_impl not in ATTENTION_IMPLEMENTATIONS:
            raise ValueError(f"attn_impl must be one of {sorted(ATTENTION_IMPLEMENTATIONS)}; got {self.attn_impl!r}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads


class RMSNorm(nn.Module):
    """x / sqrt(mean(x**2) + eps) * weight, computed in float32 whatever x's dtype (as Llama does)."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + self.eps)  # unit root-mean-square
        return self.weight * x32.to(x.dtype)


class SwiGLU(nn.Module):
    """The Llama MLP: down(silu(gate(x)) * up(x)), d_model -> d_ff -> d_model, no biases."""

    def __init__(self, d_model: int, d_ff: int):
        super().__init__()
        self.gate_proj = nn.Linear(d_model, d_ff, bias=False)
        self.up_proj = nn.Linear(d_model, d_ff, bias=False)
        self.down_proj = nn.Linear(d_ff, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    """Pre-norm Llama block: x + self_attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(config.d_model, config.norm_eps)
        self.self_attn = GroupedQueryAttention(
            config.d_model, config.n_heads, config.n_kv_heads, bias=config.bias, impl=config.attn_impl
        )
        self.post_attention_layernorm = RMSNorm(config.d_model, config.norm_eps)
        self.mlp = SwiGLU(config.d_model, config.d_ff)

    def forward(self, x: torch.Tensor, cache: KVCache | None, layer: int, rope: tuple) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cache=cache, layer=layer, position_embeddings=rope)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaBackbone(nn.Module):
    """Token embedding, decoder layers and final norm: Hugging Face's ``LlamaModel`` (the ``model.`` prefix)."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.d_model)
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.n_layers))
        self.norm = RMSNorm(config.d_model, config.norm_eps)


class TransformerLM(nn.Module):
    """Decoder-only LM (a miniature Llama): embedding, RoPE decoder layers, RMSNorm, output head."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        if not isinstance(config, TransformerConfig):
            raise ValueError(f"config must be a TransformerConfig; got {type(config).__name__}")
        self.config = config
        self.model = LlamaBackbone(config)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.apply(self._init_weights)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def tensors_to_store(self, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        """The state dict as a safetensors file holds it: CPU, contiguous, in ``dtype`` (default: as it is).

        A tied output head is the embedding matrix itself, so ``lm_head.weight``
        is left out (safetensors refuses two names for one storage; Hugging
        Face's tied checkpoints leave it out too).
        """
        tensors = {k: v.detach().to("cpu", dtype).contiguous() for k, v in self.state_dict().items()}
        if self.config.tie_word_embeddings:
            tensors.pop("lm_head.weight")
        return tensors

    @property
    def layers(self) -> nn.ModuleList:
        """The decoder layers (``self.model.layers``); ``layers[i].self_attn`` is layer i's attention."""
        return self.model.layers

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def new_cache(self, batch_size: int, max_len: int | None = None) -> KVCache:
        """An empty KV cache sized for this model (``max_len`` defaults to ``max_seq_len``)."""
        c = self.config
        max_len = c.max_seq_len if max_len is None else as_count("max_len", max_len)
        if max_len > c.max_seq_len:
            raise ValueError(f"max_len={max_len} exceeds the model's max_seq_len={c.max_seq_len}")
        p = self.model.embed_tokens.weight
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
        c = self.config
        positions = torch.arange(start, start + T, device=idx.device)  # (T,): where these tokens sit
        x = self.model.embed_tokens(idx)  # (B, T, d_model): no position added, RoPE rotates q and k instead
        rope = rope_cos_sin(positions, c.head_dim, c.rope_theta, dtype=x.dtype)  # (T, D) each
        for layer, block in enumerate(self.model.layers):
            x = block(x, cache, layer, rope)
        if last_only:
            x = x[:, -1:]  # (B, 1, d_model)
        return self.lm_head(self.model.norm(x))  # (B, T or 1, vocab_size)

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
        new_cache=None,
    ) -> torch.Tensor:
        """Continue ``idx`` (B, T) by ``max_new_tokens`` tokens, decoding through a KV cache.

        ``new_cache(batch_size, max_len)`` makes that cache (default: :meth:`new_cache`; chapter 10
        passes one that builds a quantized cache).

        The prompt is run once (prefill, logits for its last position only);
        each new token then costs one forward pass over a single position.
        ``temperature=0`` is greedy; ``top_k`` keeps only the k most likely
        tokens. Returns (B, T + max_new_tokens).
        """
        max_new_tokens, temperature, top_k = self._check_generation(idx, max_new_tokens, temperature, top_k)
        if max_new_tokens == 0:
            return idx
        cache = (new_cache or self.new_cache)(idx.shape[0], idx.shape[1] + max_new_tokens)
        logits = self(idx, cache=cache, last_only=True)[:, -1, :]  # (B, V): prefill
        out = [idx]
        for step in range(max_new_tokens):
            next_token = self._sample(logits, temperature, top_k, generator)  # (B, 1)
            out.append(next_token)
            if step + 1 < max_new_tokens:
                logits = self(next_token, cache=cache)[:, -1, :]  # (B, V)
        return torch.cat(out, dim=1)

    def _check_generation(self, idx: torch.Tensor, max_new_tokens, temperature, top_k) -> tuple:
        """(max_new_tokens, temperature, top_k) checked for :meth:`generate`; ValueError naming a bad value."""
        self._check_tokens(idx)
        max_new_tokens = as_count("max_new_tokens", max_new_tokens, minimum=0)
        temperature = as_non_negative_float("temperature", temperature)
        if top_k is not None:
            top_k = as_count("top_k", top_k)
            if top_k > self.config.vocab_size:
                raise ValueError(f"top_k must be between 1 and vocab_size={self.config.vocab_size}; got {top_k}")
        if idx.shape[1] + max_new_tokens > self.config.max_seq_len:
            raise ValueError(
                f"prompt of {idx.shape[1]} + {max_new_tokens} new tokens exceeds max_seq_len={self.config.max_seq_len}"
            )
        return max_new_tokens, temperature, top_k

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
