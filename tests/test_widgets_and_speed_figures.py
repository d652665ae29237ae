"""The decode explorer, the speed figures and the sweep/model benchmarks (structure, never speed)."""

import json

import pytest

from gqa_lib import PRESETS, bench, kv_cache_bytes
from gqa_lib.speed_figures import decode_sweep_figure, kv_by_group_figure, relative_speed_figure, time_by_group_figure
from gqa_lib.widgets import DecodeExplorer, SizeRefused, measure_decode_per_group

SMALL = PRESETS["Mistral 7B"]


def test_kv_by_group_figure_values_and_highlight():
    fig = kv_by_group_figure(SMALL, [1, 8, 32], seq_len=1024, batch_size=2, picked=8)
    bar = fig.data[0]
    assert list(bar.x) == ["1 (MQA)", "8", "32 (MHA)"]
    assert list(bar.y) == [kv_cache_bytes(32, g, 128, 1024, 2, 2) / 2**30 for g in (1, 8, 32)]
    colours = list(bar.marker.color)
    assert colours[1] != colours[0] and colours[1] != colours[2]  # the picked G stands out


def test_time_by_group_figure_names_device():
    fig = time_by_group_figure({1: 1.0, 4: 2.0, 32: 8.0}, 32, "Test GPU", picked=4)
    assert "Test GPU" in fig.layout.title.text
    assert list(fig.data[0].y) == [1.0, 2.0, 8.0]


def _sweep(device, contexts, scale):
    rows = [{"context": c, "G": g, "ms": scale * c * g / 1000, "kv_bytes": 2 * g * c * 8 * 4}
            for c in contexts for g in (1, 2, 4)]
    return {"benchmark": "sweep", "device": device, "settings": {"batch": 1, "heads": 4, "head_dim": 8}, "rows": rows}


def test_decode_sweep_figure_slider_steps_carry_every_trace():
    cpu, gpu = _sweep("CPU", [128, 256, 512], 1.0), _sweep("GPU", [256, 512, 1024], 0.1)
    fig = decode_sweep_figure([cpu, gpu])
    steps = fig.layout.sliders[0].steps
    assert [s.label for s in steps] == ["128", "256", "512", "1024"]
    for step, context in zip(steps, [128, 256, 512, 1024]):
        ys = step.args[0]["y"]
        assert len(ys) == len(fig.data) == 4  # (time, bytes) per device
        cpu_ms = ys[0]
        if context == 1024:
            assert cpu_ms == [None, None, None]  # CPU did not sweep this context: a gap, not a zero
        else:
            assert cpu_ms == [context * g / 1000 for g in (1, 2, 4)]
    active = steps[fig.layout.sliders[0].active]
    assert list(fig.data[0].y) == active.args[0]["y"][0]  # the first drawn state is the active step
    with pytest.raises(ValueError, match="initial_context=999"):
        decode_sweep_figure([cpu], initial_context=999)


def test_relative_speed_figure_normalises_to_mha():
    fig = relative_speed_figure([{"G": 1, "ms": 1.0}, {"G": 4, "ms": 2.0}, {"G": 4 * 2, "ms": 4.0}], 8, "CPU")
    paper, ours = fig.data
    assert paper.y[-1] == 1.0 and ours.y[-1] == 1.0
    assert list(ours.y) == [0.25, 0.5, 1.0]
    with pytest.raises(ValueError, match="G=8"):
        relative_speed_figure([{"G": 1, "ms": 1.0}], 8, "CPU")


def test_measure_decode_per_group_covers_divisors_and_refuses_huge_sizes():
    ms = measure_decode_per_group(SMALL, batch_size=1, context=256, repeats=1)
    assert sorted(ms) == bench.divisors(32) and all(v > 0 for v in ms.values())
    with pytest.raises(SizeRefused, match="GiB"):
        measure_decode_per_group(SMALL, batch_size=64, context=32768 * 64)
    with pytest.raises(SizeRefused, match="too slow to time live"):
        measure_decode_per_group(SMALL, batch_size=1, context=4096, max_bytes=1000)


def test_explorer_sliders_drive_the_state(monkeypatch):
    calls = []

    def fake_measure(preset, batch_size, context, dtype, device):
        calls.append((preset.name, batch_size, context, dtype))
        return {g: float(g) for g in bench.divisors(preset.n_heads)}

    monkeypatch.setattr("gqa_lib.widgets.measure_decode_per_group", fake_measure)
    ex = DecodeExplorer(preset="Llama 2 7B", G=8, context=1024)
    assert "G=8 of H=32" in ex.message and "4.00x faster than MHA" in ex.message
    panel = ex.widget()
    controls = ex._controls
    controls["G"].value = 4  # only G moves: no new measurement
    assert ex.G == 4 and len(calls) == 1 and "8.00x faster" in ex.message
    controls["context"].value = 4096
    assert len(calls) == 2 and calls[-1][2] == 4096
    controls["preset"].value = "Llama 2 70B"  # H=64: G options follow and G resets to the model's own
    assert ex.G == 8 and tuple(controls["G"].options) == (1, 2, 4, 8, 16, 32, 64)
    assert list(ex.kv_figure.data[0].x)[-1] == "64 (MHA)"
    assert panel is ex.widget()


def test_explorer_shows_refusal_in_the_widget_not_an_exception():
    ex = DecodeExplorer(preset="Llama 2 70B", context=32768, batch_size=64)
    assert ex.message.startswith("Timing refused:") and ex.time_figure is None
    assert ex.kv_figure is not None  # the KV size still shows


@pytest.mark.parametrize("bad,match", [
    (dict(G=3), "G=3"), (dict(context=1000), "context"), (dict(batch_size=3), "batch_size"),
    (dict(preset="GPT-9"), "GPT-9"), (dict(dtype="int8"), "int8"), (dict(colour=1), "colour"),
])
def test_explorer_rejects_bad_settings(monkeypatch, bad, match):
    monkeypatch.setattr("gqa_lib.widgets.measure_decode_per_group", lambda p, *a: {g: 1.0 for g in bench.divisors(p.n_heads)})
    ex = DecodeExplorer()
    with pytest.raises(ValueError, match=match):
        ex.set(**bad)


def test_static_display_shows_snapshot(monkeypatch, capsys):
    monkeypatch.setattr("gqa_lib.widgets.measure_decode_per_group", lambda p, *a: {g: 1.0 for g in bench.divisors(p.n_heads)})
    monkeypatch.setenv("GQA_BOOK_STATIC", "1")
    shown = []
    monkeypatch.setattr("gqa_lib.widgets.show", lambda fig: shown.append(fig))
    ex = DecodeExplorer()
    ex.display()
    assert shown == [ex.kv_figure, ex.time_figure]
    assert ex._controls is None  # no widgets were created on the static page


def test_model_bench_rows_and_bytes():
    rows = bench.bench_model_decode(n_heads=4, d_model=32, n_layers=2, d_ff=64, vocab_size=16, batch_size=2,
                                    context=8, groups=[1, 4], implementations=["grouped", "sdpa"], min_run_time=0.01)
    assert [(r["G"], r["impl"]) for r in rows] == [(1, "grouped"), (1, "sdpa"), (4, "grouped"), (4, "sdpa")]
    for r in rows:
        assert r["kv_bytes"] == kv_cache_bytes(2, r["G"], 8, 8, 2, 4)
        assert r["tokens_per_s"] == pytest.approx(2 / (r["ms"] / 1e3))


def test_decode_step_model_equals_generate_step():
    """The benchmark's step does exactly one cached decoding step."""
    import torch

    from gqa_lib import TransformerConfig

    cfg = TransformerConfig(vocab_size=16, max_seq_len=9, d_model=16, n_layers=1, n_heads=4, n_kv_heads=2, d_ff=32)
    model, cache, step = bench.decode_step_model(cfg, 2, 8, torch.float32, torch.device("cpu"))
    first, second = step(), step()
    assert cache.seq_len == 9 and torch.equal(first, second)  # rewound each time


def test_sweep_cli_json_and_load_results(tmp_path):
    bench.main(["sweep", "--contexts", "8,16", "--heads", "2", "--head-dim", "4", "--batch", "1",
                "--min-run-time", "0.01", "--device", "cpu", "--json", str(tmp_path / "cpu.json")])
    (tmp_path / "notes.json").write_text(json.dumps({"hello": 1}))
    with pytest.raises(ValueError, match="notes.json"):
        bench.load_results(tmp_path)
    (tmp_path / "notes.json").unlink()
    results = bench.load_results(tmp_path, "sweep")
    assert len(results) == 1 and {(r["context"], r["G"]) for r in results[0]["rows"]} == {(8, 1), (8, 2), (16, 1), (16, 2)}
    assert bench.load_results(tmp_path, "model") == []
