"""A quantized KV cache: keys and values stored as 8-bit (or packed 4-bit) integers plus one scale each.

GQA shrinks the KV cache by storing G instead of H heads; quantization
shrinks each stored number. The two multiply: a G-head int8 cache holds
about (G/H) x (1/2) of a multi-head bf16 cache's bytes (plus the scales).

**The scheme.** Symmetric absmax quantization with one scale per
(layer, batch row, KV head, token), for keys and values alike::

    scale = absmax(x[..., :]) / qmax          # over the head dimension D; qmax = 127 (int8) or 7 (int4)
    q     = round(x / scale)                  # integers in [-qmax, qmax]
    x'    = q * scale                         # what attention reads back

Every element then satisfies ``|x - x'| <= scale / 2`` (half a step of
the grid; see :func:`quantize_kv` for the floating-point fine print). Scales
are stored in **float32**: 4 bytes per (token, head) for K and again for V,
a relative overhead of 4/D over the int8 payload (25 % at this book's
D = 16, 3 % at the D = 128 of most real models). float16 scales would halve
that, but absmax/127 can underflow or overflow float16's range (about
6e-8 .. 65504), and a rounded-down scale breaks the bound above; float32
keeps the bound exact for any float16, bfloat16 or float32 cache.

**Why per token, also for the keys.** KIVI (Liu et al. 2024, "KIVI: A
Tuning-Free Asymmetric 2bit Quantization for KV Cache") observes that keys
have a few *outlier channels* (the same dimensions are large at every
token) while values do not, and so quantizes keys *per channel* (one scale
per dimension, shared by a group of tokens) and values *per token*. A
per-channel scale is an absmax over tokens, which is not streamable: the
scale of a channel is only known once the tokens that share it have all
arrived. KIVI therefore keeps the most recent tokens (up to a group of a
few dozen) in full precision and quantizes a group of keys per channel
only when it is full. The other streamable option, fixing per-channel
scales on the prefill and clipping later outliers, makes the cache's
contents depend on where the prompt ended and clips tokens that the
prefill did not foresee. This module picks the simplest streamable scheme:
per-(head, token) scales for both K and V. Every token is quantized on its
own as it arrives, so a prefill of T tokens and T single-token decoding
steps store the same cache (up to the float rounding with which the
model computes K and V along the two paths; :func:`evaluate_with_cache`
relies on that), ``truncate`` and rollback need no re-quantization, and nothing is
kept in full precision. The price of per-token keys is that an outlier
channel sets the scale of its whole head vector; at 8 bits the grid is fine
enough that this costs little (the chapter measures it), at 2-4 bits it is
what KIVI's per-channel keys are for.

:class:`QuantizedKVCache` subclasses :class:`~gqa_lib.core.kv_cache.KVCache`, so
:class:`~gqa_lib.core.model.TransformerLM` decodes with it unchanged:
``model(idx, cache=new_quantized_cache(model, B, T))``. :func:`int8_quality`
measures what quantization costs on the toy corpus, and
``python -m gqa_lib.core.quantized_cache`` prints that table for the converted
checkpoints.
"""

from __future__ import annotations

import operator
import time
from typing import Iterator

import torch
import torch.nn.functional as F

from ..checks import as_count, as_non_negative_float
from ..recipe.corpus import ToyCorpus, recall_accuracy
from .kv_cache import KVCache
from .model import TransformerLM

__all__ = [
    "QuantizedKVCache",
    "SUPPORTED_BITS",
    "SCALE_DTYPE",
    "quantize_kv",
    "dequantize_kv",
    "pack_int4",
    "unpack_int4",
    "quantized_kv_cache_bytes",
    "new_quantized_cache",
    "generate_quantized",
    "evaluate_with_cache",
    "int8_quality",
    "uptrained_model",
    "main",
]

SUPPORTED_BITS = (8, 4)
"""Cache widths: 8 (one int8 per number) and 4 (two numbers packed in one byte)."""
SCALE_DTYPE = torch.float32
"""dtype of the stored scales (see the module docstring for why not float16)."""
_SCALE_BYTES = 4  # torch.finfo(SCALE_DTYPE).bits // 8
_TINY = torch.finfo(torch.float32).tiny  # smallest normal float32: the floor of every scale


def _check_bits(bits) -> int:
    """``bits`` as an int in :data:`SUPPORTED_BITS`; ValueError naming ``bits`` otherwise."""
    if isinstance(bits, bool):
        raise ValueError(f"bits must be one of {SUPPORTED_BITS}; got the bool {bits!r}")
    try:
        number = operator.index(bits)
    except TypeError:
        raise ValueError(f"bits must be one of {SUPPORTED_BITS}; got {bits!r} ({type(bits).__name__})") from None
    if number not in SUPPORTED_BITS:
        raise ValueError(f"bits must be one of {SUPPORTED_BITS} (int8, or int4 packed two per byte); got {number}")
    return int(number)


def _qmax(bits: int) -> int:
    """Largest integer of the symmetric grid: 127 for 8 bits, 7 for 4 bits (-128 / -8 unused)."""
    return 2 ** (bits - 1) - 1


# ----------------------------------------------------------------------------- the quantizer


def quantize_kv(x: torch.Tensor, dim: int = -1, bits: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric absmax quantization of ``x`` with one scale per slice along ``dim``.

    Returns ``(q, scale)``: ``q`` int8 of x's shape with values in
    [-qmax, qmax] (qmax = 127 for ``bits=8``, 7 for ``bits=4``; unpacked,
    see :func:`pack_int4`), and ``scale`` float32 of x's shape with size 1
    along ``dim``, ``scale = absmax / qmax`` over that dimension (at least
    the smallest normal float32, so an all-zero slice gets a positive
    scale and quantizes to zeros). For a KV tensor (B, G, T, D), ``dim=-1``
    gives one scale per (batch row, head, token): the cache's scheme.

    **Error bound.** ``|x - dequantize_kv(q, scale)| <= scale / 2``
    elementwise, i.e. at most ``absmax / 254`` for int8. This is exact in
    real arithmetic; in float32 (the working precision for float32, float16
    and bfloat16 inputs; float64 inputs work in float64) rounding adds at
    most ``qmax * 2**-24 * scale``, so ``scale * (1/2 + 2**-17)`` always
    holds. A dequantized value cast to a narrower dtype (the cache's bf16)
    adds that dtype's rounding on top.

    Non-finite inputs are not hidden: a NaN or infinity makes the scale of
    its slice NaN or infinite and its integers zero, so the whole slice
    dequantizes to NaN. (Values of a float64 cache must stay below
    ``127 *`` float32's largest value, or their scale overflows the same way.)
    """
    bits = _check_bits(bits)
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        what = f"dtype {x.dtype}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must be a floating-point tensor; got {what}")
    if x.dim() == 0:
        raise ValueError("x must have at least one dimension to quantize along; got a 0-d tensor")
    if not isinstance(dim, int) or isinstance(dim, bool) or not -x.dim() <= dim < x.dim():
        raise ValueError(f"dim must be an int in [{-x.dim()}, {x.dim()}) for x of shape {tuple(x.shape)}; got {dim!r}")
    if x.shape[dim] == 0:
        raise ValueError(f"x has size 0 along dim={dim} (shape {tuple(x.shape)}): nothing to take the absmax of")
    qmax = _qmax(bits)
    work = torch.promote_types(x.dtype, torch.float32)
    xw = x.to(work)
    absmax = xw.abs().amax(dim=dim, keepdim=True)  # NaN propagates
    scale = (absmax / qmax).to(SCALE_DTYPE).clamp_min(_TINY)  # clamp_min keeps NaN
    q = torch.round(xw / scale.to(work)).clamp_(-qmax, qmax)
    q = torch.where(torch.isnan(q), 0.0, q)  # a NaN slice stores zeros (its NaN scale keeps it visible)
    return q.to(torch.int8), scale


def dequantize_kv(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``q * scale`` in ``dtype`` (computed in float32, or float64 for a float64 ``dtype``).

    A product that rounds past ``dtype``'s largest finite value (``x`` at
    the very top of the range) is clamped to it, which only moves it closer
    to the original value; NaN stays NaN.

    ``q``: the int8 values of :func:`quantize_kv` (unpacked); ``scale``
    broadcasts against it (size 1 along the quantized dimension).
    """
    if not isinstance(q, torch.Tensor) or q.dtype != torch.int8:
        what = f"dtype {q.dtype}" if isinstance(q, torch.Tensor) else type(q).__name__
        raise ValueError(f"q must be an int8 tensor (unpack int4 bytes with unpack_int4 first); got {what}")
    if not isinstance(scale, torch.Tensor) or not scale.is_floating_point():
        what = f"dtype {scale.dtype}" if isinstance(scale, torch.Tensor) else type(scale).__name__
        raise ValueError(f"scale must be a floating-point tensor; got {what}")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating torch.dtype; got {dtype!r}")
    work = torch.promote_types(dtype, torch.float32)
    top = torch.finfo(dtype).max  # q * scale may round past the dtype's largest value: clamp (NaN stays NaN)
    return (q.to(work) * scale.to(work)).clamp_(-top, top).to(dtype)


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """Pack int8 values in [-8, 7] two per byte along the last dimension: (..., D) -> (..., D/2) int8.

    Element ``2i`` goes to the low nibble of byte ``i``, element ``2i + 1``
    to the high nibble (two's complement nibbles). D must be even.
    """
    if not isinstance(q, torch.Tensor) or q.dtype != torch.int8 or q.dim() == 0 or q.shape[-1] % 2:
        what = f"{q.dtype} {tuple(q.shape)}" if isinstance(q, torch.Tensor) else type(q).__name__
        raise ValueError(f"q must be an int8 tensor with an even last dimension; got {what}")
    lo, hi = q[..., 0::2], q[..., 1::2]
    return torch.bitwise_or(torch.bitwise_and(lo, 0x0F), torch.bitwise_left_shift(hi, 4))


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`pack_int4`: (..., D/2) int8 bytes -> (..., D) int8 values in [-8, 7]."""
    if not isinstance(packed, torch.Tensor) or packed.dtype != torch.int8 or packed.dim() == 0:
        what = f"dtype {packed.dtype}" if isinstance(packed, torch.Tensor) else type(packed).__name__
        raise ValueError(f"packed must be an int8 tensor of packed nibbles; got {what}")
    p = packed.to(torch.int16)  # a byte is hi * 16 + lo4 with lo4 in [0, 15]
    lo = torch.bitwise_xor(torch.bitwise_and(p, 0x0F), 8) - 8  # sign-extend the low nibble
    hi = torch.bitwise_right_shift(p, 4)  # arithmetic shift: the signed high nibble
    return torch.stack([lo, hi], dim=-1).reshape(*packed.shape[:-1], 2 * packed.shape[-1]).to(torch.int8)


def quantized_kv_cache_bytes(
    n_layers: int, n_kv_heads: int, head_dim: int, seq_len: int, batch_size: int = 1, bits: int = 8
) -> int:
    """Bytes of a :class:`QuantizedKVCache`: keys and values, all layers, payload plus scales.

    ``2 * n_layers * batch_size * n_kv_heads * seq_len * (head_dim * bits / 8 + 4)``:
    per (token, head) and per K or V, ``head_dim * bits / 8`` bytes of integers
    and one 4-byte float32 scale. (Compare :func:`gqa_lib.core.kv_cache.kv_cache_bytes`.)
    """
    n_layers = as_count("n_layers", n_layers)
    n_kv_heads = as_count("n_kv_heads", n_kv_heads)
    head_dim = as_count("head_dim", head_dim)
    seq_len = as_count("seq_len", seq_len, minimum=0)
    batch_size = as_count("batch_size", batch_size)
    bits = _check_bits(bits)
    if head_dim * bits % 8:
        raise ValueError(f"head_dim={head_dim} must be even to pack {bits}-bit values two per byte")
    return 2 * n_layers * batch_size * n_kv_heads * seq_len * (head_dim * bits // 8 + _SCALE_BYTES)


# ----------------------------------------------------------------------------- the cache


class QuantizedKVCache(KVCache):
    """A :class:`~gqa_lib.core.kv_cache.KVCache` that stores keys and values as int8 (or packed int4).

    Same constructor (plus ``bits``), same ``update`` contract: k, v of shape
    (B, G, T, D) in the cache's ``dtype`` are appended to a layer, and all
    cached positions come back as (B, G, length, D) tensors of ``dtype``,
    *dequantized*: the new positions too, so attention reads exactly what a
    later step will read. ``seq_len``, ``truncate``, ``check_aligned`` and
    ``rollback_on_error`` behave as in KVCache (they only move ``lengths``).

    Storage (see the module docstring for the scheme): ``keys_q`` and
    ``values_q``, int8 of shape (n_layers, B, G, max_len, D * bits / 8);
    ``key_scales`` and ``value_scales``, float32 of shape (n_layers, B, G,
    max_len). ``nbytes`` and ``used_bytes`` count all four exactly. The
    float ``keys``/``values`` buffers of KVCache do not exist here; use
    :meth:`read` for the dequantized contents.

    ``update`` returns new tensors (dequantization is a copy). Under
    autograd, the new positions carry their gradient straight through the
    rounding (values exactly the dequantized ones, gradient of the
    identity); cached positions are constants, as in KVCache.
    """

    def __init__(
        self,
        n_layers: int,
        batch_size: int,
        n_kv_heads: int,
        max_len: int,
        head_dim: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
        bits: int = 8,
    ):
        shape = self._checked_shape(n_layers, batch_size, n_kv_heads, max_len, head_dim, dtype)
        self.bits = _check_bits(bits)
        if shape[4] * self.bits % 8:
            raise ValueError(f"head_dim={shape[4]} must be even to pack {self.bits}-bit values two per byte")
        self._shape = shape
        self._dtype = dtype
        payload = (*shape[:4], shape[4] * self.bits // 8)
        self.keys_q = torch.zeros(payload, dtype=torch.int8, device=device)
        self.values_q = torch.zeros(payload, dtype=torch.int8, device=device)
        self.key_scales = torch.zeros(shape[:4], dtype=SCALE_DTYPE, device=device)
        self.value_scales = torch.zeros(shape[:4], dtype=SCALE_DTYPE, device=device)
        self.lengths = [0] * shape[0]

    # KVCache reads its sizes from the float buffers; this cache has none.
    n_layers = property(lambda self: self._shape[0])
    batch_size = property(lambda self: self._shape[1])
    n_kv_heads = property(lambda self: self._shape[2])
    max_len = property(lambda self: self._shape[3])
    head_dim = property(lambda self: self._shape[4])
    dtype = property(lambda self: self._dtype, doc="The float dtype that update accepts and returns.")
    device = property(lambda self: self.keys_q.device)

    @property
    def keys(self):
        raise AttributeError("a QuantizedKVCache has no float keys buffer: keys_q and key_scales hold them; "
                             "read(layer) dequantizes")

    @property
    def values(self):
        raise AttributeError("a QuantizedKVCache has no float values buffer: values_q and value_scales hold them; "
                             "read(layer) dequantizes")

    @property
    def bytes_per_position(self) -> int:
        """Bytes one position of one layer takes: K and V, every batch row and KV head, payload and scales."""
        return 2 * self.batch_size * self.n_kv_heads * (self.head_dim * self.bits // 8 + _SCALE_BYTES)

    @property
    def nbytes(self) -> int:
        """Bytes allocated: int8 payload and float32 scales of keys and values (all layers, the full ``max_len``)."""
        return self.keys_q.nbytes + self.values_q.nbytes + self.key_scales.nbytes + self.value_scales.nbytes

    @property
    def used_bytes(self) -> int:
        """Bytes of payload and scales actually filled so far (all layers)."""
        return self.bytes_per_position * sum(self.lengths)

    def _quantize(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, G, T, D) float -> stored bytes (B, G, T, D*bits/8) int8 and scales (B, G, T) float32."""
        q, scale = quantize_kv(x, dim=-1, bits=self.bits)
        return (pack_int4(q) if self.bits == 4 else q), scale.squeeze(-1)

    def _dequantize(self, stored: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
        q = unpack_int4(stored) if self.bits == 4 else stored
        return dequantize_kv(q, scales.unsqueeze(-1), self.dtype)

    def read(self, layer: int, length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The first ``length`` (default: all filled) positions of ``layer``, dequantized: two (B, G, length, D)."""
        layer = as_count("layer", layer, minimum=0)
        if layer >= self.n_layers:
            raise ValueError(f"layer must be in [0, {self.n_layers}); got {layer}")
        end = self.lengths[layer] if length is None else as_count("length", length, minimum=0)
        if end > self.lengths[layer]:
            raise ValueError(f"length={end} exceeds the {self.lengths[layer]} positions layer {layer} holds")
        keys = self._dequantize(self.keys_q[layer, :, :, :end], self.key_scales[layer, :, :, :end])
        values = self._dequantize(self.values_q[layer, :, :, :end], self.value_scales[layer, :, :, :end])
        return keys, values

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Quantize and append k, v of shape (B, G, T, D) to ``layer``; return all cached (B, G, length, D), dequantized.

        k and v must have the cache's dtype and device. Nothing is written
        unless every check passes (the same checks and messages as KVCache).
        """
        layer, start, end = self._checked_update(layer, k, v)
        kq, ks = self._quantize(k.detach())
        vq, vs = self._quantize(v.detach())
        self.keys_q[layer, :, :, start:end] = kq
        self.key_scales[layer, :, :, start:end] = ks
        self.values_q[layer, :, :, start:end] = vq
        self.value_scales[layer, :, :, start:end] = vs
        self.lengths[layer] = end
        keys, values = self.read(layer)  # (B, G, end, D) each
        if torch.is_grad_enabled() and (k.requires_grad or v.requires_grad):
            # straight-through: the values are the dequantized ones (x - x is exactly 0), the gradient is the identity
            keys = torch.cat([keys[:, :, :start], keys[:, :, start:] + (k - k.detach())], dim=2)
            values = torch.cat([values[:, :, :start], values[:, :, start:] + (v - v.detach())], dim=2)
        return keys, values

    def __repr__(self) -> str:
        L, B, G, T, D = self._shape
        return (
            f"QuantizedKVCache(n_layers={L}, batch_size={B}, n_kv_heads={G}, max_len={T}, head_dim={D}, "
            f"bits={self.bits}, dtype={self.dtype}, seq_len={self.seq_len}, nbytes={self.nbytes})"
        )


def new_quantized_cache(
    model: TransformerLM, batch_size: int, max_len: int | None = None, bits: int = 8
) -> QuantizedKVCache:
    """An empty :class:`QuantizedKVCache` sized for ``model``: what ``model.new_cache`` returns, quantized.

    ``max_len`` defaults to the model's ``max_seq_len``; the cache takes the
    dtype and device of the model's weights.
    """
    if not isinstance(model, TransformerLM):
        raise ValueError(f"model must be a TransformerLM; got {type(model).__name__}")
    c = model.config
    max_len = c.max_seq_len if max_len is None else as_count("max_len", max_len)
    if max_len > c.max_seq_len:
        raise ValueError(f"max_len={max_len} exceeds the model's max_seq_len={c.max_seq_len}")
    p = model.model.embed_tokens.weight
    return QuantizedKVCache(c.n_layers, batch_size, c.n_kv_heads, max_len, c.head_dim,
                            dtype=p.dtype, device=p.device, bits=bits)


@torch.no_grad()
def generate_quantized(
    model: TransformerLM,
    idx: torch.Tensor,
    max_new_tokens: int,
    bits: int = 8,
    temperature: float = 1.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """:meth:`TransformerLM.generate`, decoding through a :class:`QuantizedKVCache` of ``bits`` bits.

    Same arguments and sampling (``temperature=0`` is greedy); returns (B, T + max_new_tokens).
    """
    if not isinstance(model, TransformerLM):
        raise ValueError(f"model must be a TransformerLM; got {type(model).__name__}")
    bits = _check_bits(bits)
    return model.generate(idx, max_new_tokens, temperature, top_k, generator,
                          new_cache=lambda batch_size, max_len: new_quantized_cache(model, batch_size, max_len, bits))


# ----------------------------------------------------------------------------- quality on the toy corpus

_MODES = ("prefill", "decode")


def _cache_logits(model: TransformerLM, x: torch.Tensor, bits: int | None, mode: str) -> torch.Tensor:
    """Logits (B, T, V) of ``x`` (B, T) computed through a fresh cache: float (``bits=None``) or quantized.

    ``"prefill"``: one forward over all T tokens with the cache, so every
    query attends to keys and values read back from it; ``"decode"``: T
    single-token forwards, as generation runs. With per-token scales the
    two store the same cache and agree up to float rounding.
    """
    B, T = x.shape
    cache = model.new_cache(B, T) if bits is None else new_quantized_cache(model, B, T, bits)
    if mode == "prefill":
        return model(x, cache=cache)
    return torch.cat([model(x[:, t : t + 1], cache=cache) for t in range(T)], dim=1)


class _Metrics:
    """The sums :func:`gqa_lib.recipe.train.evaluate` keeps, in the same order and with the same formulas."""

    def __init__(self) -> None:
        self.total_loss = self.recall_loss = self.text_loss = 0.0
        self.n_tokens = self.n_text = self.n_correct = self.n_answers = 0
        self.seconds = 0.0

    def add(self, logits: torch.Tensor, x: torch.Tensor, m: torch.Tensor, text: torch.Tensor) -> None:
        logits = logits.float()
        losses = F.cross_entropy(logits[:, :-1].transpose(1, 2), x[:, 1:], reduction="none")  # (B, T-1)
        self.total_loss += float(losses.sum())
        self.recall_loss += float(losses[m[:, 1:]].sum())
        self.text_loss += float(losses[text].sum())
        self.n_tokens += losses.numel()
        self.n_text += losses[text].numel()
        c, n = recall_accuracy(logits, x, m)
        self.n_correct += c
        self.n_answers += n

    def result(self) -> dict:
        return {
            "loss": self.total_loss / self.n_tokens,
            "text_loss": self.text_loss / max(self.n_text, 1),
            "recall_loss": self.recall_loss / max(self.n_answers, 1),
            "recall_acc": self.n_correct / max(self.n_answers, 1),
            "n_answers": self.n_answers,
            "seconds": self.seconds,
        }


def _check_eval_args(model, corpus, split, n_sequences, batch_size, mode):
    if not isinstance(model, TransformerLM):
        raise ValueError(f"model must be a TransformerLM; got {type(model).__name__}")
    if not isinstance(corpus, ToyCorpus):
        raise ValueError(f"corpus must be a ToyCorpus; got {type(corpus).__name__}")
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}; got {mode!r}")
    batch_size = as_count("batch_size", batch_size)
    tokens, mask = corpus.split(split)  # ValueError naming a bad split
    is_recall = corpus.heldout_is_recall if split == "heldout" else corpus.train_is_recall
    if n_sequences is not None:
        n_sequences = as_count("n_sequences", n_sequences)
        tokens, mask, is_recall = tokens[:n_sequences], mask[:n_sequences], is_recall[:n_sequences]
    if tokens.shape[1] > model.config.max_seq_len:
        raise ValueError(f"sequences of {tokens.shape[1]} tokens exceed the model's max_seq_len={model.config.max_seq_len}")
    return tokens, mask, is_recall, batch_size


def _batches(model, tokens, mask, is_recall, batch_size) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    device = model.model.embed_tokens.weight.device
    for start in range(0, tokens.shape[0], batch_size):
        x = tokens[start : start + batch_size].to(device)  # (B, T)
        m = mask[start : start + batch_size].to(device)  # (B, T)
        text = ~is_recall[start : start + batch_size].to(device)  # (B,)
        yield x, m, text


@torch.no_grad()
def evaluate_with_cache(
    model: TransformerLM,
    corpus: ToyCorpus,
    split: str = "heldout",
    *,
    bits: int | None = None,
    n_sequences: int | None = None,
    batch_size: int = 128,
    mode: str = "prefill",
) -> dict:
    """:func:`gqa_lib.recipe.train.evaluate`'s metrics, with attention reading K and V back from a KV cache.

    ``train.evaluate`` runs a plain forward (no cache), so quantizing a
    cache would not touch it. Here each batch of sequences is run through a
    fresh cache (``bits=None``: the float KVCache; 8 or 4: a
    :class:`QuantizedKVCache`) by a prefill over the whole sequence
    (``mode="prefill"``) or token by token (``mode="decode"``), and the
    same sums are taken: ``loss``, ``text_loss``, ``recall_loss``,
    ``recall_acc``, ``n_answers``, plus ``seconds`` (the forward passes).
    With the float cache the numbers equal ``train.evaluate``'s (the tests
    hold them equal). ``n_sequences``: only the first n sequences of the split.
    """
    if bits is not None:
        bits = _check_bits(bits)
    tokens, mask, is_recall, batch_size = _check_eval_args(model, corpus, split, n_sequences, batch_size, mode)
    was_training = model.training
    model.eval()
    metrics = _Metrics()
    try:
        for x, m, text in _batches(model, tokens, mask, is_recall, batch_size):
            t0 = time.perf_counter()
            logits = _cache_logits(model, x, bits, mode)
            metrics.seconds += time.perf_counter() - t0
            metrics.add(logits, x, m, text)
    finally:
        model.train(was_training)
    return metrics.result()


@torch.no_grad()
def int8_quality(
    model: TransformerLM,
    corpus: ToyCorpus,
    split: str = "heldout",
    *,
    bits: int = 8,
    n_sequences: int | None = None,
    batch_size: int = 128,
    mode: str = "prefill",
) -> dict:
    """Held-out quality of ``model`` decoding with a float cache and with a ``bits``-bit quantized one.

    One pass over the sequences; each batch is run through both caches
    (as in :func:`evaluate_with_cache`). Returns ``{"float": metrics,
    f"int{bits}": metrics, "logits": {...}}`` where each metrics dict is
    :func:`evaluate_with_cache`'s, and ``logits`` compares the quantized
    run's logits with the float run's over all positions:
    ``max_abs_diff``, ``mean_abs_diff`` and ``argmax_agreement`` (the
    fraction of positions whose top token is the same).
    """
    bits = _check_bits(bits)
    tokens, mask, is_recall, batch_size = _check_eval_args(model, corpus, split, n_sequences, batch_size, mode)
    was_training = model.training
    model.eval()
    runs = {None: _Metrics(), bits: _Metrics()}
    max_diff, sum_diff, n_logits, same_top, n_positions = 0.0, 0.0, 0, 0, 0
    try:
        for x, m, text in _batches(model, tokens, mask, is_recall, batch_size):
            logits = {}
            for b, metrics in runs.items():
                t0 = time.perf_counter()
                logits[b] = _cache_logits(model, x, b, mode).float()
                metrics.seconds += time.perf_counter() - t0
                metrics.add(logits[b], x, m, text)
            diff = (logits[bits] - logits[None]).abs()
            max_diff = max(max_diff, float(diff.max()))
            sum_diff += float(diff.sum(dtype=torch.float64))
            n_logits += diff.numel()
            same_top += int((logits[bits].argmax(-1) == logits[None].argmax(-1)).sum())
            n_positions += x.numel()
    finally:
        model.train(was_training)
    return {
        "float": runs[None].result(),
        f"int{bits}": runs[bits].result(),
        "logits": {"max_abs_diff": max_diff, "mean_abs_diff": sum_diff / n_logits,
                   "argmax_agreement": same_top / n_positions},
    }


# ----------------------------------------------------------------------------- the book's checkpoints


def uptrained_model(seed: int = 0, n_kv_heads: int = 4, alpha: float = 0.05, method: str = "mean", setup=None,
                    corpus: ToyCorpus | None = None) -> TransformerLM:
    """The shipped pre-trained checkpoint of ``seed``, converted to ``n_kv_heads`` by ``method``, uptrained to ``alpha``.

    Only the pre-trained checkpoints are shipped (``gqa_lib/data/gqa_toy``);
    the converted and uptrained runs of ``grid.json`` keep their metrics,
    not their weights. This repeats :func:`gqa_lib.recipe.experiments.run_point`'s
    recipe for one run (contiguous grouping, uptraining batches seeded with
    ``10_000 + seed``), so it reproduces the run of ``grid.json`` up to the
    float rounding of the CPU's kernels (``python -m gqa_lib.core.quantized_cache``
    prints the grid's loss next to the recomputed one; on a 2-core CPU with
    one thread they agreed to 1.4e-5 at alpha = 0.05, exactly at alpha = 0).
    ``alpha=0`` is the converted model without uptraining; uptraining takes
    about 5 s per 1 % of alpha on one CPU thread.
    """
    from ..recipe.convert import convert_to_gqa
    from ..recipe.experiments import SETUP, load_or_pretrain
    from ..recipe.train import uptrain

    setup = SETUP if setup is None else setup
    alpha = as_non_negative_float("alpha", alpha)
    base = load_or_pretrain(seed, setup, progress=False)
    model = convert_to_gqa(base, n_kv_heads, method=method, seed=seed, grouping="contiguous")
    if alpha > 0:
        uptrain(model, corpus or setup.make_corpus(), setup.recipe, alpha=alpha, data_seed=10_000 + seed,
                eval_alphas=[], progress=False)
    return model.eval()


def main(argv: list[str] | None = None) -> None:
    """``python -m gqa_lib.core.quantized_cache``: float vs quantized cache quality of the converted checkpoints."""
    import argparse

    from ..recipe.experiments import DATA_DIR, SETUP, find_run, load_or_run_grid

    parser = argparse.ArgumentParser(prog="python -m gqa_lib.core.quantized_cache", description=main.__doc__)
    parser.add_argument("--seed", type=int, default=0, help="pre-training seed of the checkpoint (default 0)")
    parser.add_argument("--groups", type=int, nargs="+", default=[8, 4, 2, 1], help="G values (default 8 4 2 1)")
    parser.add_argument("--alpha", type=float, default=0.05, help="uptraining fraction (default 0.05; 0: converted only)")
    parser.add_argument("--bits", type=int, default=8, choices=SUPPORTED_BITS, help="cache width (default 8)")
    parser.add_argument("--n-sequences", type=int, default=None, help="first n held-out sequences (default: all)")
    parser.add_argument("--mode", choices=_MODES, default="prefill", help="prefill (default) or token-by-token decode")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1, as the grid was run: uptraining then follows it most closely)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    corpus = SETUP.make_corpus()
    grid = load_or_run_grid(SETUP, DATA_DIR)
    q = f"int{args.bits}"
    print(f"seed {args.seed}, mean conversion, alpha {args.alpha}, {args.mode}, "
          f"{args.n_sequences or corpus.config.n_heldout} held-out sequences")
    print(f"{'G':>3} {'grid loss':>10} {'loss float':>11} {'loss ' + q:>10} {'recall float':>13} {'recall ' + q:>12} "
          f"{'max|dlogit|':>12} {'top1 agree':>11} {'s float':>8} {'s ' + q:>7} {'s uptrain':>10}")
    for G in args.groups:
        t0 = time.perf_counter()
        model = uptrained_model(args.seed, G, args.alpha, corpus=corpus)
        t_up = time.perf_counter() - t0
        try:
            ref = [e for e in find_run(grid, G, "mean", args.seed) if abs(e["alpha"] - args.alpha) < 1e-9]
            ref_loss = f"{ref[0]['loss']:.5f}" if ref else "-"
        except KeyError:
            ref_loss = "-"
        r = int8_quality(model, corpus, bits=args.bits, n_sequences=args.n_sequences, mode=args.mode)
        f, i, lg = r["float"], r[q], r["logits"]
        print(f"{G:>3} {ref_loss:>10} {f['loss']:>11.5f} {i['loss']:>10.5f} {f['recall_acc']:>13.5f} "
              f"{i['recall_acc']:>12.5f} {lg['max_abs_diff']:>12.4f} {lg['argmax_agreement']:>11.5f} "
              f"{f['seconds']:>8.2f} {i['seconds']:>7.2f} {t_up:>10.1f}", flush=True)


if __name__ == "__main__":
    main()
