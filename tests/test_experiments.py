"""The experiment runner (gqa_lib.recipe.experiments) and its figures (gqa_lib.viz.quality_figures), on a tiny setup.

The tiny setup runs every kind of job (pre-training, uptraining with both
groupings, from-scratch baselines) in seconds. The committed results in
``DATA_DIR`` are checked by the tests at the end, which are skipped while
``DATA_DIR/grid.json`` does not exist (the results are being recomputed).
"""

from __future__ import annotations

import json
import pickle
import shutil

import pytest
import torch
from safetensors import safe_open

from gqa_lib.core.model import TransformerConfig, TransformerLM
from gqa_lib.recipe import experiments
from gqa_lib.recipe.convert import convert_to_gqa
from gqa_lib.recipe.corpus import CorpusConfig
from gqa_lib.recipe.experiments import (
    DATA_DIR,
    SETUP,
    ExperimentSetup,
    Job,
    assemble,
    calibration_tokens,
    checkpoint_metadata,
    checkpoint_name,
    find_baseline,
    find_run,
    grid_table,
    jobs_for,
    load_checkpoint,
    load_or_pretrain,
    load_or_run_grid,
    main,
    paired_differences,
    pretrain_and_save,
    run_point,
    run_record,
    save_checkpoint,
    seed_stats,
    train_from_scratch,
    work_through,
)
from gqa_lib.recipe.train import TrainRecipe, TrainResult, evaluate
from gqa_lib.viz import quality_figures

CORPUS = CorpusConfig(seq_len=16, n_keys=4, n_values=2, n_pairs=3, min_pairs=1, n_words=8, successors=2,
                      n_train=64, n_heldout=16)
TINY = ExperimentSetup(
    corpus=CORPUS,
    model=TransformerConfig(vocab_size=CORPUS.vocab_size, max_seq_len=16, d_model=8, n_layers=1, n_heads=4,
                            n_kv_heads=4, d_ff=16),
    recipe=TrainRecipe(batch_size=4, warmup_steps=2, pretrain_steps=20),
    seeds=(0, 1),
    groups=(1, 2, 4),
    methods=("mean", "first"),
    alphas=(0.0, 0.1, 0.2),
    n_calibration=8,
    scratch_groups=(1,),
    scratch_seeds=(0,),
    scratch_alpha=0.2,  # 4 extra steps, one of the alphas (the baselines figure compares at it)
)
GRID_NAMES = sorted(j.name for j in jobs_for("grid", TINY))
SHIPPED = (DATA_DIR / "grid.json").exists()
NOT_SHIPPED_YET = "DATA_DIR/grid.json does not exist yet: the committed results are being recomputed"


@pytest.fixture
def keep_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """The tiny results computed by the library (one thread, as the command line runs by default)."""
    cache = tmp_path_factory.mktemp("cache")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        results = load_or_run_grid(TINY, data_dir=None, cache_dir=cache, progress=False)
    finally:
        torch.set_num_threads(n)
    return cache, results


@pytest.fixture(scope="module")
def cli_folder(tmp_path_factory):
    """The tiny results computed by ``main(["all", "--jobs", "1"])``: a complete output folder."""
    out = tmp_path_factory.mktemp("cli") / "out"
    n = torch.get_num_threads()
    try:
        main(["all", "--out", str(out), "--jobs", "1"], setup=TINY)
    finally:
        torch.set_num_threads(n)
    return out


def _copy(folder, tmp_path):
    target = tmp_path / "copy"
    shutil.copytree(folder, target)
    return target


def _without_timing(results: dict) -> dict:
    """``results`` as JSON holds it, without what depends on the machine's speed or the worker's thread count."""
    results = json.loads(json.dumps(results))
    drop = {"seconds", "threads"}
    clean = lambda entries: [{k: v for k, v in e.items() if k not in drop} for e in entries]  # noqa: E731
    return {**{k: v for k, v in results.items() if k != "run_seconds"},
            "pretraining": clean(results["pretraining"]), "runs": clean(results["runs"]),
            "baselines": clean(results["baselines"])}


def _record_jobs(monkeypatch) -> list[str]:
    """Make every job run in this process (--jobs 1) log its name into the returned list."""
    ran, original = [], experiments.run_job

    def recording(job, *args, **kwargs):
        ran.append(job.name)
        return original(job, *args, **kwargs)

    monkeypatch.setattr(experiments, "run_job", recording)
    return ran


def _files(folder) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _state(path) -> dict:
    return {k: v.clone() for k, v in load_checkpoint(path)[0].state_dict().items()}


# --------------------------------------------------------------------------------------------
# The grid: contents, reload, lookups
# --------------------------------------------------------------------------------------------


def test_grid_has_every_run_every_alpha_and_every_baseline(grid):
    _, results = grid
    keys = sorted((r["G"], r["method"], r["grouping"], r["seed"]) for r in results["runs"])
    # G = H (the multi-head model itself) is run once per seed ("mean", "contiguous": an exact copy)
    # G = 1 is one group of every head: only contiguous (a similar grouping would be the same)
    expected = sorted([(g, m, gp, s) for s in (0, 1) for g in (1, 2) for m in ("mean", "first")
                       for gp in ("contiguous", "similar") if not (g == 1 and gp == "similar")]
                      + [(4, "mean", "contiguous", s) for s in (0, 1)])
    assert keys == expected
    for run in results["runs"]:
        assert [e["alpha"] for e in run["evals"]] == [0.0, 0.1, 0.2]
        assert [e["step"] for e in run["evals"]] == [0, 2, 4]
        assert run["trace"]["bin"] == 1 and len(run["trace"]["loss_mean"]) == 4  # 4 uptraining steps
        if run["grouping"] == "similar":
            assert len(run["head_order"]) == 1 and sorted(run["head_order"][0]) == [0, 1, 2, 3]  # one layer
        else:
            assert run["head_order"] is None
    rows = grid_table(results)
    assert len(rows) == len(expected) * 3
    assert {"G", "method", "grouping", "seed", "alpha", "loss", "recall_acc"} <= set(rows[0])
    assert sorted((b["G"], b["budget"], b["seed"]) for b in results["baselines"]) == [(1, "extra", 0), (1, "matched", 0)]
    assert [p["seed"] for p in results["pretraining"]] == [0, 1]
    assert json.loads(json.dumps(results["setup"])) == json.loads(json.dumps(TINY.to_dict()))
    assert set(results["run_seconds"]) == {"pretrain", "grid", "baselines"}


def test_grid_alpha0_equals_converting_the_saved_checkpoint_now(grid):
    cache, results = grid
    corpus = TINY.make_corpus()
    model = load_or_pretrain(1, TINY, data_dir=None, cache_dir=cache, corpus=corpus, progress=False)
    calibration = calibration_tokens(corpus, TINY)
    assert torch.equal(calibration, corpus.split("train")[0][:8])
    for G, method, grouping in [(1, "mean", "contiguous"), (2, "first", "contiguous"), (4, "mean", "contiguous"),
                                (2, "mean", "similar"), (2, "first", "similar")]:
        converted = convert_to_gqa(model, G, method, seed=1, grouping=grouping,
                                   calibration=calibration if grouping == "similar" else None)
        live = evaluate(converted, corpus)
        stored = find_run(results, G, method, 1, grouping=grouping)[0]
        assert stored["loss"] == pytest.approx(live["loss"], abs=1e-4)
        assert stored["recall_acc"] == pytest.approx(live["recall_acc"], abs=1e-4)
        run = run_record(results, G, method, 1, grouping)
        assert run["evals"] == find_run(results, G, method, 1, grouping)
        assert (G, method, grouping, 1) == (run["G"], run["method"], run["grouping"], run["seed"])
        if grouping == "similar":
            assert run["head_order"] == [converted.layers[0].self_attn.head_order]


def test_grid_is_cached_and_reloaded_and_a_different_setup_is_refused(grid):
    cache, results = grid
    assert json.loads((cache / "grid.json").read_text())["runs"] == results["runs"]
    again = load_or_run_grid(TINY, data_dir=None, cache_dir=cache, progress=False)
    assert again == json.loads(json.dumps(results))  # read back: tuples (the AdamW betas) come back as lists
    for change in ({"alphas": (0.0, 0.2)}, {"groupings": ("contiguous",)}, {"n_calibration": 16},
                   {"scratch_alpha": 0.1}):
        other = ExperimentSetup(**{**TINY.__dict__, **change})
        with pytest.raises(ValueError, match="different setup"):
            load_or_run_grid(other, data_dir=cache, cache_dir=None, progress=False)


def test_checkpoint_with_another_config_is_refused(grid):
    cache, _ = grid
    bigger = ExperimentSetup(**{**TINY.__dict__, "model": TransformerConfig(**{**TINY.model.__dict__, "d_model": 16})})
    with pytest.raises(ValueError, match="expected"):
        load_or_pretrain(0, bigger, data_dir=cache, cache_dir=None, progress=False)


def test_seed_stats_by_hand(grid):
    _, results = grid
    values = [find_run(results, 2, "first", s)[1]["loss"] for s in (0, 1)]
    stats = seed_stats(results, 2, "first", 0.1, metric="loss")
    assert stats["values"] == values
    assert stats["mean"] == pytest.approx(sum(values) / 2)
    assert stats["std"] == pytest.approx(abs(values[0] - values[1]) / 2**0.5)
    assert (stats["min"], stats["max"]) == (min(values), max(values))
    similar = [find_run(results, 2, "first", s, grouping="similar")[1]["loss"] for s in (0, 1)]
    assert seed_stats(results, 2, "first", 0.1, metric="loss", grouping="similar")["values"] == similar
    with pytest.raises(KeyError, match="G=3"):
        seed_stats(results, 3, "mean", 0.0)
    with pytest.raises(KeyError, match="alpha=0.3"):
        seed_stats(results, 2, "mean", 0.3)
    with pytest.raises(KeyError, match="grouping='similar'"):
        seed_stats(results, 4, "mean", 0.0, grouping="similar")  # G = H is only run contiguous
    with pytest.raises(KeyError, match="grouping='similar'"):
        find_run(results, 4, "mean", 0, grouping="similar")
    with pytest.raises(KeyError, match="seed=2"):
        run_record(results, 2, "mean", 2)


def test_paired_differences_by_hand(grid):
    _, results = grid
    a, b = ("mean", "similar"), ("first", "contiguous")
    diffs = [find_run(results, 2, "mean", s, "similar")[2]["loss"] - find_run(results, 2, "first", s)[2]["loss"]
             for s in (0, 1)]
    got = paired_differences(results, 2, 0.2, a, b, metric="loss")
    assert got["values"] == diffs
    assert got["mean"] == pytest.approx(sum(diffs) / 2)
    assert got["std"] == pytest.approx(abs(diffs[0] - diffs[1]) / 2**0.5)
    assert (got["min"], got["max"]) == (min(diffs), max(diffs))
    assert got["n"] == 2
    assert got["wins"] == sum(d > 0 for d in diffs) and got["losses"] == sum(d < 0 for d in diffs)
    # a made-up grid with a win, a loss and a tie, given out of seed order
    acc = {("mean", "similar"): [0.5, 0.7, 0.4], ("mean", "contiguous"): [0.4, 0.7, 0.6]}
    made_up = {"runs": [{"G": 2, "method": m, "grouping": gp, "seed": s, "evals": [{"alpha": 0.0, "recall_acc": v}]}
                        for (m, gp), vs in acc.items() for s, v in reversed(list(enumerate(vs)))]}
    got = paired_differences(made_up, 2, 0.0, ("mean", "similar"), ("mean", "contiguous"))
    assert got["values"] == pytest.approx([0.1, 0.0, -0.2])
    assert (got["wins"], got["losses"], got["n"]) == (1, 1, 3)
    assert got["mean"] == pytest.approx(-0.1 / 3)
    assert got["std"] == pytest.approx(torch.tensor([0.1, 0.0, -0.2], dtype=torch.float64).std().item())
    with pytest.raises(KeyError, match="random"):
        paired_differences(made_up, 2, 0.0, ("random", "contiguous"), ("mean", "contiguous"))


def test_find_baseline_and_its_step_counts(grid):
    _, results = grid
    matched = find_baseline(results, 1, "matched", 0)
    extra = find_baseline(results, 1, "extra", 0)
    assert (matched["G"], matched["budget"], matched["seed"]) == (1, "matched", 0)
    assert matched["steps"] == 24 and extra["steps"] == 4  # (1 + alpha) P and alpha P, P = 20, alpha = 0.2
    assert [e["step"] for e in matched["evals"]] == [5, 10, 15, 20, 24]
    assert [e["step"] for e in extra["evals"]] == [2, 4]
    assert len(matched["trace"]["loss_mean"]) == 24 and len(extra["trace"]["grad_norm_max"]) == 4
    with pytest.raises(KeyError, match="G=2"):
        find_baseline(results, 2, "matched", 0)
    with pytest.raises(KeyError, match="budget='other'"):
        find_baseline(results, 1, "other", 0)
    with pytest.raises(KeyError, match="seed=1"):
        find_baseline(results, 1, "extra", 1)


# --------------------------------------------------------------------------------------------
# Single runs: run_point, train_from_scratch, the trace
# --------------------------------------------------------------------------------------------


def test_run_point_labels_each_alpha_as_asked_even_unsorted_or_on_the_same_step():
    # pretrain_steps=20: alpha 0.1 and 0.12 both round to 2 steps; the order is the caller's, not sorted
    setup = ExperimentSetup(**{**TINY.__dict__, "alphas": (0.2, 0.0, 0.12, 0.1)})
    corpus = setup.make_corpus()
    torch.manual_seed(0)
    model = TransformerLM(setup.model)
    result = run_point(model, corpus, 2, "mean", seed=0, max_alpha=0.2, setup=setup, progress=False)
    assert set(result) == {"evals", "trace", "head_order"}
    evals = result["evals"]
    assert [e["alpha"] for e in evals] == [0.2, 0.0, 0.12, 0.1]
    assert [e["step"] for e in evals] == [4, 0, 2, 2]
    assert {k: v for k, v in evals[2].items() if k != "alpha"} == {k: v for k, v in evals[3].items() if k != "alpha"}
    live = evaluate(convert_to_gqa(model, 2, "mean", seed=0), corpus)
    assert evals[1]["loss"] == pytest.approx(live["loss"], abs=1e-4)  # alpha 0 is the converted model itself
    assert evals[0]["loss"] != evals[1]["loss"]
    assert result["head_order"] is None and len(result["trace"]["loss_mean"]) == 4
    # alphas above max_alpha are left out, the others keep their order
    short = run_point(model, corpus, 2, "mean", seed=0, max_alpha=0.12, setup=setup, progress=False)
    assert [e["alpha"] for e in short["evals"]] == [0.0, 0.12, 0.1]
    assert len(short["trace"]["loss_mean"]) == 2
    similar = run_point(model, corpus, 2, "first", seed=0, max_alpha=0.0, setup=setup, grouping="similar", progress=False)
    assert len(similar["head_order"]) == 1 and sorted(similar["head_order"][0]) == [0, 1, 2, 3]
    assert similar["trace"]["loss_mean"] == []  # no uptraining step
    for bad in (float("nan"), -0.1, None):
        with pytest.raises(ValueError, match="max_alpha"):
            run_point(model, corpus, 2, "mean", seed=0, max_alpha=bad, setup=setup, progress=False)


def test_train_from_scratch_step_counts_and_pairing_with_pretraining(grid, keep_threads):
    cache, _ = grid
    torch.set_num_threads(1)  # as the fixture
    corpus = TINY.make_corpus()
    extra = train_from_scratch(2, "extra", 0, TINY, corpus, progress=False)
    assert extra["steps"] == 4 and [e["step"] for e in extra["evals"]] == [2, 4]  # alpha P
    assert len(extra["trace"]["loss_mean"]) == 4
    # G = H from scratch with the matched budget: (1 + alpha) P steps, the first P of them are pre-training itself
    matched = train_from_scratch(4, "matched", 0, TINY, corpus, progress=False)
    assert matched["steps"] == 24 and [e["step"] for e in matched["evals"]] == [5, 10, 15, 20, 24]
    pretraining = checkpoint_metadata(cache / checkpoint_name(0))
    assert [e for e in pretraining["evals"] if e["step"] > 0] == matched["evals"][:4]
    assert pretraining["trace"]["loss_mean"] == matched["trace"]["loss_mean"][:20]
    with pytest.raises(ValueError, match="budget"):
        train_from_scratch(1, "double", 0, TINY, corpus, progress=False)
    with pytest.raises(ValueError, match="n_kv_heads"):
        train_from_scratch(3, "extra", 0, TINY, corpus, progress=False)


def test_trace_bins_keep_the_mean_and_a_one_step_spike():
    n = 450  # 200 points at most: bins of ceil(450 / 200) = 3 steps, the last one full
    losses = [1.0 + 0.001 * i for i in range(n)]
    norms = [0.5] * n
    losses[301], norms[301] = 9.0, 40.0  # a one-step spike in bin 100
    trace = experiments._trace(TrainResult(train_losses=losses, grad_norms=norms))
    assert trace["bin"] == 3
    assert len(trace["loss_mean"]) == len(trace["loss_max"]) == len(trace["grad_norm_max"]) == 150
    assert trace["loss_max"][100] == 9.0 and trace["grad_norm_max"][100] == 40.0
    assert trace["loss_mean"][100] == round((losses[300] + 9.0 + losses[302]) / 3, 4)
    assert trace["loss_mean"][0] == round((1.0 + 1.001 + 1.002) / 3, 4)
    assert trace["grad_norm_max"][99] == 0.5 and trace["loss_max"][99] == round(losses[299], 4)
    # 401 steps: bins of 3, the last holding the two remaining steps
    trace = experiments._trace(TrainResult(train_losses=[1.0] * 400 + [2.0], grad_norms=[1.0] * 401))
    assert trace["bin"] == 3 and len(trace["loss_mean"]) == 134
    assert trace["loss_mean"][-1] == 1.5 and trace["loss_max"][-1] == 2.0
    # at most 200 steps: one bin per step; a smaller number of points
    short = experiments._trace(TrainResult(train_losses=[3.0, 1.0], grad_norms=[0.1, 0.2]))
    assert short == {"bin": 1, "loss_mean": [3.0, 1.0], "loss_max": [3.0, 1.0], "grad_norm_max": [0.1, 0.2]}
    few = experiments._trace(TrainResult(train_losses=[1.0, 2.0, 3.0, 4.0, 5.0], grad_norms=[1.0] * 5), points=2)
    assert few["bin"] == 3 and few["loss_mean"] == [2.0, 4.5] and few["loss_max"] == [3.0, 5.0]
    assert experiments._trace(TrainResult())["loss_mean"] == []


# --------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------


def test_pretrained_checkpoint_is_float16_and_the_returned_model_equals_the_stored_one(tmp_path, grid, keep_threads):
    cache, _ = grid
    torch.set_num_threads(1)
    corpus = TINY.make_corpus()
    model = pretrain_and_save(0, TINY, corpus, tmp_path, progress=False)
    path = tmp_path / checkpoint_name(0)
    with safe_open(str(path), framework="pt") as f:
        stored = {k: f.get_tensor(k) for k in f.keys()}
    assert {t.dtype for t in stored.values()} == {torch.float16}
    loaded, meta = load_checkpoint(path)
    assert loaded.config == TINY.model and meta["seed"] == 0
    assert next(loaded.parameters()).dtype == torch.float32
    ours, theirs = model.state_dict(), loaded.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)  # the weights were rounded before saving: exact
    assert all(torch.equal(ours[k].half().float(), ours[k]) for k in ours)
    assert meta["final"] == {k: (round(v, 5) if isinstance(v, float) else v) for k, v in evaluate(loaded, corpus).items()}
    assert [e["step"] for e in meta["evals"]] == [0, 5, 10, 15, 20]
    assert set(meta["trace"]) == {"bin", "loss_mean", "loss_max", "grad_norm_max"}
    # seeded: the same weights as the fixture's checkpoint of seed 0
    fixture = _state(cache / checkpoint_name(0))
    assert all(torch.equal(fixture[k], theirs[k]) for k in theirs)
    # no folder: nothing saved, same model
    again = pretrain_and_save(0, TINY, corpus, None, progress=False)
    assert all(torch.equal(again.state_dict()[k], ours[k]) for k in ours)


@pytest.mark.parametrize("tie", [True, False])
def test_tied_head_is_stored_once_and_restored_tied(tmp_path, tie):
    config = TransformerConfig(**{**TINY.model.__dict__, "tie_word_embeddings": tie})
    torch.manual_seed(0)
    model = TransformerLM(config)
    if not tie:
        with torch.no_grad():
            model.lm_head.weight.add_(1.0)
    save_checkpoint(model, tmp_path / "m.safetensors", metadata={"note": "x"})
    with safe_open(str(tmp_path / "m.safetensors"), framework="pt") as f:
        keys = set(f.keys())
    assert ("lm_head.weight" in keys) is not tie
    assert "model.embed_tokens.weight" in keys
    loaded, meta = load_checkpoint(tmp_path / "m.safetensors")
    assert meta == {"note": "x"}
    assert (loaded.lm_head.weight is loaded.model.embed_tokens.weight) is tie
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)
    if tie:  # still one matrix: training the embedding trains the head
        with torch.no_grad():
            loaded.model.embed_tokens.weight[0, 0] = 123.0
        assert loaded.lm_head.weight[0, 0] == 123.0


def test_load_checkpoint_of_a_foreign_or_broken_file_names_it(tmp_path):
    from safetensors.torch import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))  # a safetensors file without gqa_lib's metadata
    with pytest.raises(ValueError, match="foreign.safetensors.*'config'"):
        load_checkpoint(foreign)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"this is not a safetensors file")
    with pytest.raises(ValueError, match="junk.safetensors.*not a readable safetensors"):
        load_checkpoint(junk)
    wrong = tmp_path / "wrong.safetensors"
    bigger = TransformerConfig(**{**TINY.model.__dict__, "d_model": 16})
    save_file({"w": torch.zeros(2)}, str(wrong), metadata={"config": json.dumps(bigger.__dict__)})
    with pytest.raises(ValueError, match="wrong.safetensors.*do not fit"):
        load_checkpoint(wrong)
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        load_checkpoint(tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match="junk.safetensors"):
        checkpoint_metadata(junk)


def test_save_checkpoint_refuses_metadata_json_cannot_hold_and_a_bad_dtype(tmp_path):
    with pytest.raises(ValueError, match="metadata"):
        save_checkpoint(TransformerLM(TINY.model), tmp_path / "x.safetensors", metadata={"t": torch.zeros(1)})
    with pytest.raises(ValueError, match="dtype"):
        save_checkpoint(TransformerLM(TINY.model), tmp_path / "x.safetensors", dtype=torch.int8)
    with pytest.raises(ValueError, match="TransformerLM"):
        save_checkpoint(torch.nn.Linear(2, 2), tmp_path / "x.safetensors")
    assert not list(tmp_path.iterdir())


# --------------------------------------------------------------------------------------------
# The setup
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change, match",
    [
        ({"groups": (1, 3)}, "groups"),
        ({"groups": (1, 1)}, "groups"),
        ({"groups": (0,)}, "groups"),
        ({"methods": ("median",)}, "methods"),
        ({"groupings": ("nearest",)}, "groupings"),
        ({"groupings": ()}, "groupings"),
        ({"alphas": ()}, "alphas"),
        ({"alphas": (0.0, float("nan"))}, "alphas"),
        ({"seeds": (0, 0)}, "seeds"),
        ({"seeds": (1.0,)}, "seeds"),
        ({"corpus_seed": -1}, "corpus_seed"),
        ({"recipe": {"batch_size": 4}}, "recipe"),
        ({"model": TransformerConfig(vocab_size=8, max_seq_len=16, d_model=8, n_heads=4, n_kv_heads=4)}, "vocab_size"),
        ({"model": TransformerConfig(vocab_size=CORPUS.vocab_size, max_seq_len=16, d_model=8, n_heads=4, n_kv_heads=2)},
         "n_kv_heads"),
        ({"n_calibration": 65}, "n_calibration"),
        ({"n_calibration": 0}, "n_calibration"),
        ({"scratch_groups": (3,)}, "scratch_groups"),
        ({"scratch_groups": (1, 1)}, "scratch_groups"),
        ({"scratch_seeds": (0, 0)}, "scratch_seeds"),
        ({"scratch_seeds": (-1,)}, "scratch_seeds"),
        ({"scratch_alpha": -0.1}, "scratch_alpha"),
        ({"scratch_alpha": float("nan")}, "scratch_alpha"),
    ],
)
def test_experiment_setup_refuses_bad_fields_naming_them(change, match):
    with pytest.raises(ValueError, match=match):
        ExperimentSetup(**{**TINY.__dict__, **change})


def test_experiment_setup_stores_tuples_and_allows_no_baselines():
    setup = ExperimentSetup(**{**TINY.__dict__, "seeds": [0, 1], "alphas": [0.0, 0.1, 0.2],
                               "groupings": ["contiguous", "similar"], "scratch_groups": [1], "scratch_seeds": [0]})
    assert setup.seeds == (0, 1) and setup.alphas == (0.0, 0.1, 0.2) and setup.groupings == ("contiguous", "similar")
    assert setup == TINY
    none = ExperimentSetup(**{**TINY.__dict__, "scratch_groups": (), "scratch_seeds": ()})
    assert jobs_for("baselines", none) == []
    assert json.loads(json.dumps(none.to_dict()))["scratch_groups"] == []


def test_jobs_for_each_step():
    pretrain, grid, baselines = jobs_for("pretrain", TINY), jobs_for("grid", TINY), jobs_for("baselines", TINY)
    assert [j.file for j in pretrain] == ["pretrained_seed0.safetensors", "pretrained_seed1.safetensors"]
    assert len(grid) == 2 * (2 * 2 + 2 + 1)  # seeds x (G = 2: methods x groupings, G = 1: methods, G = H: one)
    assert not [j for j in grid if j.G == 1 and j.grouping == "similar"]  # one group: nothing to choose
    assert Job("uptrain", 1, 2, "first", "similar") in grid
    assert Job("uptrain", 0, 2, "first", "similar").file == "runs/uptrain_G2_first_similar_seed0.json"
    assert Job("uptrain", 0, 2, "first", "similar").needs == "pretrained_seed0.safetensors"
    assert [j.name for j in baselines] == ["scratch_G1_matched_seed0", "scratch_G1_extra_seed0"]
    assert all(j.needs is None for j in pretrain + baselines)
    assert jobs_for("all", TINY) == pretrain + baselines + grid
    with_random = ExperimentSetup(**{**TINY.__dict__, "methods": ("mean", "random")})
    assert not [j for j in jobs_for("grid", with_random) if j.method == "random" and j.grouping == "similar"]
    with pytest.raises(ValueError, match="step"):
        jobs_for("everything", TINY)


# --------------------------------------------------------------------------------------------
# work_through, assemble, the command line
# --------------------------------------------------------------------------------------------


def test_work_through_refuses_jobs_whose_checkpoint_is_missing_and_made_by_no_job(tmp_path):
    with pytest.raises(ValueError, match="pretrained_seed0.safetensors, pretrained_seed1.safetensors"):
        work_through(jobs_for("grid", TINY), TINY, tmp_path, progress=False)
    only_seed1 = [j for j in jobs_for("grid", TINY) if j.seed == 1]
    with pytest.raises(ValueError, match="pretrained_seed1.safetensors.*pretrain step"):
        work_through(jobs_for("pretrain", TINY)[:1] + only_seed1, TINY, tmp_path, progress=False)
    assert not list(tmp_path.iterdir())  # refused before running anything


def test_work_through_runs_only_missing_jobs_and_assemble_names_missing_runs(tmp_path, grid, monkeypatch, keep_threads):
    cache, results = grid
    torch.set_num_threads(1)
    folder = _copy(cache, tmp_path)
    (folder / "grid.json").unlink()
    (folder / "runs/uptrain_G2_first_similar_seed1.json").unlink()
    with pytest.raises(ValueError, match="1 runs are not finished.*uptrain_G2_first_similar_seed1"):
        assemble(TINY, folder)
    ran = _record_jobs(monkeypatch)
    assert work_through(jobs_for("all", TINY), TINY, folder, progress=False) == 1
    assert ran == ["uptrain_G2_first_similar_seed1"]
    assert _without_timing(assemble(TINY, folder)) == _without_timing(results)
    assert work_through(jobs_for("all", TINY), TINY, folder, progress=False) == 0


def test_cli_all_matches_the_library(cli_folder, grid):
    _, results = grid
    written = json.loads((cli_folder / "grid.json").read_text())
    assert _without_timing(written) == _without_timing(results)
    assert all(r["threads"] == 1 for r in written["runs"] + written["baselines"])
    assert not list((cli_folder / "runs" / ".claims").iterdir())  # every claim released


def test_cli_resumes_only_the_missing_run(cli_folder, tmp_path, monkeypatch, keep_threads):
    folder = _copy(cli_folder, tmp_path)
    before = json.loads((folder / "grid.json").read_text())
    deleted = "runs/uptrain_G2_mean_similar_seed0.json"
    (folder / "grid.json").unlink()
    (folder / deleted).unlink()
    kept = {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}
    ran = _record_jobs(monkeypatch)
    main(["all", "--out", str(folder)], setup=TINY)
    assert ran == ["uptrain_G2_mean_similar_seed0"]
    after = json.loads((folder / "grid.json").read_text())
    assert _without_timing(after) == _without_timing(before)
    assert json.loads((folder / deleted).read_text())["evals"] == find_run(before, 2, "mean", 0, "similar")
    assert all(p.stat().st_mtime_ns == t for p, t in kept.items())  # nothing else rewritten


def test_cli_with_two_worker_processes_gives_the_same_results(cli_folder, tmp_path, keep_threads):
    out = tmp_path / "two"
    main(["all", "--out", str(out), "--jobs", "2"], setup=TINY)
    two = json.loads((out / "grid.json").read_text())
    one = json.loads((cli_folder / "grid.json").read_text())
    assert _without_timing(two) == _without_timing(one)  # seeded runs: the same evals, traces and head orders
    assert sorted(p.name for p in (out / "runs").glob("*.json")) == sorted(p.name for p in (cli_folder / "runs").glob("*.json"))
    assert not list((out / "runs" / ".claims").iterdir())


@pytest.mark.parametrize("step", ["pretrain", "grid", "baselines", "all"])
def test_cli_refuses_a_folder_whose_grid_json_exists(cli_folder, tmp_path, capsys, step):
    folder = _copy(cli_folder, tmp_path)
    kept = _files(folder)
    with pytest.raises(SystemExit) as info:
        main([step, "--out", str(folder)], setup=TINY)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "grid.json exists" in err and "--overwrite" in err
    assert _files(folder) == kept  # nothing touched


def test_cli_refuses_any_existing_grid_json_without_overwrite(tmp_path, capsys):
    (tmp_path / "grid.json").write_text("{}")
    with pytest.raises(SystemExit):
        main(["grid", "--out", str(tmp_path)])
    assert "--overwrite" in capsys.readouterr().err
    assert (tmp_path / "grid.json").read_text() == "{}"


def test_cli_overwrite_recomputes_only_the_chosen_step(cli_folder, tmp_path, monkeypatch, keep_threads):
    folder = _copy(cli_folder, tmp_path)
    before = json.loads((folder / "grid.json").read_text())
    kept = _files(folder)
    seen = {}
    ran, original = [], experiments.run_job

    def recording(job, setup, corpus, out, progress=True):
        if not ran:  # what --overwrite left before the first run
            seen["grid.json"] = (out / "grid.json").exists()
            seen["files"] = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
        ran.append(job.name)
        return original(job, setup, corpus, out, progress)

    monkeypatch.setattr(experiments, "run_job", recording)
    main(["grid", "--out", str(folder), "--overwrite"], setup=TINY)
    assert sorted(ran) == GRID_NAMES  # every grid run again, no pre-training, no baseline
    assert seen["grid.json"] is False
    assert not {f for f in seen["files"] if f.startswith("runs/uptrain_")}  # the grid's files were deleted first
    now = _files(folder)
    untouched = [n for n in kept if n.endswith(".safetensors") or n.startswith("runs/scratch_")]
    assert len(untouched) == 4 and all(now[n] == kept[n] for n in untouched)
    assert _without_timing(json.loads((folder / "grid.json").read_text())) == _without_timing(before)
    # pretrain --overwrite: new checkpoints, the same weights (seeded); the uptraining runs of the old
    # checkpoints go too (they would describe other weights), the baselines stay
    ran.clear()
    states = {s: _state(folder / checkpoint_name(s)) for s in (0, 1)}
    main(["pretrain", "--out", str(folder), "--overwrite"], setup=TINY)
    assert ran == ["pretrained_seed0", "pretrained_seed1"]
    for s in (0, 1):
        new = _state(folder / checkpoint_name(s))
        assert all(torch.equal(new[k], v) for k, v in states[s].items())
    assert not (folder / "grid.json").exists() and not list((folder / "runs").glob("uptrain_*"))
    assert all((folder / n).exists() for n in untouched if n.startswith("runs/scratch_"))
    ran.clear()
    main(["grid", "--out", str(folder)], setup=TINY)  # resumes: only the deleted runs, then gathers
    assert sorted(ran) == GRID_NAMES
    assert _without_timing(json.loads((folder / "grid.json").read_text())) == _without_timing(before)


def test_cli_grid_into_an_empty_folder_saves_each_checkpoint_as_soon_as_it_is_trained(
    tmp_path, capsys, monkeypatch, keep_threads
):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(experiments, "run_point", interrupted)  # interrupted at the first uptraining run
    with pytest.raises(KeyboardInterrupt):
        main(["grid", "--out", str(tmp_path)], setup=TINY)
    out = capsys.readouterr().out
    assert f"0 of {2 + len(GRID_NAMES)} runs already in {tmp_path}" in out  # it said what it would run
    for seed in (0, 1):  # the checkpoints are not lost
        model, meta = load_checkpoint(tmp_path / checkpoint_name(seed))
        assert model.config == TINY.model and meta["seed"] == seed
    assert not (tmp_path / "grid.json").exists()
    assert not list((tmp_path / "runs").glob("*.json"))
    assert not list((tmp_path / "runs" / ".claims").iterdir())  # the interrupted run's claim was released


def test_cli_grid_keeps_existing_checkpoints_then_baselines_complete_the_grid(tmp_path, grid, keep_threads, capsys):
    cache, results = grid
    kept = (cache / checkpoint_name(0)).read_bytes()
    (tmp_path / checkpoint_name(0)).write_bytes(kept)
    main(["grid", "--out", str(tmp_path)], setup=TINY)
    assert (tmp_path / checkpoint_name(0)).read_bytes() == kept  # not re-trained, not rewritten
    assert load_checkpoint(tmp_path / checkpoint_name(1))[1]["seed"] == 1  # the missing one was saved
    assert not (tmp_path / "grid.json").exists()  # the baselines are missing: nothing gathered yet
    assert "not gathered into grid.json yet" in capsys.readouterr().out
    for run in results["runs"]:
        job = Job("uptrain", run["seed"], run["G"], run["method"], run["grouping"])
        written = json.loads((tmp_path / job.file).read_text())
        assert written["evals"] == run["evals"] and written["head_order"] == run["head_order"]
    main(["baselines", "--out", str(tmp_path)], setup=TINY)
    written = json.loads((tmp_path / "grid.json").read_text())
    assert _without_timing(written) == _without_timing(results)


def test_cli_out_naming_a_file_is_a_usage_error(tmp_path, capsys):
    target = tmp_path / "results.txt"
    target.write_text("x")
    with pytest.raises(SystemExit) as info:
        main(["grid", "--out", str(target)], setup=TINY)
    assert info.value.code == 2
    assert f"{target} is a file, not a folder" in capsys.readouterr().err
    assert target.read_text() == "x"


@pytest.mark.parametrize("flag", ["--jobs", "--threads"])
def test_cli_refuses_fewer_than_one_job_or_thread(tmp_path, capsys, flag):
    with pytest.raises(SystemExit) as info:
        main(["grid", "--out", str(tmp_path), flag, "0"], setup=TINY)
    assert info.value.code == 2
    assert flag in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_cli_grid_refuses_a_foreign_checkpoint_before_training(tmp_path, capsys):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / checkpoint_name(0)))
    with pytest.raises(SystemExit) as info:
        main(["grid", "--out", str(tmp_path)], setup=TINY)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert checkpoint_name(0) in err and "'config'" in err
    assert not (tmp_path / checkpoint_name(1)).exists()  # nothing was pre-trained


def test_cli_refuses_a_checkpoint_of_another_model_unless_that_step_replaces_it(tmp_path, capsys, monkeypatch,
                                                                               keep_threads):
    other = TransformerConfig(**{**TINY.model.__dict__, "d_ff": 24})
    save_checkpoint(TransformerLM(other), tmp_path / checkpoint_name(1))
    # grid --overwrite deletes the grid's runs, not the checkpoints: refused too, before any run
    for argv in (["grid"], ["grid", "--overwrite"]):
        with pytest.raises(SystemExit) as info:
            main([*argv, "--out", str(tmp_path)], setup=TINY)
        assert info.value.code == 2
        assert "'pretrain --overwrite'" in capsys.readouterr().err
        assert not (tmp_path / checkpoint_name(0)).exists()
    ran = _record_jobs(monkeypatch)
    main(["pretrain", "--out", str(tmp_path), "--overwrite"], setup=TINY)  # replaces it
    assert ran == ["pretrained_seed0", "pretrained_seed1"]
    assert load_checkpoint(tmp_path / checkpoint_name(1))[0].config == TINY.model


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------


def test_conversion_figure_bars_are_seed_means_with_a_dot_per_seed(grid):
    _, results = grid
    for grouping in ("contiguous", "similar"):
        fig = quality_figures.conversion_figure(results, alphas=(0.0, 0.2), metric="loss", methods=("mean", "first"),
                                                grouping=grouping)
        bars = [t for t in fig.data if t.type == "bar"]
        dots = [t for t in fig.data if t.type == "scatter"]
        assert len(bars) == len(dots) == 4  # 2 methods x 2 panels
        first_right = [b for b in bars if b.name == "first"][1]
        assert list(first_right.x) == ["1 (MQA)", "2"]
        s = seed_stats(results, 2, "first", 0.2, "loss", grouping)
        assert first_right.y[1] == pytest.approx(s["mean"])
        first_dots = [d for d in dots if d.legendgroup == "first"][1]
        assert list(first_dots.x) == ["1 (MQA)", "1 (MQA)", "2", "2"]
        assert list(first_dots.y[2:]) == s["values"]  # every seed drawn
        assert grouping in fig.layout.title.text
    with pytest.raises(ValueError, match="'accuracy'"):
        quality_figures.conversion_figure(results, metric="accuracy")


def test_uptraining_figure_has_a_panel_per_group_with_every_seed_their_mean_and_mha(grid):
    _, results = grid
    fig = quality_figures.uptraining_figure(results, groups=[1, 2], metric="recall_acc", grouping="similar")
    assert len(fig.data) == 2 * (2 + 2)  # per panel: 2 seeds, their mean, MHA
    named = [t.name for t in fig.data if t.name]
    assert named == ["G=1 (MQA), mean", "MHA (G=4), mean", "G=2, mean", "MHA (G=4), mean"]
    seed_lines = fig.data[4:6]  # panel G=2: seeds 0 and 1
    for seed, line in zip((0, 1), seed_lines):
        assert list(line.x) == [0.0, 10.0, 20.0]
        assert list(line.y) == [e["recall_acc"] for e in find_run(results, 2, "mean", seed, "similar")]
    assert fig.data[6].y[1] == pytest.approx(seed_stats(results, 2, "mean", 0.1, grouping="similar")["mean"])
    assert fig.data[3].y[0] == pytest.approx(seed_stats(results, 4, "mean", 0.0)["mean"])


def test_baselines_figure_compares_uptraining_with_training_from_scratch(grid):
    _, results = grid
    fig = quality_figures.baselines_figure(results, metric="loss")
    bars = [t for t in fig.data if t.type == "bar"]
    assert [b.name for b in bars] == ["converted + 20% uptraining", "from scratch, same total compute",
                                      "from scratch, 20% compute only"]
    assert all(list(b.x) == ["G=1 (MQA)"] for b in bars)
    converted = next(e["loss"] for e in find_run(results, 1, "mean", 0) if e["alpha"] == 0.2)
    assert bars[0].y[0] == pytest.approx(converted)
    assert bars[1].y[0] == pytest.approx(find_baseline(results, 1, "matched", 0)["evals"][-1]["loss"])
    assert bars[2].y[0] == pytest.approx(find_baseline(results, 1, "extra", 0)["evals"][-1]["loss"])


def test_training_traces_figure_places_each_bin_at_its_last_step(grid):
    _, results = grid
    trace = find_baseline(results, 1, "matched", 0)["trace"]
    binned = experiments._trace(TrainResult(train_losses=[1.0] * 450, grad_norms=[2.0] * 450))
    fig = quality_figures.training_traces_figure({"scratch": [{**trace, "label": "G=1"}], "binned": [binned]},
                                                 quantity="loss_max", first_step=20)
    assert list(fig.data[0].x) == list(range(21, 45)) and list(fig.data[0].y) == trace["loss_max"]
    assert fig.data[0].name == "G=1"
    assert list(fig.data[1].x)[:2] == [23, 26]  # bins of 3 steps
    with pytest.raises(ValueError, match="quantity"):
        quality_figures.training_traces_figure({"a": [trace]}, quantity="lr")


def test_tradeoff_figure_puts_ours_beside_table1():
    ours = [{"G": g, "n_heads": 8, "ms": ms, "mean": q, "min": q - 0.01, "max": q + 0.02}
            for g, ms, q in [(1, 1.0, 0.5), (2, 1.5, 0.9), (8, 4.0, 0.95)]]
    fig = quality_figures.tradeoff_figure(ours, device="Test CPU")
    assert "Test CPU" in fig.layout.annotations[0].text
    assert list(fig.data[0].x) == [1.0, 1.5, 4.0]
    assert list(fig.data[0].text) == ["1 (MQA)", "2", "8 (MHA)"]
    assert list(fig.data[1].x) == [1.51, 0.24, 0.28]  # MHA-XXL, MQA-XXL, GQA-8-XXL T_infer


def test_paper_figure4_order():
    assert quality_figures.figure4_order() == ["mean", "first", "random"]


def test_broken_grid_file_and_bad_lookups_raise_value_errors(tmp_path, grid):
    _, results = grid
    (tmp_path / "grid.json").write_text("{not json")
    with pytest.raises(ValueError, match="grid.json"):
        load_or_run_grid(TINY, data_dir=tmp_path, cache_dir=None, progress=False)
    (tmp_path / "grid.json").write_text("[]")
    with pytest.raises(ValueError, match="grid.json"):
        load_or_run_grid(TINY, data_dir=tmp_path, cache_dir=None, progress=False)
    with pytest.raises(ValueError, match="'accuracy'"):
        seed_stats(results, 2, "mean", 0.1, metric="accuracy")
    with pytest.raises(ValueError, match="seed"):
        checkpoint_name(1.0)
    with pytest.raises(ValueError, match="cache_dir"):
        load_or_run_grid(TINY, data_dir=None, cache_dir=None, progress=False)


# --------------------------------------------------------------------------------------------
# The committed results (DATA_DIR); each check also runs on the tiny results, so it is never untested
# --------------------------------------------------------------------------------------------


def _check_checkpoints_load_without_pickle(folder, setup, monkeypatch):
    def no_pickle(*args, **kwargs):
        raise AssertionError("a checkpoint was unpickled")

    for name in ("load", "loads"):
        monkeypatch.setattr(pickle, name, no_pickle)
    monkeypatch.setattr(torch, "load", no_pickle)
    for seed in setup.seeds:
        path = folder / checkpoint_name(seed)
        model, meta = load_checkpoint(path)
        assert model.config == setup.model
        assert meta["seed"] == seed
        assert model.num_parameters() == TransformerLM(setup.model).num_parameters()
        with safe_open(str(path), framework="pt") as f:
            assert "lm_head.weight" not in f.keys()  # tied: stored once
            assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F16"}


def _check_grid_matches_setup(folder, setup):
    results = json.loads((folder / "grid.json").read_text())
    assert results["setup"] == json.loads(json.dumps(setup.to_dict()))
    assert len(results["runs"]) == len(jobs_for("grid", setup))
    assert len(results["baselines"]) == len(jobs_for("baselines", setup))
    accs = [e["recall_acc"] for r in results["runs"] + results["baselines"] for e in r["evals"]]
    assert all(0 <= a <= 1 for a in accs)
    return results


def _check_a_point_is_reproducible(folder, setup, results):
    """Seed 0's checkpoint converted to G = H/2 by mean, contiguous, at alpha 0, with one thread as the runs."""
    G = setup.model.n_heads // 2
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model, _ = load_checkpoint(folder / checkpoint_name(0))
        live = evaluate(convert_to_gqa(model, G, "mean", seed=0), setup.make_corpus())
    finally:
        torch.set_num_threads(n)
    stored = find_run(results, G, "mean", 0)[0]
    assert stored["alpha"] == 0.0 and stored["step"] == 0
    assert stored["recall_acc"] == round(live["recall_acc"], 5)
    assert stored["loss"] == round(live["loss"], 5)


def test_shipped_checks_pass_on_the_tiny_results(cli_folder, monkeypatch):
    _check_checkpoints_load_without_pickle(cli_folder, TINY, monkeypatch)
    results = _check_grid_matches_setup(cli_folder, TINY)
    _check_a_point_is_reproducible(cli_folder, TINY, results)


@pytest.mark.skipif(not SHIPPED, reason=NOT_SHIPPED_YET)
def test_committed_checkpoints_load_without_pickle_and_match_the_setup(monkeypatch):
    _check_checkpoints_load_without_pickle(DATA_DIR, SETUP, monkeypatch)


@pytest.mark.skipif(not SHIPPED, reason=NOT_SHIPPED_YET)
def test_committed_grid_matches_the_setup_and_a_point_is_reproducible():
    assert SETUP.model.n_heads // 2 == 4
    results = _check_grid_matches_setup(DATA_DIR, SETUP)
    _check_a_point_is_reproducible(DATA_DIR, SETUP, results)


@pytest.mark.skipif(not SHIPPED, reason=NOT_SHIPPED_YET)
def test_results_ship_as_package_data_so_pip_install_brings_them():
    import fnmatch
    from pathlib import Path

    import tomllib

    root = Path(__file__).resolve().parents[1]
    pyproject = tomllib.loads((root / "pyproject.toml").read_text())
    setuptools = pyproject["tool"]["setuptools"]
    assert "gqa_lib.data.gqa_toy" in setuptools["packages"]
    globs = setuptools["package-data"]["gqa_lib.data.gqa_toy"]
    shipped = sorted(p.name for p in DATA_DIR.iterdir() if p.is_file())
    assert shipped == ["grid.json"] + [checkpoint_name(s) for s in SETUP.seeds]
    assert all(any(fnmatch.fnmatch(name, g) for g in globs) for name in shipped)
    # the per-run files are gathered into grid.json and not committed
    assert "gqa_lib/data/gqa_toy/runs/" in (root / ".gitignore").read_text().splitlines()


def test_benchmark_results_ship_as_package_data_too():
    """gqa_lib/data/benchmarks/*.json (committed GPU results, gqa_lib.speed.bench.reference_results) ship with pip install."""
    import fnmatch
    from pathlib import Path

    import tomllib

    root = Path(__file__).resolve().parents[1]
    pyproject = tomllib.loads((root / "pyproject.toml").read_text())
    setuptools = pyproject["tool"]["setuptools"]
    assert "gqa_lib.data.benchmarks" in setuptools["packages"]
    globs = setuptools["package-data"]["gqa_lib.data.benchmarks"]
    assert "*.json" in globs
    folder = root / "gqa_lib" / "data" / "benchmarks"
    assert (folder / "README.md").exists()  # says how files get there
    assert "python -m gqa_lib.speed.bench sweep --device cuda --json gqa_lib/data/benchmarks/" in (folder / "README.md").read_text()
    results = [p.name for p in folder.iterdir() if p.name != "README.md"]
    assert all(any(fnmatch.fnmatch(name, g) for g in globs) for name in results), results  # every result ships


def test_learned_seeds_look_at_the_checkpoints_only_and_statistics_take_a_seed_subset(grid):
    import copy

    _, results = grid
    fake = copy.deepcopy(results)
    for p in fake["pretraining"]:
        p["final"]["recall_acc"] = {0: experiments.LEARNED_RECALL, 1: 0.2}[p["seed"]]
    assert experiments.learned_seeds(fake) == [0]
    assert experiments.learned_seeds(fake, threshold=0.1) == [0, 1]
    one = seed_stats(results, 1, "mean", 0.0, seeds=[1])
    assert one["values"] == [find_run(results, 1, "mean", 1)[0]["recall_acc"]] and one["std"] == 0.0
    d = experiments.paired_differences(results, 1, 0.0, ("mean", "contiguous"), ("first", "contiguous"), seeds=[0])
    assert d["n"] == 1
    with pytest.raises(KeyError):
        seed_stats(results, 1, "mean", 0.0, seeds=[7])
