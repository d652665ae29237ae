"""The experiment runner (gqa_lib.experiments) and its figures (gqa_lib.quality_figures), on a tiny setup."""

import json

import pytest
import torch

from gqa_lib import quality_figures
from gqa_lib.convert import convert_to_gqa
from gqa_lib.corpus import CorpusConfig
from gqa_lib import experiments
from gqa_lib.experiments import (
    DATA_DIR,
    ExperimentSetup,
    checkpoint_name,
    find_run,
    grid_table,
    load_checkpoint,
    load_or_pretrain,
    load_or_run_grid,
    main,
    run_point,
    save_checkpoint,
    seed_stats,
)
from gqa_lib.model import TransformerConfig, TransformerLM
from gqa_lib.train import TrainRecipe, evaluate

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
)


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    return cache, load_or_run_grid(TINY, data_dir=None, cache_dir=cache, progress=False)


def test_grid_has_every_run_and_every_alpha(grid):
    _, results = grid
    keys = sorted((r["G"], r["method"], r["seed"]) for r in results["runs"])
    # G = H (the multi-head model itself) is run once per seed, with "mean" (an exact copy)
    expected = sorted([(g, m, s) for s in (0, 1) for g in (1, 2) for m in ("mean", "first")] + [(4, "mean", 0), (4, "mean", 1)])
    assert keys == expected
    for run in results["runs"]:
        assert [e["alpha"] for e in run["evals"]] == [0.0, 0.1, 0.2]
        assert [e["step"] for e in run["evals"]] == [0, 2, 4]
    assert len(grid_table(results)) == len(expected) * 3


def test_grid_alpha0_equals_converting_the_saved_checkpoint_now(grid):
    cache, results = grid
    corpus = TINY.make_corpus()
    model = load_or_pretrain(1, TINY, data_dir=None, cache_dir=cache, corpus=corpus, progress=False)
    for G, method in [(1, "mean"), (2, "first"), (4, "mean")]:
        live = evaluate(convert_to_gqa(model, G, method, seed=1), corpus)
        stored = find_run(results, G, method, 1)[0]
        assert stored["loss"] == pytest.approx(live["loss"], abs=1e-4)
        assert stored["recall_acc"] == pytest.approx(live["recall_acc"], abs=1e-4)


def test_grid_is_cached_and_reloaded_and_a_different_setup_is_refused(grid):
    cache, results = grid
    assert json.loads((cache / "grid.json").read_text())["runs"] == results["runs"]
    again = load_or_run_grid(TINY, data_dir=None, cache_dir=cache, progress=False)
    assert again["runs"] == results["runs"]
    other = ExperimentSetup(**{**TINY.__dict__, "alphas": (0.0, 0.1)})
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
    with pytest.raises(KeyError, match="G=3"):
        seed_stats(results, 3, "mean", 0.0)
    with pytest.raises(KeyError, match="alpha=0.3"):
        seed_stats(results, 2, "mean", 0.3)


def test_conversion_figure_bars_are_seed_means_with_min_max_spread(grid):
    _, results = grid
    fig = quality_figures.conversion_figure(results, alphas=(0.0, 0.2), metric="loss", methods=("mean", "first"))
    bars = [t for t in fig.data if t.type == "bar"]
    assert len(bars) == 4  # 2 methods x 2 panels
    first_right = [b for b in bars if b.name == "first"][1]
    assert list(first_right.x) == ["1 (MQA)", "2"]
    s = seed_stats(results, 2, "first", 0.2, "loss")
    assert first_right.y[1] == pytest.approx(s["mean"])
    assert first_right.error_y.array[1] == pytest.approx(s["max"] - s["mean"])
    assert first_right.error_y.arrayminus[1] == pytest.approx(s["mean"] - s["min"])
    with pytest.raises(ValueError, match="'accuracy'"):
        quality_figures.conversion_figure(results, metric="accuracy")


def test_uptraining_figure_has_a_curve_per_group_and_mha(grid):
    _, results = grid
    fig = quality_figures.uptraining_figure(results, groups=[1, 2], metric="recall_acc")
    assert [t.name for t in fig.data] == ["G=1 (MQA)", "G=2", "MHA (G=4, trained on)"]
    assert list(fig.data[0].x) == [0.0, 10.0, 20.0]
    assert fig.data[2].y[0] == pytest.approx(seed_stats(results, 4, "mean", 0.0)["mean"])


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


def test_cli_refuses_to_overwrite_results(tmp_path, capsys):
    (tmp_path / "grid.json").write_text("{}")
    with pytest.raises(SystemExit):
        main(["grid", "--out", str(tmp_path)])
    assert "refusing to overwrite" in capsys.readouterr().err
    assert (tmp_path / "grid.json").read_text() == "{}"


def test_committed_checkpoints_load_without_pickle_and_match_the_setup():
    from gqa_lib.experiments import SETUP, checkpoint_name

    for seed in SETUP.seeds:
        model, meta = load_checkpoint(DATA_DIR / checkpoint_name(seed))
        assert model.config == SETUP.model
        assert meta["seed"] == seed
        assert sum(p.numel() for p in model.parameters()) < 100_000
    results = json.loads((DATA_DIR / "grid.json").read_text())
    assert results["setup"] == json.loads(json.dumps(SETUP.to_dict()))
    assert torch.tensor([e["recall_acc"] for r in results["runs"] for e in r["evals"]]).le(1).all()


def test_results_ship_as_package_data_so_pip_install_brings_them():
    import fnmatch
    import tomllib
    from pathlib import Path

    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    setuptools = pyproject["tool"]["setuptools"]
    assert "gqa_lib.data.gqa_toy" in setuptools["packages"]
    globs = setuptools["package-data"]["gqa_lib.data.gqa_toy"]
    shipped = sorted(p.name for p in DATA_DIR.iterdir())
    assert shipped == ["grid.json"] + [f"pretrained_seed{s}.safetensors" for s in (0, 1, 2)]
    assert all(any(fnmatch.fnmatch(name, g) for g in globs) for name in shipped)


def test_run_point_labels_each_alpha_as_asked_even_unsorted_or_on_the_same_step():
    # pretrain_steps=20: alpha 0.1 and 0.12 both round to 2 steps; the order is the caller's, not sorted
    setup = ExperimentSetup(**{**TINY.__dict__, "alphas": (0.2, 0.0, 0.12, 0.1)})
    corpus = setup.make_corpus()
    torch.manual_seed(0)
    model = TransformerLM(setup.model)
    evals = run_point(model, corpus, 2, "mean", seed=0, max_alpha=0.2, setup=setup, progress=False)
    assert [e["alpha"] for e in evals] == [0.2, 0.0, 0.12, 0.1]
    assert [e["step"] for e in evals] == [4, 0, 2, 2]
    assert {k: v for k, v in evals[2].items() if k != "alpha"} == {k: v for k, v in evals[3].items() if k != "alpha"}
    live = evaluate(convert_to_gqa(model, 2, "mean", seed=0), corpus)
    assert evals[1]["loss"] == pytest.approx(live["loss"], abs=1e-4)  # alpha 0 is the converted model itself
    assert evals[0]["loss"] != evals[1]["loss"]
    # alphas above max_alpha are left out, the others keep their order
    short = run_point(model, corpus, 2, "mean", seed=0, max_alpha=0.12, setup=setup, progress=False)
    assert [e["alpha"] for e in short] == [0.0, 0.12, 0.1]
    for bad in (float("nan"), -0.1, None):
        with pytest.raises(ValueError, match="max_alpha"):
            run_point(model, corpus, 2, "mean", seed=0, max_alpha=bad, setup=setup, progress=False)


@pytest.mark.parametrize(
    "change, match",
    [
        ({"groups": (1, 3)}, "groups"),
        ({"groups": (1, 1)}, "groups"),
        ({"groups": (0,)}, "groups"),
        ({"methods": ("median",)}, "methods"),
        ({"alphas": ()}, "alphas"),
        ({"alphas": (0.0, float("nan"))}, "alphas"),
        ({"seeds": (0, 0)}, "seeds"),
        ({"seeds": (1.0,)}, "seeds"),
        ({"corpus_seed": -1}, "corpus_seed"),
        ({"recipe": {"batch_size": 4}}, "recipe"),
        ({"model": TransformerConfig(vocab_size=8, max_seq_len=16, d_model=8, n_heads=4, n_kv_heads=4)}, "vocab_size"),
    ],
)
def test_experiment_setup_refuses_bad_fields_naming_them(change, match):
    with pytest.raises(ValueError, match=match):
        ExperimentSetup(**{**TINY.__dict__, **change})


def test_experiment_setup_stores_tuples():
    setup = ExperimentSetup(**{**TINY.__dict__, "seeds": [0, 1], "alphas": [0.0, 0.1, 0.2]})
    assert setup.seeds == (0, 1) and setup.alphas == (0.0, 0.1, 0.2) and setup == TINY


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


def test_save_checkpoint_refuses_metadata_json_cannot_hold(tmp_path):
    with pytest.raises(ValueError, match="metadata"):
        save_checkpoint(TransformerLM(TINY.model), tmp_path / "x.safetensors", metadata={"t": torch.zeros(1)})
    assert not (tmp_path / "x.safetensors").exists()


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


@pytest.fixture
def keep_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_cli_grid_into_an_empty_folder_saves_each_checkpoint_as_soon_as_it_is_trained(
    tmp_path, capsys, monkeypatch, keep_threads
):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(experiments, "run_point", interrupted)  # interrupted after the first pre-training
    with pytest.raises(KeyboardInterrupt):
        main(["grid", "--out", str(tmp_path)], setup=TINY)
    assert "pretrained_seed0.safetensors" in capsys.readouterr().out  # it said what it would pre-train
    model, meta = load_checkpoint(tmp_path / checkpoint_name(0))  # the first one is not lost
    assert model.config == TINY.model and meta["seed"] == 0
    assert not (tmp_path / "grid.json").exists()


def test_cli_grid_keeps_existing_checkpoints_and_matches_the_library(tmp_path, grid, keep_threads):
    cache, results = grid
    kept = (cache / checkpoint_name(0)).read_bytes()
    (tmp_path / checkpoint_name(0)).write_bytes(kept)
    main(["grid", "--out", str(tmp_path)], setup=TINY)
    assert (tmp_path / checkpoint_name(0)).read_bytes() == kept  # not re-trained, not rewritten
    assert load_checkpoint(tmp_path / checkpoint_name(1))[1]["seed"] == 1  # the missing one was saved
    written = json.loads((tmp_path / "grid.json").read_text())
    for a, b in zip(written["runs"], results["runs"], strict=True):
        assert (a["G"], a["method"], a["seed"]) == (b["G"], b["method"], b["seed"])
        assert [e["loss"] for e in a["evals"]] == pytest.approx([e["loss"] for e in b["evals"]], abs=1e-4)


def test_cli_out_naming_a_file_is_a_usage_error(tmp_path, capsys):
    target = tmp_path / "results.txt"
    target.write_text("x")
    with pytest.raises(SystemExit) as info:
        main(["grid", "--out", str(target)], setup=TINY)
    assert info.value.code == 2
    assert f"{target} is a file, not a folder" in capsys.readouterr().err
    assert target.read_text() == "x"


def test_cli_grid_refuses_a_foreign_checkpoint_before_training(tmp_path, capsys):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / checkpoint_name(0)))
    with pytest.raises(SystemExit) as info:
        main(["grid", "--out", str(tmp_path)], setup=TINY)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert checkpoint_name(0) in err and "'config'" in err
    assert not (tmp_path / checkpoint_name(1)).exists()  # nothing was pre-trained


def test_benchmark_results_ship_as_package_data_too():
    """gqa_lib/data/benchmarks/*.json (committed GPU results, gqa_lib.bench.reference_results) ship with pip install."""
    import fnmatch
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    pyproject = tomllib.loads((root / "pyproject.toml").read_text())
    setuptools = pyproject["tool"]["setuptools"]
    assert "gqa_lib.data.benchmarks" in setuptools["packages"]
    globs = setuptools["package-data"]["gqa_lib.data.benchmarks"]
    assert "*.json" in globs
    folder = root / "gqa_lib" / "data" / "benchmarks"
    assert (folder / "README.md").exists()  # says how files get there
    assert "python -m gqa_lib.bench sweep --device cuda --json gqa_lib/data/benchmarks/" in (folder / "README.md").read_text()
    results = [p.name for p in folder.iterdir() if p.name != "README.md"]
    assert all(any(fnmatch.fnmatch(name, g) for g in globs) for name in results), results  # every result ships
