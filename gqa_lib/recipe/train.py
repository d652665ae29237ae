"""Pre-training, uptraining and evaluation of a TransformerLM on the toy corpus.

One recipe serves both phases, as in the GQA paper, where uptraining
"continues pre-training" with the original recipe: AdamW, a fixed batch
size, gradient clipping, and an inverse-square-root learning-rate schedule
(linear warm-up, then ``peak_lr * sqrt(warmup / step)``, the schedule T5
was pre-trained with). Pre-training runs steps ``0 .. pretrain_steps - 1``;
uptraining continues the *same* schedule from step ``pretrain_steps``, with a
fresh optimizer (the converted K/V projections have new shapes, so there is
no optimizer state to carry over). Because the schedule does not depend on
how long uptraining will last, the checkpoint after ``s`` steps of a long
uptraining run is the checkpoint an ``s``-step run would have produced: one
run gives every alpha.

Everything is seeded: initial weights (``torch.manual_seed``) and the batch
order (a ``torch.Generator``); on a CPU two runs with the same seeds give
the same numbers.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F

from ..checks import as_count, as_non_negative_float, as_positive_float
from ..core.model import TransformerConfig, TransformerLM
from ..progress import progress as progress_bar
from .corpus import ToyCorpus, recall_accuracy

__all__ = [
    "TrainRecipe",
    "TrainResult",
    "lr_at",
    "alpha_to_steps",
    "evaluate",
    "train",
    "pretrain",
    "uptrain",
]


@dataclass(frozen=True)
class TrainRecipe:
    """The training recipe shared by pre-training and uptraining."""

    batch_size: int = 32  # sequences per step
    peak_lr: float = 5e-3  # learning rate at the end of warm-up
    warmup_steps: int = 200  # linear warm-up, then inverse-square-root decay
    pretrain_steps: int = 6000  # length of pre-training; alpha is a fraction of this
    weight_decay: float = 0.01  # AdamW decoupled weight decay
    betas: tuple[float, float] = (0.9, 0.98)  # AdamW moment decay rates
    grad_clip: float = 1.0  # clip the global gradient norm to this

    def __post_init__(self) -> None:
        """Check every field (ValueError naming it) and store plain ``int``/``float`` values."""
        checked = {name: as_count(name, getattr(self, name)) for name in ("batch_size", "warmup_steps", "pretrain_steps")}
        checked["peak_lr"] = as_positive_float("peak_lr", self.peak_lr)
        checked["grad_clip"] = as_positive_float("grad_clip", self.grad_clip)
        checked["weight_decay"] = as_non_negative_float("weight_decay", self.weight_decay)
        checked["betas"] = _as_betas(self.betas)
        for name, value in checked.items():  # frozen: plain values (a numpy int would not go into JSON)
            object.__setattr__(self, name, value)


def _as_betas(betas) -> tuple[float, float]:
    """AdamW's ``betas`` as a pair of floats in [0, 1); ValueError naming ``betas`` otherwise."""
    try:
        pair = tuple(betas)
        if len(pair) == 2 and not any(isinstance(b, bool) for b in pair):
            pair = (float(pair[0]), float(pair[1]))
            if all(0 <= b < 1 for b in pair):  # False for NaN
                return pair
    except (TypeError, ValueError):
        pass
    raise ValueError(f"betas must be a pair of numbers in [0, 1); got {betas!r}")


def lr_at(step: int, recipe: TrainRecipe) -> float:
    """Learning rate at global ``step`` (0-based, an integer >= 0): linear warm-up, then inverse square root."""
    n = as_count("step", step, minimum=0) + 1
    w = recipe.warmup_steps
    return recipe.peak_lr * min(n / w, math.sqrt(w / n))


def alpha_to_steps(alpha: float, recipe: TrainRecipe) -> int:
    """Uptraining steps for a fraction ``alpha`` (finite, >= 0) of the pre-training steps (rounded)."""
    alpha = as_non_negative_float("alpha", alpha)
    return int(round(alpha * recipe.pretrain_steps))


@torch.no_grad()
def evaluate(model: TransformerLM, corpus: ToyCorpus, split: str = "heldout", batch_size: int = 128) -> dict:
    """Mean next-token loss (nats/token) and recall accuracy on a split of the corpus.

    Returns ``loss`` (all predicted tokens), ``text_loss`` (tokens of text
    sequences), ``recall_loss`` (answer tokens only), ``recall_acc`` (fraction
    of answers predicted exactly by argmax) and ``n_answers``. ``batch_size``
    (sequences per forward pass, an integer >= 1) only trades memory for speed.
    """
    batch_size = as_count("batch_size", batch_size)
    tokens, mask = corpus.split(split)
    is_recall = corpus.heldout_is_recall if split == "heldout" else corpus.train_is_recall
    was_training = model.training
    model.eval()
    device = _device(model)
    total_loss = recall_loss = text_loss = 0.0
    n_tokens = n_text = n_correct = n_answers = 0
    for start in range(0, tokens.shape[0], batch_size):
        x = tokens[start : start + batch_size].to(device)  # (B, T)
        m = mask[start : start + batch_size].to(device)  # (B, T)
        text = ~is_recall[start : start + batch_size].to(device)  # (B,)
        logits = model(x).float()  # (B, T, V)
        losses = F.cross_entropy(logits[:, :-1].transpose(1, 2), x[:, 1:], reduction="none")  # (B, T-1)
        total_loss += float(losses.sum())
        recall_loss += float(losses[m[:, 1:]].sum())
        text_loss += float(losses[text].sum())
        n_tokens += losses.numel()
        n_text += losses[text].numel()
        c, n = recall_accuracy(logits, x, m)
        n_correct += c
        n_answers += n
    model.train(was_training)
    return {
        "loss": total_loss / n_tokens,
        "text_loss": text_loss / max(n_text, 1),
        "recall_loss": recall_loss / max(n_answers, 1),
        "recall_acc": n_correct / max(n_answers, 1),
        "n_answers": n_answers,
    }


def _device(model: torch.nn.Module) -> torch.device:
    """The device of ``model``'s first parameter (CPU for a model without parameters)."""
    first = next(model.parameters(), None)
    return torch.device("cpu") if first is None else first.device


@dataclass
class TrainResult:
    """What :func:`train` returns: held-out metrics at the evaluation steps and the training losses."""

    evals: list[dict] = field(default_factory=list)  # one dict per evaluation: step, loss, recall_acc, ...
    train_losses: list[float] = field(default_factory=list)  # training loss of every step
    lrs: list[float] = field(default_factory=list)  # learning rate of every step
    grad_norms: list[float] = field(default_factory=list)  # global gradient norm of every step, before clipping

    def at(self, step: int) -> dict:
        """The evaluation taken after ``step`` steps."""
        for e in self.evals:
            if e["step"] == step:
                return e
        raise KeyError(f"no evaluation at step {step}; have {[e['step'] for e in self.evals]}")

    def to_dict(self) -> dict:
        return asdict(self)


def train(
    model: TransformerLM,
    corpus: ToyCorpus,
    steps: int,
    recipe: TrainRecipe,
    *,
    data_seed: int,
    first_step: int = 0,
    eval_steps: Iterable[int] = (),
    progress: bool = True,
    desc: str = "training",
) -> TrainResult:
    """Train ``model`` in place for ``steps`` steps of ``recipe``; evaluate on held-out data at ``eval_steps``.

    ``first_step`` is the global step the schedule starts from (0 for
    pre-training, ``recipe.pretrain_steps`` for uptraining). ``eval_steps``
    count steps of this call (0 = before any update). Batches are drawn
    with a ``torch.Generator`` seeded with ``data_seed`` (an integer >= 0).
    """
    if not isinstance(recipe, TrainRecipe):
        raise ValueError(f"recipe must be a TrainRecipe; got {type(recipe).__name__}")
    steps = as_count("steps", steps, minimum=0)
    first_step = as_count("first_step", first_step, minimum=0)
    data_seed = as_count("data_seed", data_seed, minimum=0)
    eval_steps = sorted(set(_as_step_list("eval_steps", eval_steps)))
    bad = [s for s in eval_steps if not 0 <= s <= steps]
    if bad:
        raise ValueError(f"eval_steps must lie in [0, steps={steps}]; got {bad}")
    device = _device(model)
    generator = torch.Generator().manual_seed(data_seed)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr_at(first_step, recipe),
        betas=recipe.betas,
    )
    result = TrainResult()

    def record(step: int) -> None:
        result.evals.append({"step": step, **evaluate(model, corpus)})

    if 0 in eval_steps:
        record(0)
    model.train()
    for step in progress_bar(range(1, steps + 1), desc, enabled=progress, leave=False):
        lr = lr_at(first_step + step - 1, recipe)
        for group in optimizer.param_groups:
            group["lr"] = lr
        x = corpus.sample_batch(recipe.batch_size, generator).to(device)  # (B, T)
        logits = model(x)  # (B, T, V)
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)  # norm before clipping
        optimizer.step()
        result.train_losses.append(float(loss.detach()))
        result.grad_norms.append(float(grad_norm))
        result.lrs.append(lr)
        if step in eval_steps:
            record(step)
    model.eval()
    return result


def _as_step_list(name: str, values) -> list[int]:
    """``values`` (an iterable of integers >= 0) as a list of ints; ValueError naming ``name`` otherwise."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise ValueError(f"{name} must be an iterable of integers >= 0; got {values!r}")
    return [as_count(f"{name} entry", v, minimum=0) for v in values]


def pretrain(
    config: TransformerConfig,
    corpus: ToyCorpus,
    recipe: TrainRecipe,
    *,
    seed: int,
    eval_steps: Iterable[int] = (),
    progress: bool = True,
) -> tuple[TransformerLM, TrainResult]:
    """Initialise a TransformerLM with ``torch.manual_seed(seed)`` and train it for ``recipe.pretrain_steps``.

    ``seed`` (an integer >= 0) also seeds the batch order.
    """
    if not isinstance(config, TransformerConfig):
        raise ValueError(f"config must be a TransformerConfig; got {type(config).__name__}")
    if not isinstance(recipe, TrainRecipe):
        raise ValueError(f"recipe must be a TrainRecipe; got {type(recipe).__name__}")
    seed = as_count("seed", seed, minimum=0)
    if config.vocab_size < corpus.vocab_size:
        raise ValueError(f"model vocab_size={config.vocab_size} < corpus vocab_size={corpus.vocab_size}")
    if config.max_seq_len < corpus.config.seq_len:
        raise ValueError(f"model max_seq_len={config.max_seq_len} < corpus seq_len={corpus.config.seq_len}")
    torch.manual_seed(seed)
    model = TransformerLM(config)
    result = train(
        model,
        corpus,
        recipe.pretrain_steps,
        recipe,
        data_seed=seed,
        eval_steps=eval_steps,
        progress=progress,
        desc=f"pre-training (seed {seed})",
    )
    return model, result


def uptrain(
    model: TransformerLM,
    corpus: ToyCorpus,
    recipe: TrainRecipe,
    *,
    alpha: float | None = None,
    steps: int | None = None,
    data_seed: int,
    eval_alphas: Iterable[float] | None = None,
    progress: bool = True,
    desc: str = "uptraining",
) -> TrainResult:
    """Continue pre-training ``model`` in place for a fraction ``alpha`` of the pre-training steps (or ``steps``).

    The learning-rate schedule carries on from step ``recipe.pretrain_steps``.
    Held-out metrics are recorded at each of ``eval_alphas`` (default: 0 and
    the end); each evaluation dict carries its ``alpha``, ``step / pretrain_steps``
    (the fraction actually trained; alphas that round to the same step share one evaluation).
    """
    if (alpha is None) == (steps is None):
        raise ValueError(f"give exactly one of alpha and steps; got alpha={alpha!r}, steps={steps!r}")
    if not isinstance(recipe, TrainRecipe):
        raise ValueError(f"recipe must be a TrainRecipe; got {type(recipe).__name__}")
    n_steps = alpha_to_steps(alpha, recipe) if steps is None else as_count("steps", steps, minimum=0)
    if eval_alphas is None:
        alphas = [0.0, n_steps / recipe.pretrain_steps]
    elif isinstance(eval_alphas, (str, bytes)) or not isinstance(eval_alphas, Iterable):
        raise ValueError(f"eval_alphas must be an iterable of numbers >= 0; got {eval_alphas!r}")
    else:
        alphas = [as_non_negative_float("eval_alphas entry", a) for a in eval_alphas]
    eval_steps = [alpha_to_steps(a, recipe) for a in alphas]
    late = [a for a, s in zip(alphas, eval_steps) if s > n_steps]
    if late:
        raise ValueError(
            f"eval_alphas {late} lie beyond the {n_steps} uptraining steps "
            f"(alpha <= {n_steps / recipe.pretrain_steps:g})"
        )
    result = train(
        model,
        corpus,
        n_steps,
        recipe,
        data_seed=data_seed,
        first_step=recipe.pretrain_steps,
        eval_steps=eval_steps,
        progress=progress,
        desc=desc,
    )
    for e in result.evals:
        e["alpha"] = e["step"] / recipe.pretrain_steps
    return result
