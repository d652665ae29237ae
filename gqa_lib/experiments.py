"""The book's conversion and uptraining experiments (chapters 6-8), in miniature.

Re-run everything from scratch (pre-training of the original multi-head
checkpoints, then conversion and uptraining for every G, method and seed)::

    python -m gqa_lib.experiments all                 # writes gqa_lib/data/gqa_toy/
    python -m gqa_lib.experiments pretrain            # only the checkpoints
    python -m gqa_lib.experiments grid                # only the conversion/uptraining grid
    python -m gqa_lib.experiments all --out /tmp/x    # somewhere else

Existing result files are never replaced unless ``--overwrite`` is given.

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

from .convert import convert_to_gqa
from .corpus import CorpusConfig, ToyCorpus, make_corpus
from .model import TransformerConfig, TransformerLM
from .progress import progress as progress_bar
from .train import TrainRecipe, evaluate, pretrain, uptrain

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


SETUP = ExperimentSetup()


# ----------------------------------------------------------------------------- checkpoints


def save_checkpoint(model: TransformerLM, path: str | Path, metadata: dict | None = None) -> None:
    """Write ``model`` to ``path`` as safetensors; its config (and ``metadata``) go in the header as JSON."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = {"config": json.dumps(asdict(model.config)), "metadata": json.dumps(metadata or {})}
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(tensors, str(path), metadata=header)


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[TransformerLM, dict]:
    """Read a checkpoint written by :func:`save_checkpoint`: (model in eval mode, metadata dict)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        header = f.metadata()
    model = TransformerLM(TransformerConfig(**json.loads(header["config"])))
    model.load_state_dict(load_file(str(path)))
    return model.to(device).eval(), json.loads(header.get("metadata", "{}"))


def checkpoint_name(seed: int) -> str:
    """File name of the pre-trained checkpoint of ``seed``."""
    return f"pretrained_seed{seed}.safetensors"


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

    Evaluations are taken at every alpha of ``setup.alphas`` up to ``max_alpha``.
    The random initialisation and the batch order are seeded with ``seed``.
    """
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
    return [_rounded({"alpha": a, **{k: v for k, v in e.items() if k != "alpha"}}) for a, e in zip(alphas, result.evals)]


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
        results = json.loads(path.read_text())
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
    values = []
    for run in results["runs"]:
        if (run["G"], run["method"]) == (n_kv_heads, method):
            matches = [e for e in run["evals"] if abs(e["alpha"] - alpha) < 1e-9]
            if not matches:
                raise KeyError(f"no evaluation at alpha={alpha}; have {[e['alpha'] for e in run['evals']]}")
            values.append(matches[0][metric])
    if not values:
        raise KeyError(f"no runs with G={n_kv_heads}, method={method!r}")
    t = torch.tensor(values, dtype=torch.float64)
    std = float(t.std()) if len(values) > 1 else 0.0
    return {"values": values, "mean": float(t.mean()), "std": std, "min": min(values), "max": max(values)}


# ----------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> None:
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
    torch.set_num_threads(args.threads)
    out: Path = args.out
    would_write = []
    if args.what in ("pretrain", "all"):
        would_write += [out / checkpoint_name(seed) for seed in SETUP.seeds]
    if args.what in ("grid", "all"):
        would_write.append(out / GRID_FILE)
    existing = [str(p) for p in would_write if p.exists()]
    if existing and not args.overwrite:
        parser.error(f"refusing to overwrite {', '.join(existing)}; pass --overwrite, or --out another folder")
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    corpus = SETUP.make_corpus()
    if args.what in ("pretrain", "all"):
        for seed in SETUP.seeds:
            t = time.perf_counter()
            pretrain_and_save(seed, SETUP, corpus, out)
            final = load_checkpoint(out / checkpoint_name(seed))[1]["final"]
            print(f"pre-trained seed {seed} in {time.perf_counter() - t:.0f} s: {final}", flush=True)
    if args.what in ("grid", "all"):
        results = run_grid(SETUP, data_dir=out, cache_dir=None)
        (out / GRID_FILE).write_text(json.dumps(results, indent=0))
        print(f"grid: {len(results['runs'])} runs in {results['seconds']:.0f} s -> {out / GRID_FILE}", flush=True)
    print(f"done in {time.perf_counter() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
