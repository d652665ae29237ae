"""The book's conversion and uptraining experiments (chapters 6-8), in miniature.

Re-run everything from scratch (about 80 min on a 2-core CPU with ``--jobs 2``)::

    python -m gqa_lib.recipe.experiments all --jobs 2 --overwrite   # rewrites gqa_lib/data/gqa_toy/
    python -m gqa_lib.recipe.experiments all --jobs 2 --out /tmp/x  # somewhere else

``all`` is three steps, each of which can also be run alone:

* ``pretrain``: the multi-head checkpoints, one per seed;
* ``grid``: every (seed, G, method, grouping) converted and uptrained, evaluated at every alpha
  (pre-trains a missing checkpoint first);
* ``baselines``: the small-KV models trained from scratch, for the same total
  compute as pre-training plus uptraining, and for the uptraining compute alone.

Every run writes its own file as soon as it finishes (checkpoints in the
output folder, run results in its ``runs/`` folder), and a run whose file
exists is skipped: an interrupted re-run continues where it stopped when the
same command is given again (without ``--overwrite``). When every run is
done the results are gathered into ``grid.json``. ``--overwrite`` deletes the
chosen steps' files and ``grid.json`` first; without it the command refuses
to touch a folder whose ``grid.json`` already exists. ``--jobs N`` runs N
worker processes (``--threads`` each) that claim runs one at a time.

The chapters load the committed results (``gqa_lib/data/gqa_toy/``:
``pretrained_seed{S}.safetensors`` and ``grid.json``, package data, so a
``pip install`` from the repository brings them) and recompute cheap points
live to check that the files still match the code.

Checkpoints are stored with safetensors only (tensors plus a JSON string of
the model configuration in the file's metadata); nothing is unpickled. The
pre-trained checkpoints are stored in float16 and the experiments use exactly
the stored weights (the model is rounded to float16 before it is evaluated
and saved).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..checks import as_count, as_non_negative_float
from ..core.model import TransformerConfig, TransformerLM
from ..progress import progress as progress_bar
from .convert import CONVERSION_METHODS, GROUPINGS, convert_to_gqa
from .corpus import CorpusConfig, ToyCorpus, make_corpus
from .train import TrainRecipe, TrainResult, alpha_to_steps, evaluate, train, uptrain

__all__ = [
    "ExperimentSetup",
    "median_grad_norm",
    "late_peak",
    "late_spikes",
    "SETUP",
    "DATA_DIR",
    "Job",
    "jobs_for",
    "save_checkpoint",
    "load_checkpoint",
    "checkpoint_metadata",
    "load_or_pretrain",
    "pretrain_and_save",
    "checkpoint_name",
    "calibration_tokens",
    "run_point",
    "train_from_scratch",
    "work_through",
    "assemble",
    "load_or_run_grid",
    "grid_table",
    "find_run",
    "run_record",
    "find_baseline",
    "seed_stats",
    "paired_differences",
    "learned_seeds",
    "LEARNED_RECALL",
    "main",
]

DATA_DIR = Path(__file__).resolve().parents[1] / "data" / "gqa_toy"
"""Committed results, shipped inside the package so that ``pip install`` (Colab) brings them too."""
GRID_FILE = "grid.json"
RUNS_DIR = "runs"  # one JSON file per finished run (not shipped: grid.json gathers them)
CLAIMS_DIR = ".claims"  # inside RUNS_DIR: which worker is running which run
SCRATCH_BUDGETS = ("matched", "extra")  # (1 + alpha) x pre-training steps, and alpha x pre-training steps
STEPS = ("pretrain", "grid", "baselines")


@dataclass(frozen=True)
class ExperimentSetup:
    """Everything that defines the experiments: corpus, model, recipe, and the runs to make."""

    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    corpus_seed: int = 0
    model: TransformerConfig = field(
        default_factory=lambda: TransformerConfig(
            vocab_size=CorpusConfig().vocab_size,
            max_seq_len=CorpusConfig().seq_len,
            d_model=128,
            n_layers=2,
            n_heads=8,
            n_kv_heads=8,
            d_ff=344,
            attn_impl="grouped",
        )
    )
    recipe: TrainRecipe = field(default_factory=lambda: TrainRecipe(pretrain_steps=4000))
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4, 5)  # pre-training seed = uptraining seed = random-init seed
    groups: tuple[int, ...] = (1, 2, 4, 8)  # G values converted to (8 = H: the multi-head model itself)
    methods: tuple[str, ...] = ("mean", "first", "random")
    groupings: tuple[str, ...] = ("contiguous", "similar")
    alphas: tuple[float, ...] = (0.0, 0.01, 0.025, 0.05)  # uptraining fractions evaluated
    n_calibration: int = 256  # training sequences on which grouping="similar" compares heads
    scratch_groups: tuple[int, ...] = (1, 2)  # G values also trained from scratch (baselines)
    scratch_seeds: tuple[int, ...] = (0, 1, 2)
    scratch_alpha: float = 0.05  # the uptraining fraction the baselines' budgets are matched to

    def __post_init__(self) -> None:
        """Check every field (ValueError naming it) before hours of training can fail on it; store tuples."""
        for name, kind in (("corpus", CorpusConfig), ("model", TransformerConfig), ("recipe", TrainRecipe)):
            if not isinstance(getattr(self, name), kind):
                raise ValueError(f"{name} must be a {kind.__name__}; got {type(getattr(self, name)).__name__}")
        object.__setattr__(self, "corpus_seed", as_count("corpus_seed", self.corpus_seed, minimum=0))
        object.__setattr__(self, "n_calibration", as_count("n_calibration", self.n_calibration))
        object.__setattr__(self, "scratch_alpha", as_non_negative_float("scratch_alpha", self.scratch_alpha))
        count = lambda name, minimum: (lambda v: as_count(f"{name} entry", v, minimum=minimum))  # noqa: E731
        checked = {
            "seeds": _checked_tuple("seeds", self.seeds, count("seeds", 0)),
            "groups": _checked_tuple("groups", self.groups, count("groups", 1)),
            "methods": _checked_tuple("methods", self.methods, lambda v: _checked_choice("methods", v, CONVERSION_METHODS)),
            "groupings": _checked_tuple("groupings", self.groupings, lambda v: _checked_choice("groupings", v, GROUPINGS)),
            "alphas": _checked_tuple("alphas", self.alphas, lambda v: as_non_negative_float("alphas entry", v), unique=False),
            "scratch_groups": _checked_tuple("scratch_groups", self.scratch_groups, count("scratch_groups", 1), empty_ok=True),
            "scratch_seeds": _checked_tuple("scratch_seeds", self.scratch_seeds, count("scratch_seeds", 0), empty_ok=True),
        }
        H = self.model.n_heads
        if self.model.n_kv_heads != H:
            raise ValueError(f"the experiments convert a multi-head model; model has n_kv_heads={self.model.n_kv_heads} != n_heads={H}")
        for name in ("groups", "scratch_groups"):
            bad = [G for G in checked[name] if H % G]
            if bad:
                raise ValueError(f"{name} {bad} do not divide the model's n_heads={H}")
        if self.model.vocab_size < self.corpus.vocab_size:
            raise ValueError(f"model vocab_size={self.model.vocab_size} < corpus vocab_size={self.corpus.vocab_size}")
        if self.model.max_seq_len < self.corpus.seq_len:
            raise ValueError(f"model max_seq_len={self.model.max_seq_len} < corpus seq_len={self.corpus.seq_len}")
        if checked["scratch_groups"] and self.scratch_alpha not in checked["alphas"]:
            raise ValueError(f"scratch_alpha={self.scratch_alpha} must be one of the alphas {checked['alphas']} "
                             "(the baselines are compared with the uptrained runs at that alpha)")
        if self.n_calibration > self.corpus.n_train:
            raise ValueError(f"n_calibration={self.n_calibration} exceeds the corpus's n_train={self.corpus.n_train}")
        for name, value in checked.items():
            object.__setattr__(self, name, value)

    def to_dict(self) -> dict:
        d = {"corpus": asdict(self.corpus), "corpus_seed": self.corpus_seed, "model": asdict(self.model),
             "recipe": asdict(self.recipe)}
        for name in ("seeds", "groups", "methods", "groupings", "alphas", "scratch_groups", "scratch_seeds"):
            d[name] = list(getattr(self, name))
        d["n_calibration"] = self.n_calibration
        d["scratch_alpha"] = self.scratch_alpha
        return d

    def make_corpus(self) -> ToyCorpus:
        return make_corpus(self.corpus_seed, self.corpus)


def _checked_choice(name: str, value, choices: tuple) -> str:
    if value not in choices:
        raise ValueError(f"{name} entry must be one of {choices}; got {value!r}")
    return value


def _checked_tuple(name: str, values, check, unique: bool = True, empty_ok: bool = False) -> tuple:
    """``values`` as a tuple of ``check(v)``; ValueError naming ``name`` if empty, not a sequence or repeated."""
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise ValueError(f"{name} must be a tuple; got {values!r}")
    checked = tuple(check(v) for v in values)
    if not checked and not empty_ok:
        raise ValueError(f"{name} must be a non-empty tuple; got {values!r}")
    if unique and len(set(checked)) != len(checked):
        raise ValueError(f"{name} must not repeat a value; got {values!r}")
    return checked


SETUP = ExperimentSetup()


# ----------------------------------------------------------------------------- checkpoints


def save_checkpoint(
    model: TransformerLM, path: str | Path, metadata: dict | None = None, dtype: torch.dtype | None = None
) -> None:
    """Write ``model`` to ``path`` as safetensors; its config (and ``metadata``) go in the header as JSON.

    ``dtype`` (e.g. ``torch.float16``) stores the tensors in that dtype; default: as they are.
    """
    if not isinstance(getattr(model, "config", None), TransformerConfig):
        raise ValueError(f"model must be a TransformerLM (with a TransformerConfig); got {type(model).__name__}")
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(f"dtype must be a floating torch.dtype or None; got {dtype!r}")
    try:
        meta = json.dumps(metadata or {})
    except (TypeError, ValueError) as e:
        raise ValueError(f"metadata must be JSON-serialisable; got {metadata!r} ({e})") from None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = {"config": json.dumps(asdict(model.config)), "metadata": meta}
    tensors = model.tensors_to_store(dtype)
    partial = path.with_name(path.name + ".partial")
    save_file(tensors, str(partial), metadata=header)
    partial.replace(path)  # a file at ``path`` is always complete, even if interrupted


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[TransformerLM, dict]:
    """Read a checkpoint written by :func:`save_checkpoint`: (model in eval mode, metadata dict).

    FileNotFoundError if ``path`` does not exist; ValueError naming the file
    if it is not a safetensors file, or one that :func:`save_checkpoint` did
    not write (no model configuration in its metadata, or tensors that do
    not fit it).
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    if not path.is_file():
        raise ValueError(f"checkpoint path {path} is not a file")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
        tensors = load_file(str(path))
    except SafetensorError as e:
        raise ValueError(f"{path} is not a readable safetensors file ({e})") from None
    if "config" not in header:
        raise ValueError(
            f"{path} was not written by gqa_lib's save_checkpoint: its safetensors metadata has no 'config' "
            f"entry (the model configuration as JSON); metadata keys: {sorted(header)}"
        )
    try:
        config = TransformerConfig(**json.loads(header["config"]))
        metadata = json.loads(header.get("metadata", "{}"))
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: the metadata of the checkpoint is not a valid gqa_lib header ({e})") from None
    model = TransformerLM(config)
    if config.tie_word_embeddings and "model.embed_tokens.weight" in tensors:
        tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"]  # the tied head: one matrix
    try:
        model.load_state_dict(tensors)
    except RuntimeError as e:
        raise ValueError(f"{path}: its tensors do not fit its configuration {config}: {e}") from None
    return model.to(device).eval(), metadata


def checkpoint_name(seed: int) -> str:
    """File name of the pre-trained checkpoint of ``seed`` (an integer >= 0)."""
    return f"pretrained_seed{as_count('seed', seed, minimum=0)}.safetensors"


def checkpoint_metadata(path: str | Path) -> dict:
    """The metadata dict stored with a checkpoint, read from its header only (no tensors loaded)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
        return json.loads(header.get("metadata", "{}"))
    except (SafetensorError, ValueError, OSError) as e:
        raise ValueError(f"{path}: cannot read checkpoint metadata ({e})") from None


def _first_existing(name: str, *folders: str | Path | None) -> Path | None:
    """``folder/name`` for the first folder (None skipped) that holds ``name``; None if none does."""
    for folder in folders:
        if folder is not None and (Path(folder) / name).exists():
            return Path(folder) / name
    return None


# ----------------------------------------------------------------------------- single runs


def _rounded(d: dict, digits: int = 5) -> dict:
    return {k: (round(v, digits) if isinstance(v, float) else v) for k, v in d.items()}


def _trace(result: TrainResult, points: int = 200) -> dict:
    """Training loss and gradient norm of every step, binned to at most ``points`` bins of ``bin`` steps.

    Keeps per bin the mean and the largest loss and the largest gradient norm
    (before clipping), so a one-step spike survives the binning.
    """
    n = len(result.train_losses)
    size = max(1, -(-n // points))  # steps per bin (ceil)
    bins = [range(i, min(i + size, n)) for i in range(0, n, size)]
    return {
        "bin": size,
        "loss_mean": [round(sum(result.train_losses[j] for j in b) / len(b), 4) for b in bins],
        "loss_max": [round(max(result.train_losses[j] for j in b), 4) for b in bins],
        "grad_norm_max": [round(max(result.grad_norms[j] for j in b), 4) for b in bins],
    }


def _round_to_float16(model: TransformerLM) -> None:
    """Round every weight to float16 precision in place (what a float16 checkpoint stores)."""
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(torch.float16).to(p.dtype))


def pretrain_and_save(
    seed: int, setup: ExperimentSetup, corpus: ToyCorpus, folder: str | Path | None, progress: bool = True,
) -> TransformerLM:
    """Pre-train the multi-head model of ``seed``, rounded to float16; save it (with its metrics) into ``folder``.

    The weights are initialised with ``torch.manual_seed(seed)`` and the
    batches drawn in the order of ``seed``.
    """
    seed = as_count("seed", seed, minimum=0)
    start = time.perf_counter()
    P = setup.recipe.pretrain_steps
    torch.manual_seed(seed)
    model = TransformerLM(setup.model)
    result = train(model, corpus, P, setup.recipe, data_seed=seed, eval_steps=sorted({0, P // 4, P // 2, 3 * P // 4, P}),
                   progress=progress, desc=f"pre-training (seed {seed})")
    _round_to_float16(model)
    if folder is not None:
        metadata = {
            "seed": seed,
            "final": _rounded(evaluate(model, corpus)),  # of the stored (float16-rounded) weights
            "evals": [_rounded(e) for e in result.evals],
            "trace": _trace(result),
            "seconds": round(time.perf_counter() - start, 1),
            "threads": torch.get_num_threads(),
        }
        save_checkpoint(model, Path(folder) / checkpoint_name(seed), metadata=metadata, dtype=torch.float16)
    return model.eval()


def load_or_pretrain(
    seed: int,
    setup: ExperimentSetup = SETUP,
    data_dir: str | Path | None = DATA_DIR,
    cache_dir: str | Path | None = None,
    corpus: ToyCorpus | None = None,
    progress: bool = True,
) -> TransformerLM:
    """The pre-trained multi-head checkpoint of ``seed``: from ``data_dir``, else ``cache_dir``, else trained now.

    A freshly trained checkpoint is saved into ``cache_dir`` (when given).
    """
    path = _first_existing(checkpoint_name(seed), data_dir, cache_dir)
    if path is not None:
        model, _ = load_checkpoint(path)
        if model.config != setup.model:
            raise ValueError(f"checkpoint in {path.parent} has config {model.config}, expected {setup.model}")
        return model
    return pretrain_and_save(seed, setup, corpus or setup.make_corpus(), cache_dir, progress)


def calibration_tokens(corpus: ToyCorpus, setup: ExperimentSetup = SETUP) -> torch.Tensor:
    """The training sequences grouping="similar" compares heads on: the first ``setup.n_calibration``, (N, T)."""
    return corpus.split("train")[0][: setup.n_calibration]


def run_point(
    model: TransformerLM,
    corpus: ToyCorpus,
    n_kv_heads: int,
    method: str,
    seed: int,
    max_alpha: float,
    setup: ExperimentSetup = SETUP,
    grouping: str = "contiguous",
    progress: bool = True,
) -> dict:
    """Convert ``model`` to ``n_kv_heads`` KV heads by ``method`` and ``grouping``, uptrain to ``max_alpha``.

    Returns ``{"evals": [...], "trace": {...}, "head_order": [...]}``: held-out
    metrics at every alpha of ``setup.alphas`` up to ``max_alpha`` (finite,
    >= 0), one dict per alpha in the order of ``setup.alphas``, each labelled
    with exactly that alpha (alphas that round to the same number of steps
    share one evaluation); the binned training trace (:func:`_trace`); and,
    for ``grouping="similar"``, each layer's head order (else None). The
    random initialisation and the batch order are seeded with ``seed``.
    """
    max_alpha = as_non_negative_float("max_alpha", max_alpha)
    calibration = calibration_tokens(corpus, setup) if grouping == "similar" else None
    converted = convert_to_gqa(model, n_kv_heads, method=method, seed=seed, grouping=grouping, calibration=calibration)
    alphas = [a for a in setup.alphas if a <= max_alpha + 1e-12]
    result = uptrain(
        converted,
        corpus,
        setup.recipe,
        alpha=max_alpha,
        data_seed=10_000 + seed,
        eval_alphas=alphas,
        progress=progress,
        desc=f"G={n_kv_heads} {method} {grouping} seed {seed}",
    )
    by_step = {e["step"]: e for e in result.evals}  # one evaluation per distinct step, in step order
    evals = [by_step[alpha_to_steps(a, setup.recipe)] for a in alphas]
    orders = [getattr(layer.self_attn, "head_order", None) for layer in converted.layers]
    return {
        "evals": [_rounded({"alpha": a, **{k: v for k, v in e.items() if k != "alpha"}}) for a, e in zip(alphas, evals)],
        "trace": _trace(result),
        "head_order": orders if grouping == "similar" else None,
    }


def train_from_scratch(
    n_kv_heads: int, budget: str, seed: int, setup: ExperimentSetup = SETUP, corpus: ToyCorpus | None = None,
    progress: bool = True,
) -> dict:
    """Train a model with ``n_kv_heads`` KV heads from a random initialisation: the paper's alternative to uptraining.

    ``budget="matched"`` trains (1 + scratch_alpha) x pre-training steps (the
    compute of pre-training the multi-head model and uptraining it);
    ``"extra"`` trains scratch_alpha x pre-training steps (the uptraining
    compute alone). Same recipe and schedule as pre-training; the weights are
    initialised with ``torch.manual_seed(seed)`` and the batches come in the
    order of the multi-head model of the same seed (a paired comparison).
    Returns ``{"steps", "evals", "trace"}``.
    """
    if budget not in SCRATCH_BUDGETS:
        raise ValueError(f"budget must be one of {SCRATCH_BUDGETS}; got {budget!r}")
    corpus = corpus or setup.make_corpus()
    P, extra = setup.recipe.pretrain_steps, alpha_to_steps(setup.scratch_alpha, setup.recipe)
    steps = P + extra if budget == "matched" else extra
    eval_steps = sorted({P // 4, P // 2, 3 * P // 4, P, steps} if budget == "matched" else {steps // 2, steps})
    torch.manual_seed(as_count("seed", seed, minimum=0))
    model = TransformerLM(replace(setup.model, n_kv_heads=n_kv_heads))
    result = train(model, corpus, steps, setup.recipe, data_seed=seed, eval_steps=eval_steps, progress=progress,
                   desc=f"G={n_kv_heads} from scratch ({budget}) seed {seed}")
    return {"steps": steps, "evals": [_rounded(e) for e in result.evals], "trace": _trace(result)}


# ----------------------------------------------------------------------------- jobs: resumable, in parallel


@dataclass(frozen=True)
class Job:
    """One run of the experiments, with the file it writes when it is done."""

    kind: str  # "pretrain", "uptrain" or "scratch"
    seed: int
    G: int = 0
    method: str = ""  # uptrain: mean, first or random
    grouping: str = ""  # uptrain: contiguous or similar
    budget: str = ""  # scratch: matched or extra

    @property
    def file(self) -> str:
        """Where the result goes, relative to the output folder."""
        if self.kind == "pretrain":
            return checkpoint_name(self.seed)
        if self.kind == "uptrain":
            return f"{RUNS_DIR}/uptrain_G{self.G}_{self.method}_{self.grouping}_seed{self.seed}.json"
        return f"{RUNS_DIR}/scratch_G{self.G}_{self.budget}_seed{self.seed}.json"

    @property
    def needs(self) -> str | None:
        """The file this job reads (an uptraining run needs its pre-trained checkpoint)."""
        return checkpoint_name(self.seed) if self.kind == "uptrain" else None

    @property
    def name(self) -> str:
        return Path(self.file).stem


def jobs_for(step: str, setup: ExperimentSetup = SETUP) -> list[Job]:
    """The runs of one step (``pretrain``, ``grid``, ``baselines``, or ``all`` of them), longest-waiting first."""
    if step == "all":
        return [job for s in ("pretrain", "baselines", "grid") for job in jobs_for(s, setup)]  # long runs first
    if step == "pretrain":
        return [Job("pretrain", seed) for seed in setup.seeds]
    if step == "grid":
        H, jobs = setup.model.n_heads, []
        for seed in setup.seeds:
            for G in setup.groups:
                for method in setup.methods:
                    for grouping in setup.groupings:
                        if G == H and (method, grouping) != ("mean", "contiguous"):
                            continue  # G = H is the multi-head model itself: one run, an exact copy
                        if grouping == "similar" and (method == "random" or G == 1):
                            continue  # random K/V pool nothing; with one group, every grouping is the same
                        jobs.append(Job("uptrain", seed, G, method, grouping))
        return jobs
    if step == "baselines":
        return [Job("scratch", seed, G, budget=budget)
                for budget in SCRATCH_BUDGETS for seed in setup.scratch_seeds for G in setup.scratch_groups]
    raise ValueError(f"step must be one of {(*STEPS, 'all')}; got {step!r}")


def _write_json(path: Path, data: dict) -> None:
    """Write ``data`` to ``path`` completely or not at all (a partial file, then a rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(data))
    partial.replace(path)


def run_job(job: Job, setup: ExperimentSetup, corpus: ToyCorpus, out: Path, progress: bool = True) -> None:
    """Run one job and write its file into ``out``."""
    start = time.perf_counter()
    if job.kind == "pretrain":
        pretrain_and_save(job.seed, setup, corpus, out, progress)
        return
    if job.kind == "uptrain":
        model, _ = load_checkpoint(out / job.needs)
        if model.config != setup.model:
            raise ValueError(f"{out / job.needs} has config {model.config}, the experiments need {setup.model}")
        result = run_point(model, corpus, job.G, job.method, job.seed, max(setup.alphas), setup, job.grouping, progress)
        key = {"G": job.G, "method": job.method, "grouping": job.grouping, "seed": job.seed}
    else:
        result = train_from_scratch(job.G, job.budget, job.seed, setup, corpus, progress)
        key = {"G": job.G, "budget": job.budget, "seed": job.seed}
    seconds = round(time.perf_counter() - start, 1)
    _write_json(out / job.file, {**key, **result, "seconds": seconds, "threads": torch.get_num_threads()})


def _lock(out: Path, job: Job) -> Path:
    """The lock file that says a worker is running ``job``."""
    return out / RUNS_DIR / CLAIMS_DIR / f"{job.name}.lock"


def _claim(out: Path, job: Job) -> bool:
    """Take ``job`` for this process (False if another worker holds it): an exclusively created lock file."""
    _lock(out, job).parent.mkdir(parents=True, exist_ok=True)
    try:
        os.close(os.open(_lock(out, job), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


def _release(out: Path, job: Job) -> None:
    _lock(out, job).unlink(missing_ok=True)


def work_through(
    jobs: list[Job], setup: ExperimentSetup, out: str | Path, progress: bool = True, poll_seconds: float = 2.0,
    log=None,
) -> int:
    """Run every job of ``jobs`` whose file is missing from ``out``, skipping those another worker has claimed.

    Jobs whose input (a checkpoint) is not there yet wait for it; returns the
    number of jobs this call ran. Several processes may work through the
    same list at once: each job is claimed with a lock file before it runs.
    """
    out = Path(out)
    produced = {j.file for j in jobs}
    orphans = sorted({j.needs for j in jobs if j.needs and j.needs not in produced and not (out / j.needs).exists()})
    if orphans:
        raise ValueError(f"{out} lacks {', '.join(orphans)}, which no job of this list makes; run the pretrain step")
    corpus = setup.make_corpus()
    ran = 0
    while True:
        waiting = False
        for job in jobs:
            if (out / job.file).exists():
                continue
            if job.needs and not (out / job.needs).exists():
                waiting = True
                continue
            if not _claim(out, job):
                continue
            try:
                if not (out / job.file).exists():  # done by another worker between the check and the claim
                    t = time.perf_counter()
                    run_job(job, setup, corpus, out, progress)
                    ran += 1
                    if log:
                        log(f"{job.name} done in {time.perf_counter() - t:.0f} s")
            finally:
                _release(out, job)
            break  # rescan from the top: earlier jobs may have become ready
        else:
            pending = [j for j in jobs if not (out / j.file).exists()]
            if not pending:
                return ran
            if not waiting and all(_lock(out, j).exists() for j in pending):
                return ran  # everything left is running in other workers
            time.sleep(poll_seconds)


# ----------------------------------------------------------------------------- gathered results


def assemble(setup: ExperimentSetup, out: str | Path) -> dict:
    """Gather every run's file in ``out`` into one results dict (what ``grid.json`` holds).

    ValueError naming the missing files if some run has not finished.
    """
    out = Path(out)
    jobs = jobs_for("all", setup)
    missing = [j.file for j in jobs if not (out / j.file).exists()]
    if missing:
        raise ValueError(f"{len(missing)} runs are not finished in {out}, e.g. {missing[:3]}; re-run to resume")
    pretraining = [{"seed": j.seed, **checkpoint_metadata(out / j.file)} for j in jobs if j.kind == "pretrain"]
    runs = [json.loads((out / j.file).read_text()) for j in jobs if j.kind == "uptrain"]
    baselines = [json.loads((out / j.file).read_text()) for j in jobs if j.kind == "scratch"]
    seconds = {
        "pretrain": round(sum(p["seconds"] for p in pretraining), 1),
        "grid": round(sum(r["seconds"] for r in runs), 1),
        "baselines": round(sum(b["seconds"] for b in baselines), 1),
    }
    return {"setup": setup.to_dict(), "torch": torch.__version__, "run_seconds": seconds,
            "pretraining": pretraining, "runs": runs, "baselines": baselines}


def load_or_run_grid(
    setup: ExperimentSetup = SETUP,
    data_dir: str | Path | None = DATA_DIR,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> dict:
    """The results: ``data_dir/grid.json``, else ``cache_dir/grid.json``, else computed now into ``cache_dir``.

    Computing them takes more than an hour on a CPU (see the module docstring).
    """
    path = _first_existing(GRID_FILE, data_dir, cache_dir)
    if path is not None:
        try:
            results = json.loads(path.read_text())
        except ValueError as e:  # JSONDecodeError, or bytes that are not UTF-8
            raise ValueError(f"{path} is not a grid results file (not valid JSON: {e}); delete it or re-run") from None
        if not isinstance(results, dict) or not {"setup", "runs"} <= results.keys():
            raise ValueError(f"{path} is not a grid results file (no 'setup' and 'runs' entries); delete it or re-run")
        if results["setup"] != json.loads(json.dumps(setup.to_dict())):
            raise ValueError(f"{path} was computed with a different setup; re-run the experiments")
        return results
    if cache_dir is None:
        raise ValueError("no grid.json in data_dir and no cache_dir to compute one into")
    cache_dir = Path(cache_dir)
    work_through(jobs_for("all", setup), setup, cache_dir, progress)
    results = assemble(setup, cache_dir)
    _write_json(cache_dir / GRID_FILE, results)
    return json.loads(json.dumps(results))  # as read back from the file (lists, not tuples)


def grid_table(results: dict) -> list[dict]:
    """Flatten the uptraining runs to rows: G, method, grouping, seed, alpha, loss, recall_acc, ..."""
    rows = []
    for run in results["runs"]:
        for e in run["evals"]:
            rows.append({"G": run["G"], "method": run["method"], "grouping": run["grouping"], "seed": run["seed"], **e})
    return rows


def run_record(results: dict, n_kv_heads: int, method: str, seed: int, grouping: str = "contiguous") -> dict:
    """Everything stored about one uptraining run: ``evals``, ``trace``, ``head_order``, ``seconds``, ..."""
    for run in results["runs"]:
        if (run["G"], run["method"], run["grouping"], run["seed"]) == (n_kv_heads, method, grouping, seed):
            return run
    raise KeyError(f"no run with G={n_kv_heads}, method={method!r}, grouping={grouping!r}, seed={seed}")


def find_run(results: dict, n_kv_heads: int, method: str, seed: int, grouping: str = "contiguous") -> list[dict]:
    """The evaluations (one dict per alpha) of one uptraining run."""
    return run_record(results, n_kv_heads, method, seed, grouping)["evals"]


def median_grad_norm(trace: dict) -> float:
    """The median of a training trace's per-bin largest gradient norms (before clipping)."""
    norms = sorted(trace["grad_norm_max"])
    return norms[len(norms) // 2]


def late_peak(trace: dict, skip: float = 0.2) -> float:
    """The largest gradient norm after the first ``skip`` of the run (the transient after conversion)."""
    norms = trace["grad_norm_max"]
    return max(norms[int(len(norms) * skip):])


def late_spikes(trace: dict, skip: float = 0.2, factor: float = 3.0) -> int:
    """Bins after the first ``skip`` of the run whose largest gradient norm exceeds ``factor`` times the
    run's median bin: loss-spike candidates, counted where the transient after conversion is over."""
    norms, median = trace["grad_norm_max"], median_grad_norm(trace)
    return sum(n > factor * median for n in norms[int(len(norms) * skip):])


def find_baseline(results: dict, n_kv_heads: int, budget: str, seed: int) -> dict:
    """One from-scratch run: ``steps``, ``evals`` (the last is the end of training), ``trace``."""
    for run in results["baselines"]:
        if (run["G"], run["budget"], run["seed"]) == (n_kv_heads, budget, seed):
            return run
    raise KeyError(f"no from-scratch run with G={n_kv_heads}, budget={budget!r}, seed={seed}")


def _at_alpha(evals: list[dict], alpha: float, metric: str) -> float:
    matches = [e for e in evals if abs(e["alpha"] - alpha) < 1e-9]
    if not matches:
        raise KeyError(f"no evaluation at alpha={alpha}; have {[e['alpha'] for e in evals]}")
    if metric not in matches[0]:
        raise ValueError(f"metric must be one of {sorted(matches[0])}; got {metric!r}")
    return matches[0][metric]


def _summary(values: list[float]) -> dict:
    t = torch.tensor(values, dtype=torch.float64)
    std = float(t.std()) if len(values) > 1 else 0.0
    return {"values": values, "mean": float(t.mean()), "std": std, "min": min(values), "max": max(values)}


LEARNED_RECALL = 0.99  # held-out recall a pre-trained checkpoint must reach to count as having learned the task


def learned_seeds(results: dict, threshold: float = LEARNED_RECALL) -> list[int]:
    """The seeds whose pre-trained multi-head checkpoint learned the recall task (held-out recall >= ``threshold``).

    Recall is learned abruptly, at a step that varies from seed to seed, and
    a seed may not have learned it when pre-training ends. A conversion can
    only keep a look-up that its checkpoint has, so the chapters' statistics
    of conversion run over these seeds and show the others apart. The
    criterion looks at the multi-head checkpoint only, never at a conversion.
    """
    return sorted(p["seed"] for p in results["pretraining"] if p["final"]["recall_acc"] >= threshold)


def seed_stats(
    results: dict, n_kv_heads: int, method: str, alpha: float, metric: str = "recall_acc", grouping: str = "contiguous",
    seeds=None,
) -> dict:
    """``metric`` at ``alpha`` over the seeds (in seed order; only ``seeds`` if given): values, mean, std, min, max."""
    alpha = as_non_negative_float("alpha", alpha)
    runs = sorted((r for r in results["runs"] if (r["G"], r["method"], r["grouping"]) == (n_kv_heads, method, grouping)
                   and (seeds is None or r["seed"] in seeds)), key=lambda r: r["seed"])
    if not runs:
        raise KeyError(f"no runs with G={n_kv_heads}, method={method!r}, grouping={grouping!r}, seeds {seeds}")
    return _summary([_at_alpha(r["evals"], alpha, metric) for r in runs])


def paired_differences(
    results: dict, n_kv_heads: int, alpha: float, a: tuple[str, str], b: tuple[str, str], metric: str = "recall_acc",
    seeds=None,
) -> dict:
    """Per seed, ``metric`` of variant ``a`` minus that of ``b`` (each a (method, grouping) pair), at one G and alpha.

    Returns the summary of the differences plus ``wins`` (seeds where a > b),
    ``losses`` and ``n``: a ranking that holds in every seed is "separated";
    one that flips between seeds is not.
    """
    va = seed_stats(results, n_kv_heads, a[0], alpha, metric, a[1], seeds)["values"]
    vb = seed_stats(results, n_kv_heads, b[0], alpha, metric, b[1], seeds)["values"]
    diffs = [x - y for x, y in zip(va, vb)]
    return {**_summary(diffs), "wins": sum(d > 0 for d in diffs), "losses": sum(d < 0 for d in diffs), "n": len(diffs)}


# ----------------------------------------------------------------------------- command line


def _worker(jobs: list[Job], setup: ExperimentSetup, out: Path, threads: int) -> None:
    """One of ``--jobs`` worker processes: work through the runs with ``threads`` threads, no progress bars."""
    torch.set_num_threads(threads)
    work_through(jobs, setup, out, progress=False, log=lambda m: print(m, flush=True))


def _spawn_workers(jobs: list[Job], setup: ExperimentSetup, out: Path, n_workers: int, threads: int, desc: str) -> None:
    """Run ``n_workers`` processes over ``jobs``; a progress bar counts the finished files."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")  # a fresh interpreter: no inherited torch thread pools
    workers = [context.Process(target=_worker, args=(jobs, setup, out, threads)) for _ in range(n_workers)]
    for w in workers:
        w.start()
    done = lambda: sum((out / j.file).exists() for j in jobs)  # noqa: E731
    try:
        with progress_bar(None, desc, total=len(jobs), initial=done()) as bar:
            while any(w.is_alive() for w in workers):
                time.sleep(2)
                bar.update(done() - bar.n)
            bar.update(done() - bar.n)
    except BaseException:
        for w in workers:
            w.terminate()
        raise
    failed = [w.exitcode for w in workers if w.exitcode]
    if failed:
        raise SystemExit(f"a worker failed (exit code {failed[0]}); re-run the same command to resume")


def main(argv: list[str] | None = None, setup: ExperimentSetup = SETUP) -> None:
    """The command line (see the module docstring); ``setup`` lets tests run it on a tiny setup."""
    parser = argparse.ArgumentParser(prog="python -m gqa_lib.recipe.experiments", description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=[*STEPS, "all"], help="which experiments to run")
    parser.add_argument("--out", type=Path, default=DATA_DIR, help=f"output folder (default {DATA_DIR})")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes running runs side by side (default 1)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads per worker (default 1: as fast per core for a model this "
                             "small, and the sums then add up in one order, so a re-run on the same kind of CPU "
                             "gives the same bits)")
    parser.add_argument("--overwrite", action="store_true",
                        help="delete the chosen steps' results (and grid.json) in --out first, then re-run them")
    args = parser.parse_args(argv)
    for name in ("jobs", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1; got {getattr(args, name)}")
    out: Path = args.out
    if out.exists() and not out.is_dir():
        parser.error(f"--out {out} is a file, not a folder; give a folder (it is created if missing)")
    torch.set_num_threads(args.threads)
    jobs = jobs_for(args.what, setup)
    if args.what == "grid":  # a missing checkpoint is pre-trained first
        jobs = [j for j in jobs_for("pretrain", setup) if not (out / j.file).exists()] + jobs
    grid = out / GRID_FILE
    if grid.exists() and not args.overwrite:
        parser.error(f"{grid} exists: the results are complete; pass --overwrite to recompute them, "
                     "or --out another folder")
    replaced = {j.file for j in jobs_for(args.what, setup)} if args.overwrite else set()  # deleted below
    for job in jobs_for("pretrain", setup):
        path = out / job.file
        if path.exists() and job.file not in replaced:  # grid --overwrite keeps the checkpoints: check them
            try:
                config = load_checkpoint(path)[0].config
            except ValueError as e:
                parser.error(f"cannot use {path}: {e}")
            if config != setup.model:
                parser.error(f"{path} has model config {config}, the experiments need {setup.model}; "
                             "re-train it with 'pretrain --overwrite' (or 'all --overwrite'), or --out another folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        parser.error(f"cannot create the --out folder {out}: {e.strerror or e}")
    if args.overwrite:
        grid.unlink(missing_ok=True)
        deleted = {job.file for job in jobs_for(args.what, setup)}
        deleted |= {job.file for job in jobs_for("grid", setup) if job.needs in deleted}  # runs of a new checkpoint
        for name in deleted:
            (out / name).unlink(missing_ok=True)
    claims = out / RUNS_DIR / CLAIMS_DIR
    if claims.exists():  # left by an interrupted run: no worker is running now
        for lock in claims.glob("*.lock"):
            lock.unlink()
    t0 = time.perf_counter()
    todo = [j for j in jobs if not (out / j.file).exists()]
    print(f"{len(jobs) - len(todo)} of {len(jobs)} runs already in {out}; running {len(todo)}", flush=True)
    if args.jobs > 1:
        _spawn_workers(jobs, setup, out, args.jobs, args.threads, f"{args.what}: runs finished")
    else:
        with progress_bar(None, f"{args.what}: runs", total=len(jobs), initial=len(jobs) - len(todo)) as bar:
            work_through(jobs, setup, out, log=lambda m: (bar.update(1), bar.write(m)))
    print(f"{args.what}: {len(todo)} runs in {time.perf_counter() - t0:.0f} s", flush=True)
    try:
        results = assemble(setup, out)
    except ValueError as e:
        print(f"not gathered into {GRID_FILE} yet: {e}", flush=True)
        return
    _write_json(grid, results)
    print(f"gathered every run into {grid}", flush=True)


if __name__ == "__main__":
    main()
