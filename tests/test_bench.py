"""The benchmark code paths (structure and arithmetic, never speed)."""

import json

import pytest
import torch

from gqa_lib.speed import bench


def test_divisors():
    assert bench.divisors(32) == [1, 2, 4, 8, 16, 32]
    assert bench.divisors(12) == [1, 2, 3, 4, 6, 12]
    with pytest.raises(ValueError, match="got 0"):
        bench.divisors(0)


def test_bench_attention_rows_cover_every_g_and_impl():
    rows = bench.bench_attention_decode(batch_size=1, n_heads=4, head_dim=8, context=16, min_run_time=0.01)
    assert [(r["G"], r["impl"]) for r in rows] == [
        (g, impl) for g in (1, 2, 4) for impl in ("grouped", "grouped_matmul", "sdpa", "sdpa_repeat_kv")
    ]
    for r in rows:
        assert r["kv_bytes"] == 2 * 1 * r["G"] * 16 * 8 * 4  # K and V, fp32
        assert r["ms"] > 0 and r["kv_gbps"] == pytest.approx(r["kv_bytes"] / (r["ms"] / 1e3) / 1e9)


def test_bench_attention_rejects_bad_group():
    with pytest.raises(ValueError, match="G=3"):
        bench.bench_attention_decode(n_heads=4, groups=[3])


def test_cli_writes_json(tmp_path, capsys):
    out = tmp_path / "r.json"
    bench.main(["attention", "--batch", "1", "--heads", "2", "--head-dim", "4", "--context", "8",
                "--min-run-time", "0.01", "--device", "cpu", "--json", str(out)])
    data = json.loads(out.read_text())
    assert data["benchmark"] == "attention" and data["device_type"] == "cpu"
    assert {r["G"] for r in data["rows"]} == {1, 2}
    assert data["streaming_read_gbps"] > 0
    printed = capsys.readouterr().out
    assert "streaming-read bandwidth" in printed and "grouped ms" in printed and "fastest SDPA path" in printed


def test_time_interleaved_keeps_best_median_per_key():
    from gqa_lib.speed.timing import time_interleaved

    calls = []
    fns = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    best = time_interleaved(fns, rounds=2, min_run_time=0.001)
    assert set(best) == {"a", "b"} and all(t.median_s > 0 for t in best.values())
    # interleaved: a's runs, then b's, then a's again
    first_b = calls.index("b")
    assert "a" in calls[first_b:]
    with pytest.raises(ValueError, match="rounds must be >= 1; got 0"):
        time_interleaved(fns, rounds=0)


def test_progress_respects_tqdm_disable_env(monkeypatch):
    from gqa_lib.progress import progress

    assert progress([1, 2], "x").disable is False
    assert progress([1, 2], "x", enabled=False).disable is True
    monkeypatch.setenv("TQDM_DISABLE", "1")  # the book's static build sets this
    assert progress([1, 2], "x").disable is True


def test_spare_positions_time_a_strided_slice_and_count_only_the_read_positions():
    rows = bench.bench_attention_decode(batch_size=1, n_heads=4, head_dim=8, context=16, min_run_time=0.01,
                                        implementations=["grouped"], spare_positions=5, rounds=1)
    for r in rows:
        assert r["kv_bytes"] == 2 * 1 * r["G"] * 16 * 8 * 4  # the 16 positions read, not the 21 allocated


def test_causal_prefill_candidates_cover_every_group():
    rows = bench.bench_causal_prefill(batch_size=1, n_heads=4, head_dim=8, length=12, min_run_time=0.01, rounds=1)
    assert {(r["G"], r["impl"]) for r in rows} == {
        (g, impl) for g in (1, 4) for impl in ("sdpa_is_causal", "folded_row_mask", "repeat_kv_is_causal")
    }


@pytest.mark.parametrize("argv", [
    ["attention", "--spare-positions", "-1"],
    ["attention", "--dtype", "float8"],
    ["attention", "--context", "0"],
    ["attention", "--groups", "3"],
    ["prefill-kernels", "--length", "x"],
    ["model", "--groups", "a,b"],
])
def test_cli_bad_arguments_are_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench.main(argv + ["--device", "cpu"])
    assert exit_info.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_cli_refuses_to_overwrite_a_result_without_overwrite(tmp_path, capsys):
    out = tmp_path / "r.json"
    out.write_text("{}")
    with pytest.raises(SystemExit):
        bench.main(["bandwidth", "--device", "cpu", "--json", str(out)])
    assert out.read_text() == "{}"


# -- committed reference results (gqa_lib/data/benchmarks/) --------------------------------------

def _result(benchmark, device):
    return {"benchmark": benchmark, "device": device, "settings": {}, "rows": [{"context": 8, "G": 1, "ms": 1.0}]}


def test_reference_results_with_an_empty_folder_are_an_empty_list(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "reference_folder", lambda: tmp_path)
    (tmp_path / "README.md").write_text("# how files get here\n")  # not a result: ignored
    assert bench.reference_results() == [] and bench.reference_results("sweep") == []
    monkeypatch.setattr(bench, "reference_folder", lambda: tmp_path / "absent")  # no folder at all
    assert bench.reference_results("sweep") == []


def test_reference_results_read_the_shipped_json_through_load_results(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "reference_folder", lambda: tmp_path)
    (tmp_path / "b-gpu.json").write_text(json.dumps(_result("sweep", "GPU B")))
    (tmp_path / "a-gpu.json").write_text(json.dumps(_result("sweep", "GPU A")))
    (tmp_path / "model.json").write_text(json.dumps(_result("model", "GPU A")))
    assert [r["device"] for r in bench.reference_results("sweep")] == ["GPU A", "GPU B"]  # sorted by file name
    assert [r["benchmark"] for r in bench.reference_results()] == ["sweep", "sweep", "model"]
    assert bench.reference_results("sweep") == bench.load_results(tmp_path, "sweep")
    (tmp_path / "notes.json").write_text("{}")
    with pytest.raises(ValueError, match="notes.json"):
        bench.reference_results()


def test_reference_results_from_a_folder_that_is_not_a_path(tmp_path, monkeypatch):
    """gqa_lib imported from a zip: the folder is a Traversable, not a Path; the results read alike."""
    import zipfile

    archive = tmp_path / "lib.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("gqa_lib/data/benchmarks/gpu.json", json.dumps(_result("sweep", "GPU Z")))
        z.writestr("gqa_lib/data/benchmarks/README.md", "# readme\n")
    folder = zipfile.Path(archive, "gqa_lib/data/benchmarks/")
    monkeypatch.setattr(bench, "reference_folder", lambda: folder)
    assert [r["device"] for r in bench.reference_results("sweep")] == ["GPU Z"]


def test_the_shipped_reference_folder_is_the_package_data_folder():
    from pathlib import Path

    folder = bench.reference_folder()
    assert Path(str(folder)) == Path(bench.__file__).resolve().parents[1] / "data" / "benchmarks"
    assert folder.is_dir() and (Path(str(folder)) / "README.md").exists()
    assert isinstance(bench.reference_results(), list)  # whatever is committed parses as results


def test_one_group_at_a_time_when_everything_does_not_fit(monkeypatch):
    """With little free memory, each G is built, timed and freed alone; the rows are the same."""
    built = []
    real = bench._random

    def spy(shape, gen, dtype, device):
        built.append(shape)
        return real(shape, gen, dtype, device)

    monkeypatch.setattr(bench, "_random", spy)
    monkeypatch.setattr(bench, "available_memory_bytes", lambda device: 1)  # nothing fits at once
    rows = bench.bench_attention_decode(batch_size=1, n_heads=4, head_dim=8, context=16, min_run_time=0.01,
                                        implementations=["grouped", "sdpa"], rounds=1)
    assert [(r["G"], r["impl"]) for r in rows] == [(g, i) for g in (1, 2, 4) for i in ("grouped", "sdpa")]
    assert len(built) == 9  # q, k, v for each of the three G
    model_rows = bench.bench_model_decode(n_heads=4, d_model=16, n_layers=1, d_ff=16, vocab_size=8, batch_size=1,
                                          context=8, groups=[1, 4], min_run_time=0.01, rounds=1)
    assert [r["G"] for r in model_rows] == [1, 4]


def test_device_name_counts_cpu_threads_in_words():
    from gqa_lib.speed.timing import device_name

    assert device_name(torch.device("cpu"), 1).endswith(", 1 thread)")
    assert device_name(torch.device("cpu"), 2).endswith(", 2 threads)")


def test_check_timing_claim_retimes_only_when_the_claim_fails():
    from gqa_lib.speed.timing import check_timing_claim

    fresh = iter([{"a": 3.0, "b": 1.0}, {"a": 1.0, "b": 2.0}])
    calls = []

    def retime():
        calls.append(1)
        return next(fresh)

    faster = lambda r: r["a"] < r["b"]  # noqa: E731
    assert check_timing_claim(faster, {"a": 1.0, "b": 2.0}, retime) == {"a": 1.0, "b": 2.0} and not calls
    assert check_timing_claim(faster, {"a": 5.0, "b": 2.0}, retime) == {"a": 1.0, "b": 2.0} and len(calls) == 2


def test_check_timing_claim_fails_with_every_reading_when_the_claim_never_holds():
    from gqa_lib.speed.timing import check_timing_claim

    with pytest.raises(AssertionError, match=r"all 3 measurements: \[1, 2, 3\]"):
        check_timing_claim(lambda r: r > 10, 1, iter([2, 3]).__next__, retries=2)
    with pytest.raises(ValueError, match="retries must be >= 0; got -1"):
        check_timing_claim(lambda r: True, 1, lambda: 1, retries=-1)
