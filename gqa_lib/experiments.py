"""The book's conversion and uptraining experiments (chapters 6-8), in miniature.

Re-run everything from scratch (pre-training of the original multi-head
checkpoints, then conversion and uptraining for every G, method and seed)::

    python -m gqa_lib.experiments all                 # writes gqa_lib/data/gqa_toy/
    python -m gqa_lib.experiments pretrain            # only the checkpoints
    python -m gqa_lib.experiments grid                # only the conversion/uptraining grid
    python -m gqa_lib.experiments all --out /tmp/x    # somewhere else

Existing result files are never replaced unless ``--overwrite`` is given.
``grid`` uptrains the checkpoints found in the output folder; a missing one
is pre-trained first and saved there as soon as it is trained (so an
interrupted run keeps it), never replacing a file that is already there.

The chapters load the committed results (``gqa_lib/data/gqa_toy/``:
``pretrained_seed{S}.safetensors`` and ``grid.json``, package data, so a
``pip install`` from the repository brings them), recompute cheap points live
to check that the files still match the code, and fall back to computing
(into their cache folder) when a file is missing.

Checkpoints are stored with safetensors only (tensors plus a JSON string
of the model configuration in the file's metadata); nothing is unpickled.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .checks import as_count, as_non_negative_float
from .convert import CONVERSION_METHODS, convert_to_gqa
from .corpus import CorpusConfig, ToyCorpus, make_corpus
from .model import TransformerConfig, TransformerLM
from .progress import progress as progress_bar
from .train import TrainRecipe, alpha_to_steps, evaluate, pretrain, uptrain

__all__ = [
    "ExperimentSetup",
    "SETUP",
    "DATA_DIR",
    "save_checkpoint",
    "load_checkpoint",
    "load_or_pretrain",
    "pretrain_and_save",
    "checkpoint_name",
    "run_point",
    "run_grid",
    "load_or_run_grid",
    "grid_table",
    "find_run",
    "seed_stats",
    "main",
]

DATA_DIR = Path(__file__).resolve().parent / "data" / "gqa_toy"
"""Committed results, shipped inside the package so that ``pip install`` (Colab) brings them too."""
GRID_FILE = "grid.json"


@dataclass(frozen=True)
class ExperimentSetup:
    """Everything that defines the experiments: corpus, model, recipe, and the grid to run."""

    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    corpus_seed: int = 0
    model: TransformerConfig = field(
        default_factory=lambda: TransformerConfig(
            vocab_size=CorpusConfig().vocab_size,
            max_seq_len=CorpusConfig().seq_len,
            d_model=32,
            n_layers=2,
            n_heads=8,
            n_kv_heads=8,
            d_ff=128,
            attn_impl="grouped",
        )
    )
    recipe: TrainRecipe = field(default_factory=TrainRecipe)
    seeds: tuple[int, ...] = (0, 1, 2)  # pre-training seed = uptraining seed = random-init seed
    groups: tuple[int, ...] = (1, 2, 4, 8)  # G values converted to (8 = H: the multi-head model itself)
    methods: tuple[str, ...] = ("mean", "first", "random")
    alphas: tuple[float, ...] = (0.0, 0.01, 0.025, 0.05, 0.1)  # uptraining fractions evaluated

    def __post_init__(self) -> None:
        """Check every field (ValueError naming it) before hours of training can fail on it; store tuples."""
        for name, kind in (("corpus", CorpusConfig), ("model", TransformerConfig), ("recipe", TrainRecipe)):
            if not isinstance(getattr(self, name), kind):
                raise ValueError(f"{name} must be a {kind.__name__}; got {type(getattr(self, name)).__name__}")
        object.__setattr__(self, "corpus_seed", as_count("corpus_seed", self.corpus_seed, minimum=0))
        seeds = _checked_tuple("seeds", self.seeds, lambda v: as_count("seeds entry", v, minimum=0))
        groups = _checked_tuple("groups", self.groups, lambda v: as_count("groups entry", v))
        methods = _checked_tuple("methods", self.methods, _checked_method)
        alphas = _checked_tuple("alphas", self.alphas, lambda v: as_non_negative_float("alphas entry", v), unique=False)
        G0 = self.model.n_kv_heads
        bad = [G for G in groups if G0 % G]
        if bad:
            raise ValueError(f"groups {bad} do not divide the model's n_kv_heads={G0}")
        if self.model.vocab_size < self.corpus.vocab_size:
            raise ValueError(f"model vocab_size={self.model.vocab_size} < corpus vocab_size={self.corpus.vocab_size}")
        if self.model.max_seq_len < self.corpus.seq_len:
            raise ValueError(f"model max_seq_len={self.model.max_seq_len} < corpus seq_len={self.corpus.seq_len}")
        for name, value in (("seeds", seeds), ("groups", groups), ("methods", methods), ("alphas", alphas)):
            object.__setattr__(self, name, value)

    def to_dict(self) -> dict:
        return {
            "corpus": asdict(self.corpus),
            "corpus_seed": self.corpus_seed,
            "model": asdict(self.model),
            "recipe": asdict(self.recipe),
            "seeds": list(self.seeds),
            "groups": list(self.groups),
            "methods": list(self.methods),
            "alphas": list(self.alphas),
        }

    def make_corpus(self) -> ToyCorpus:
        return make_corpus(self.corpus_seed, self.corpus)


def _checked_method(method) -> str:
    if method not in CONVERSION_METHODS:
        raise ValueError(f"methods entry must be one of {CONVERSION_METHODS}; got {method!r}")
    return method


def _checked_tuple(name: str, values, check, unique: bool = True) -> tuple:
    """``values`` as a non-empty tuple of ``check(v)``; ValueError naming ``name`` if empty, not a sequence or repeated."""
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise ValueError(f"{name} must be a non-empty tuple; got {values!r}")
    checked = tuple(check(v) for v in values)
    if not checked:
        raise ValueError(f"{name} must be a non-empty tuple; got {values!r}")
    if unique and len(set(checked)) != len(checked):
        raise ValueError(f"{name} must not repeat a value; got {values!r}")
    return checked


SETUP = ExperimentSetup()


# ----------------------------------------------------------------------------- checkpoints


def save_checkpoint(model: TransformerLM, path: str | Path, metadata: dict | None = None) -> None:
    """Write ``model`` to ``path`` as safetensors; its config (and ``metadata``) go in the header as JSON."""
    if not isinstance(getattr(model, "config", None), TransformerConfig):
        raise ValueError(f"model must be a TransformerLM (with a TransformerConfig); got {type(model).__name__}")
    try:
        meta = json.dumps(metadata or {})
    except (TypeError, ValueError) as e:
        raise ValueError(f"metadata must be JSON-serialisable; got {metadata!r} ({e})") from None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = {"config": json.dumps(asdict(model.config)), "metadata": meta}
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(tensors, str(path), metadata=header)


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
    try:
        model.load_state_dict(tensors)
    except RuntimeError as e:
        raise ValueError(f"{path}: its tensors do not fit its configuration {config}: {e}") from None
    return model.to(device).eval(), metadata


def checkpoint_name(seed: int) -> str:
    """File name of the pre-trained checkpoint of ``seed`` (an integer >= 0)."""
    return f"pretrained_seed{as_count('seed', seed, minimum=0)}.safetensors"


def _first_existing(name: str, *folders: str | Path | None) -> Path | None:
    """``folder/name`` for the first folder (None skipped) that holds ``name``; None if none does."""
    for folder in folders:
        if folder is not None and (Path(folder) / name).exists():
            return Path(folder) / name
    return None


def pretrain_and_save(
    seed: int, setup: ExperimentSetup, corpus: ToyCorpus, folder: str | Path | None, progress: bool = True,
) -> TransformerLM:
    """Pre-train the multi-head model of ``seed``; save it (with its held-out metrics) into ``folder`` if given."""
    model, _ = pretrain(setup.model, corpus, setup.recipe, seed=seed, progress=progress)
    if folder is not None:
        final = _rounded(evaluate(model, corpus))
        save_checkpoint(model, Path(folder) / checkpoint_name(seed), metadata={"seed": seed, "final": final})
    return model


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


# ----------------------------------------------------------------------------- the grid


def _rounded(d: dict, digits: int = 5) -> dict:
    return {k: (round(v, digits) if isinstance(v, float) else v) for k, v in d.items()}


def run_point(
    model: TransformerLM,
    corpus: ToyCorpus,
    n_kv_heads: int,
    method: str,
    seed: int,
    max_alpha: float,
    setup: ExperimentSetup = SETUP,
    progress: bool = True,
) -> list[dict]:
    """Convert ``model`` to ``n_kv_heads`` KV heads by ``method``, uptrain to ``max_alpha``; held-out metrics per alpha.

    Evaluations are taken at every alpha of ``setup.alphas`` up to ``max_alpha``
    (finite, >= 0), one dict per alpha in the order of ``setup.alphas``, each
    labelled with exactly that alpha (its ``step`` says how many steps it
    is). Alphas that round to the same number of steps share one evaluation:
    each gets its own copy, with its own alpha. The random initialisation and
    the batch order are seeded with ``seed``.
    """
    max_alpha = as_non_negative_float("max_alpha", max_alpha)
    converted = convert_to_gqa(model, n_kv_heads, method=method, seed=seed)
    alphas = [a for a in setup.alphas if a <= max_alpha + 1e-12]
    result = uptrain(
        converted,
        corpus,
        setup.recipe,
        alpha=max_alpha,
        data_seed=10_000 + seed,
        eval_alphas=alphas,
        progress=progress,
        desc=f"G={n_kv_heads} {method} seed {seed}",
    )
    by_step = {e["step"]: e for e in result.evals}  # one evaluation per distinct step, in step order
    evals = [by_step[alpha_to_steps(a, setup.recipe)] for a in alphas]
    return [_rounded({"alpha": a, **{k: v for k, v in e.items() if k != "alpha"}}) for a, e in zip(alphas, evals)]


def run_grid(
    setup: ExperimentSetup = SETUP,
    data_dir: str | Path | None = DATA_DIR,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> dict:
    """Every (G, method, seed) of ``setup``, uptrained to the largest alpha, evaluated at every alpha.

    G equal to the number of query heads is the multi-head model itself
    (run with "mean", which is then an exact copy, as the MHA baseline).
    """
    corpus = setup.make_corpus()
    runs = []
    jobs = []
    for seed in setup.seeds:
        for G in setup.groups:
            for method in setup.methods:
                if G == setup.model.n_heads and method != "mean":
                    continue
                jobs.append((seed, G, method, max(setup.alphas)))
    start = time.perf_counter()
    models = {}
    for seed, G, method, max_alpha in progress_bar(jobs, "conversion grid", enabled=progress):
        if seed not in models:
            models[seed] = load_or_pretrain(seed, setup, data_dir, cache_dir, corpus, progress)
        evals = run_point(models[seed], corpus, G, method, seed, max_alpha, setup, progress=progress)
        runs.append({"G": G, "method": method, "seed": seed, "evals": evals})
    return {
        "setup": setup.to_dict(),
        "torch": torch.__version__,
        "seconds": round(time.perf_counter() - start, 1),
        "runs": runs,
    }


def load_or_run_grid(
    setup: ExperimentSetup = SETUP,
    data_dir: str | Path | None = DATA_DIR,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> dict:
    """The grid results: ``data_dir/grid.json``, else ``cache_dir/grid.json``, else computed now (and cached)."""
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
    results = run_grid(setup, data_dir, cache_dir, progress)
    if cache_dir is not None:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        (Path(cache_dir) / GRID_FILE).write_text(json.dumps(results))
    return results


def grid_table(results: dict) -> list[dict]:
    """Flatten grid results to rows: G, method, seed, alpha, loss, recall_acc, ..."""
    rows = []
    for run in results["runs"]:
        for e in run["evals"]:
            rows.append({"G": run["G"], "method": run["method"], "seed": run["seed"], **e})
    return rows


def find_run(results: dict, n_kv_heads: int, method: str, seed: int) -> list[dict]:
    """The evaluations (one dict per alpha) of one run of the grid."""
    for run in results["runs"]:
        if (run["G"], run["method"], run["seed"]) == (n_kv_heads, method, seed):
            return run["evals"]
    raise KeyError(f"no run with G={n_kv_heads}, method={method!r}, seed={seed}")


def seed_stats(results: dict, n_kv_heads: int, method: str, alpha: float, metric: str = "recall_acc") -> dict:
    """``metric`` at ``alpha`` over the seeds: values, mean, sample std, min and max."""
    alpha = as_non_negative_float("alpha", alpha)
    values = []
    for run in results["runs"]:
        if (run["G"], run["method"]) == (n_kv_heads, method):
            matches = [e for e in run["evals"] if abs(e["alpha"] - alpha) < 1e-9]
            if not matches:
                raise KeyError(f"no evaluation at alpha={alpha}; have {[e['alpha'] for e in run['evals']]}")
            if metric not in matches[0]:
                raise ValueError(f"metric must be one of {sorted(matches[0])}; got {metric!r}")
            values.append(matches[0][metric])
    if not values:
        raise KeyError(f"no runs with G={n_kv_heads}, method={method!r}")
    t = torch.tensor(values, dtype=torch.float64)
    std = float(t.std()) if len(values) > 1 else 0.0
    return {"values": values, "mean": float(t.mean()), "std": std, "min": min(values), "max": max(values)}


# ----------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None, setup: ExperimentSetup = SETUP) -> None:
    """The command line (see the module docstring); ``setup`` lets tests run it on a tiny setup."""
    parser = argparse.ArgumentParser(prog="python -m gqa_lib.experiments", description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["pretrain", "grid", "all"], help="which experiments to run")
    parser.add_argument("--out", type=Path, default=DATA_DIR, help=f"output folder (default {DATA_DIR})")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (default 1: as fast for a model this small, and the sums "
                             "then add up in one order, so a re-run on the same kind of CPU gives the same bits)")
    parser.add_argument("--overwrite", action="store_true", help="replace result files already in --out")
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error(f"--threads must be >= 1; got {args.threads}")
    out: Path = args.out
    if out.exists() and not out.is_dir():
        parser.error(f"--out {out} is a file, not a folder; give a folder (it is created if missing)")
    would_write = []
    if args.what in ("pretrain", "all"):
        would_write += [out / checkpoint_name(seed) for seed in setup.seeds]
    if args.what in ("grid", "all"):
        would_write.append(out / GRID_FILE)
    existing = [str(p) for p in would_write if p.exists()]
    if existing and not args.overwrite:
        parser.error(f"refusing to overwrite {', '.join(existing)}; pass --overwrite, or --out another folder")
    if args.what == "grid":
        # The grid uptrains the checkpoints in --out: check the ones there now, rather than fail hours later.
        missing = []
        for seed in setup.seeds:
            path = out / checkpoint_name(seed)
            if not path.exists():
                missing.append(path.name)
                continue
            try:
                config = load_checkpoint(path)[0].config
            except ValueError as e:
                parser.error(f"cannot use {path}: {e}")
            if config != setup.model:
                parser.error(f"{path} has model config {config}, the experiments need {setup.model}; "
                             "move it away, or --out another folder")
        if missing:
            print(f"{out} lacks {', '.join(missing)}: pre-training them first (as the 'pretrain' step would); "
                  "each is saved there as soon as it is trained", flush=True)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        parser.error(f"cannot create the --out folder {out}: {e.strerror or e}")
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    corpus = setup.make_corpus()
    if args.what in ("pretrain", "all"):
        for seed in setup.seeds:
            t = time.perf_counter()
            pretrain_and_save(seed, setup, corpus, out)
            final = load_checkpoint(out / checkpoint_name(seed))[1]["final"]
            print(f"pre-trained seed {seed} in {time.perf_counter() - t:.0f} s: {final}", flush=True)
    if args.what in ("grid", "all"):
        # cache_dir=out: a checkpoint still missing is saved into out as soon as it is pre-trained
        results = run_grid(setup, data_dir=out, cache_dir=out)
        (out / GRID_FILE).write_text(json.dumps(results, indent=0))
        print(f"grid: {len(results['runs'])} runs in {results['seconds']:.0f} s -> {out / GRID_FILE}", flush=True)
    print(f"done in {time.perf_counter() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
