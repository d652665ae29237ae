"""A toy corpus in which the number of key/value heads matters.

Every sequence is ``seq_len`` tokens long and is one of two kinds:

* **Recall** (multi-query associative recall, after the Zoology paper,
  Arora et al. 2023): a dictionary of ``n_pairs`` entries, then many queries.
  ``BOS e1 e2 ... eN SEP k a k a ...``. Each entry token ``e`` stands for one
  (key, value) pair, like a word ``"k7=v3"``; the keys of a sequence are
  distinct, the values random. Each query is a key token ``k`` of one of the
  entries (drawn with replacement) and must be followed by that entry's value
  ``a``. Keys and values are random per sequence, so the only way to predict
  an answer is to find, in the context, the one entry whose key matches the
  query and read its value: a look-up by content among many candidates,
  what attention's keys and values are for. (Zoology writes each pair as two
  tokens ``k v``; then the look-up needs two attention layers composing, an
  induction circuit that a model this small learns too slowly on a CPU, so
  here each pair is fused into one token and one layer can do the look-up.)
  With a small head dimension, one shared key/value head has too little room
  to tell ``n_keys`` keys apart, so the number of KV heads shows up in the
  recall accuracy.
* **Text**: a Markov chain over ``n_words`` word tokens in which each word is
  drawn from ``successors`` likely words (fixed probabilities 0.4, 0.3, 0.2,
  0.1) that depend on the word *two* positions back: predicting it needs a
  look at the previous token, a positional attention pattern, the easy,
  local part of language.

Token ids: ``0`` BOS, ``1`` SEP, then the words, the keys, the values and the
entries (entry of key ``k`` and value ``v``: ``entry_offset + k * n_values + v``).
Everything is generated from an explicit seed with NumPy's
``default_rng`` (PCG64, integers and uniform floats only), so the same seed
gives the same tokens on every machine; nothing is downloaded. The training
and held-out splits come from separate random streams of one seed.

The answer positions of recall sequences carry ``recall_mask = True``:
:func:`recall_accuracy` scores a model only there.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from ..checks import as_count, as_non_negative_float

__all__ = [
    "CorpusConfig", "ToyCorpus", "make_corpus", "recall_accuracy", "matching_entry_positions", "BOS", "SEP",
    "SUCCESSOR_PROBS",
]

BOS = 0
SEP = 1
_SPLIT_STREAM = {"train": 1, "heldout": 2}
# Probabilities of the allowed successors of a word (most to least likely).
SUCCESSOR_PROBS = (0.4, 0.3, 0.2, 0.1)


@dataclass(frozen=True)
class CorpusConfig:
    """Shape of the toy corpus (defaults: 64 tokens per sequence, 16384 training sequences = 1.05 M tokens)."""

    seq_len: int = 64  # tokens per sequence
    n_keys: int = 32  # distinct key tokens
    n_values: int = 8  # distinct value tokens
    n_pairs: int = 24  # most dictionary entries in a recall sequence (distinct keys)
    min_pairs: int = 4  # fewest entries; each recall sequence has between min_pairs and n_pairs
    n_words: int = 64  # word tokens of the text sequences
    successors: int = 4  # allowed words after each context word (at most 4)
    recall_fraction: float = 0.5  # share of sequences that are recall sequences
    n_train: int = 16384  # training sequences
    n_heldout: int = 512  # held-out sequences

    def __post_init__(self) -> None:
        """Check every field (ValueError naming it) and store plain ``int``/``float`` values."""
        sizes = ("seq_len", "n_keys", "n_values", "n_pairs", "min_pairs", "n_words", "successors", "n_train", "n_heldout")
        for name in sizes:  # frozen: store plain ints (a numpy int would not go into JSON)
            object.__setattr__(self, name, as_count(name, getattr(self, name)))
        object.__setattr__(self, "recall_fraction", as_non_negative_float("recall_fraction", self.recall_fraction))
        if not 1 <= self.min_pairs <= self.n_pairs:
            raise ValueError(f"min_pairs={self.min_pairs} must be between 1 and n_pairs={self.n_pairs}")
        if self.n_pairs > self.n_keys:
            raise ValueError(f"n_pairs={self.n_pairs} needs at least as many distinct keys; n_keys={self.n_keys}")
        if self.n_queries < 1:
            raise ValueError(
                f"seq_len={self.seq_len} leaves no room for queries after {self.n_pairs} entries "
                "(need seq_len >= n_pairs + 4)"
            )
        if not 1 <= self.successors <= len(SUCCESSOR_PROBS):
            raise ValueError(f"successors must be between 1 and {len(SUCCESSOR_PROBS)}; got {self.successors}")
        if self.successors > self.n_words:
            raise ValueError(f"successors={self.successors} exceeds n_words={self.n_words}")
        if not 0.0 <= self.recall_fraction <= 1.0:
            raise ValueError(f"recall_fraction must be in [0, 1]; got {self.recall_fraction}")

    @property
    def n_queries(self) -> int:
        """Queries of a recall sequence with the most entries (``n_pairs``)."""
        return self.queries_for(self.n_pairs)

    def queries_for(self, n_pairs: int) -> int:
        """Queries of a recall sequence with ``n_pairs`` entries: what fits after BOS, the entries and SEP."""
        return (self.seq_len - 2 - n_pairs) // 2

    @property
    def word_offset(self) -> int:
        return 2

    @property
    def key_offset(self) -> int:
        return 2 + self.n_words

    @property
    def value_offset(self) -> int:
        return self.key_offset + self.n_keys

    @property
    def entry_offset(self) -> int:
        return self.value_offset + self.n_values

    @property
    def vocab_size(self) -> int:
        return self.entry_offset + self.n_keys * self.n_values


@dataclass
class ToyCorpus:
    """The generated corpus: token tensors of both splits and their recall masks.

    ``train``/``heldout``: (N, seq_len) int64 tokens; ``train_recall_mask``/
    ``heldout_recall_mask``: (N, seq_len) bool, True at answer tokens of recall
    sequences; ``*_is_recall``: (N,) bool, which sequences are recall sequences.
    """

    config: CorpusConfig
    seed: int
    train: torch.Tensor
    train_recall_mask: torch.Tensor
    train_is_recall: torch.Tensor
    heldout: torch.Tensor
    heldout_recall_mask: torch.Tensor
    heldout_is_recall: torch.Tensor

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    @property
    def n_train_tokens(self) -> int:
        return self.train.numel()

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(tokens, recall_mask) of split ``"train"`` or ``"heldout"``."""
        if name == "train":
            return self.train, self.train_recall_mask
        if name == "heldout":
            return self.heldout, self.heldout_recall_mask
        raise ValueError(f"split must be 'train' or 'heldout'; got {name!r}")

    def sample_batch(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """A (batch_size, seq_len) batch of training sequences drawn uniformly with ``generator``."""
        batch_size = as_count("batch_size", batch_size)
        rows = torch.randint(0, self.train.shape[0], (batch_size,), generator=generator)
        return self.train[rows]

    def describe(self, tokens: torch.Tensor) -> str:
        """A readable rendering of one sequence: ``<bos>``, ``|`` (SEP), ``w12`` words, ``k3`` keys, ``v5`` values, ``k3=v5`` entries.

        ``tokens``: (T,) token ids (a tensor, array or list of ints in ``0 .. vocab_size - 1``).
        """
        c = self.config
        try:
            ids = torch.as_tensor(tokens)
        except (TypeError, ValueError, RuntimeError):
            raise ValueError(f"tokens must be a 1-D sequence of token ids; got {type(tokens).__name__}") from None
        if ids.dim() != 1 or ids.dtype == torch.bool or ids.is_floating_point() or ids.is_complex():
            raise ValueError(f"tokens must be a 1-D sequence of integer token ids; got shape {tuple(ids.shape)}, dtype {ids.dtype}")
        out = []
        for t in ids.tolist():
            if not 0 <= t < c.vocab_size:
                raise ValueError(f"tokens holds the id {t}; valid ids are 0 .. {c.vocab_size - 1}")
            if t == BOS:
                out.append("<bos>")
            elif t == SEP:
                out.append("|")
            elif t < c.key_offset:
                out.append(f"w{t - c.word_offset}")
            elif t < c.value_offset:
                out.append(f"k{t - c.key_offset}")
            elif t < c.entry_offset:
                out.append(f"v{t - c.value_offset}")
            else:
                k, v = divmod(t - c.entry_offset, c.n_values)
                out.append(f"k{k}=v{v}")
        return " ".join(out)

    def to_dict(self) -> dict:
        return {"seed": self.seed, **asdict(self.config)}


def _transition_table(config: CorpusConfig, rng: np.random.Generator) -> np.ndarray:
    """(n_words, successors) word ids allowed two positions after each word, most likely first."""
    W, S = config.n_words, config.successors
    # S distinct successors per word: a random permutation prefix, via sorting random integers.
    keys = rng.integers(0, 2**31, size=(W, W))
    return np.argsort(keys, axis=-1, kind="stable")[..., :S]


def _text_sequences(n: int, config: CorpusConfig, table: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(n, seq_len) text sequences: BOS, then words from the second-order Markov chain."""
    T, W = config.seq_len, config.n_words
    probs = np.array(SUCCESSOR_PROBS[: config.successors], dtype=np.float64)
    cdf = np.cumsum(probs / probs.sum())
    words = np.empty((n, T - 1), dtype=np.int64)
    words[:, :2] = rng.integers(0, W, size=(n, 2))
    u = rng.random(size=(n, T - 3))
    choice = (u[..., None] >= cdf[:-1]).sum(-1)  # (n, T-3): index of the successor taken
    for t in range(2, T - 1):
        words[:, t] = table[words[:, t - 2], choice[:, t - 2]]
    out = np.empty((n, T), dtype=np.int64)
    out[:, 0] = BOS
    out[:, 1:] = words + config.word_offset
    return out


def _recall_block(n: int, n_pairs: int, config: CorpusConfig, rng: np.random.Generator):
    """(n, seq_len) recall sequences with exactly ``n_pairs`` entries, and their answer masks."""
    T, N, Q = config.seq_len, n_pairs, config.queries_for(n_pairs)
    # N distinct keys per sequence: the first N of a random permutation of all keys.
    keys = np.argsort(rng.integers(0, 2**31, size=(n, config.n_keys)), axis=-1, kind="stable")[:, :N]
    values = rng.integers(0, config.n_values, size=(n, N))
    asked = rng.integers(0, N, size=(n, Q))  # which entry each query asks for
    q_keys = np.take_along_axis(keys, asked, axis=1)
    q_values = np.take_along_axis(values, asked, axis=1)
    out = np.full((n, T), SEP, dtype=np.int64)  # a leftover last position stays SEP
    mask = np.zeros((n, T), dtype=bool)
    out[:, 0] = BOS
    out[:, 1 : 1 + N] = config.entry_offset + keys * config.n_values + values
    start = 2 + N  # position after SEP
    out[:, start : start + 2 * Q : 2] = q_keys + config.key_offset
    out[:, start + 1 : start + 2 * Q : 2] = q_values + config.value_offset
    mask[:, start + 1 : start + 2 * Q : 2] = True
    return out, mask


def _recall_sequences(n: int, config: CorpusConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(n, seq_len) recall sequences (entries uniform in [min_pairs, n_pairs]) and their answer masks."""
    sizes = rng.integers(config.min_pairs, config.n_pairs + 1, size=n)
    out = np.empty((n, config.seq_len), dtype=np.int64)
    mask = np.empty((n, config.seq_len), dtype=bool)
    for N in range(config.min_pairs, config.n_pairs + 1):
        rows = np.flatnonzero(sizes == N)
        if len(rows):
            out[rows], mask[rows] = _recall_block(len(rows), N, config, rng)
    return out, mask


def _make_split(n: int, config: CorpusConfig, table: np.ndarray, rng: np.random.Generator):
    is_recall = rng.random(size=n) < config.recall_fraction
    n_recall = int(is_recall.sum())
    tokens = np.empty((n, config.seq_len), dtype=np.int64)
    mask = np.zeros((n, config.seq_len), dtype=bool)
    rec, rec_mask = _recall_sequences(n_recall, config, rng)
    tokens[is_recall], mask[is_recall] = rec, rec_mask
    tokens[~is_recall] = _text_sequences(n - n_recall, config, table, rng)
    return torch.from_numpy(tokens), torch.from_numpy(mask), torch.from_numpy(is_recall)


def make_corpus(seed: int = 0, config: CorpusConfig | None = None) -> ToyCorpus:
    """Generate the toy corpus for ``seed`` (same seed, same tokens, on every machine).

    The word-transition table comes from stream 0 of the seed, the training
    split from stream 1 and the held-out split from stream 2
    (``numpy.random.default_rng([seed, stream])``), so the held-out
    sequences are fresh draws that the model never trains on. ``seed`` is an
    integer >= 0; ``config`` a :class:`CorpusConfig` (None: the default one).
    """
    if config is None:
        config = CorpusConfig()
    elif not isinstance(config, CorpusConfig):
        raise ValueError(f"config must be a CorpusConfig or None; got {type(config).__name__}")
    seed = as_count("seed", seed, minimum=0)
    table = _transition_table(config, np.random.default_rng([seed, 0]))
    train = _make_split(config.n_train, config, table, np.random.default_rng([seed, _SPLIT_STREAM["train"]]))
    heldout = _make_split(config.n_heldout, config, table, np.random.default_rng([seed, _SPLIT_STREAM["heldout"]]))
    return ToyCorpus(config, seed, *train, *heldout)


def recall_accuracy(logits: torch.Tensor, tokens: torch.Tensor, recall_mask: torch.Tensor) -> tuple[int, int]:
    """Correct and total next-token predictions at answer positions.

    logits: (B, T, V) from a model fed ``tokens`` (B, T); recall_mask: (B, T),
    True where the token is an answer. The prediction for position t is the
    argmax of the logits at t - 1. Returns ``(n_correct, n_answers)``.
    """
    if logits.shape[:2] != tokens.shape or recall_mask.shape != tokens.shape:
        raise ValueError(
            f"logits (B, T, V), tokens (B, T) and recall_mask (B, T) must agree; got "
            f"{tuple(logits.shape)}, {tuple(tokens.shape)}, {tuple(recall_mask.shape)}"
        )
    predicted = logits[:, :-1].argmax(dim=-1)  # (B, T-1): prediction for positions 1..T-1
    target_mask = recall_mask[:, 1:]  # (B, T-1)
    correct = (predicted == tokens[:, 1:]) & target_mask
    return int(correct.sum()), int(target_mask.sum())


def matching_entry_positions(tokens: torch.Tensor, config: CorpusConfig) -> torch.Tensor:
    """For every query of a recall sequence, the position of the dictionary entry holding its key.

    tokens: (B, T) token ids. Returns (B, T) positions (int64): at a query
    position (a key token), the position of the entry whose key it is; -1
    everywhere else. This is where a look-up head should attend from the
    query, to read the value the next token must copy.
    """
    if not isinstance(tokens, torch.Tensor) or tokens.dim() != 2:
        raise ValueError(f"tokens must be a (B, T) tensor of token ids; got {getattr(tokens, 'shape', tokens)}")
    c = config
    is_query = (tokens >= c.key_offset) & (tokens < c.value_offset)  # (B, T)
    is_entry = tokens >= c.entry_offset  # (B, T)
    query_key = torch.where(is_query, tokens - c.key_offset, -1)  # (B, T)
    entry_key = torch.where(is_entry, torch.div(tokens - c.entry_offset, c.n_values, rounding_mode="floor"), -2)
    match = (query_key[:, :, None] == entry_key[:, None, :]) & is_query[:, :, None]  # (B, Tq, Tk): key == key
    positions = match.float().argmax(dim=-1)  # (B, T): first matching entry (keys are distinct in a sequence)
    return torch.where(match.any(dim=-1), positions, -1)
