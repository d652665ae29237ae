"""The decode explorer, the speed figures and the sweep/model benchmarks (structure, never speed)."""

import dataclasses
import json
import re
import weakref

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from gqa_lib import PRESETS, kv_cache_bytes
from gqa_lib.core.kv_cache import KVCache
from gqa_lib.speed import bench
from gqa_lib.viz.speed_figures import kv_by_group_figure, relative_speed_figure, time_by_group_figure
from gqa_lib.viz.widgets import (
    EXPLORER_MODELS,
    DecodeExplorer,
    PrecomputedExplorer,
    SizeRefused,
    compare_times,
    decode_explorer_data,
    decode_explorer_html,
    measure_decode_per_group,
    measure_explorer_sweeps,
    precomputed_explorer,
)

SMALL = PRESETS["Mistral 7B"]
# Mistral's H=32 and G=8 with a tiny head dim: real divisibility rules, kilobytes of K/V.
TINY = dataclasses.replace(SMALL, name="tiny", head_dim=8)


def _shown_explorer(monkeypatch):
    """(calls, explorer): a Llama 2 7B explorer at G=8, context 1024, its panel built, measuring with a fake."""
    calls = []
    monkeypatch.setattr("gqa_lib.viz.widgets.measure_decode_per_group", _fake_measure(calls))
    ex = DecodeExplorer(preset="Llama 2 7B", G=8, context=1024)
    ex.widget()
    return calls, ex


def _fake_measure(calls=None):
    """A stand-in for measure_decode_per_group: G ms per G, recording (preset, batch, context, dtype, threads)."""
    def fake(preset, batch_size, context, dtype, device, num_threads=None, **_):
        if calls is not None:
            calls.append((preset.name, batch_size, context, dtype, num_threads))
        return {g: float(g) for g in bench.divisors(preset.n_heads)}
    return fake


class LiveTensorBytes(TorchDispatchMode):
    """Peak bytes of tensor storage alive at once among the tensors created while active (CPU, op granularity)."""

    def __init__(self):
        super().__init__()
        self.live, self.now, self.peak = {}, 0, 0

    def _release(self, ptr):
        entry = self.live[ptr]
        entry[1] -= 1
        if entry[1] == 0:
            self.now -= entry[0]
            del self.live[ptr]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.untyped_storage().nbytes():
                storage = t.untyped_storage()
                ptr = storage.data_ptr()
                if ptr not in self.live:
                    self.live[ptr] = [storage.nbytes(), 0]
                    self.now += storage.nbytes()
                    self.peak = max(self.peak, self.now)
                self.live[ptr][1] += 1
                weakref.finalize(t, self._release, ptr)
        return out


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


def _top(axis_range):
    return axis_range[1]


def test_bar_labels_of_the_explorer_figures_are_never_clipped():
    """Labels sit above the bars (outside), drawn past the plot area if need be, with room under the axis top."""
    kv = kv_by_group_figure(SMALL, [1, 8, 32], seq_len=1024, batch_size=2, picked=8)
    time = time_by_group_figure({1: 1.0, 4: 2.0, 32: 8.0}, 32, "Test GPU", picked=4)
    for fig in (kv, time):
        bar = fig.data[0]
        assert bar.textposition == "outside" and bar.cliponaxis is False
        assert fig.layout.yaxis.range[0] == 0 and _top(fig.layout.yaxis.range) >= 1.15 * max(bar.y)


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
    monkeypatch.setattr("gqa_lib.viz.widgets.measure_decode_per_group", _fake_measure(calls))
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
    ex.set(context=512, batch_size=2)  # set from code: the sliders follow
    assert (controls["context"].value, controls["batch_size"].value) == (512, 2)


@pytest.mark.parametrize("ms,ref,expected", [
    (1.0, 4.0, "4.00x faster than MHA"), (2.0, 1.0, "2.00x slower than MHA"), (0.5, 0.25, "2.00x slower than MHA"),
    (1.0, 1.0, "about as fast as MHA"), (1.0, 1.004, "about as fast as MHA"), (1.0, 0.996, "about as fast as MHA"),
])
def test_compare_times_says_slower_never_a_fraction_faster(ms, ref, expected):
    assert compare_times(ms, ref, "MHA") == expected
    with pytest.raises(ValueError, match="positive"):
        compare_times(0.0, 1.0, "MHA")


def test_explorer_status_says_slower_when_a_G_is_slower(monkeypatch):
    """Noise can make a G slower than MHA (or MQA slower than a G): the status line says "slower", not "0.50x faster"."""
    def fake(preset, batch_size, context, dtype, device, num_threads=None, **_):
        return {g: 2.0 if g == 8 else 1.0 for g in bench.divisors(preset.n_heads)}  # G=8 twice MHA's time

    monkeypatch.setattr("gqa_lib.viz.widgets.measure_decode_per_group", fake)
    ex = DecodeExplorer(preset="Llama 2 7B", G=8)
    assert "2.00x slower than MHA" in ex.message and "2.00x slower than MQA" in ex.message
    assert not re.search(r"\b0\.\d+x faster", ex.message)
    ex.set(G=32)  # MHA itself: compared with MQA only
    assert ex.message.startswith("G=32 (MHA) of H=32") and "than MHA" not in ex.message
    assert "about as fast as MQA" in ex.message
    ex.set(G=1)
    assert ex.message.startswith("G=1 (MQA) of H=32") and "about as fast as MHA" in ex.message


def test_explorer_sliders_report_once_when_released(monkeypatch):
    calls, ex = _shown_explorer(monkeypatch)
    c = ex._controls
    for name in ("G", "context", "batch_size"):
        assert c[name].continuous_update is False, name  # no value (and no measurement) while dragging
    n = len(calls)
    c["context"].value = 2048  # the value a release reports
    assert len(calls) == n + 1  # measured once


def test_explorer_set_after_the_panel_is_shown_moves_every_control(monkeypatch):
    calls, ex = _shown_explorer(monkeypatch)
    c = ex._controls
    n = len(calls)
    ex.set(preset="Llama 2 70B", G=16, context=4096, batch_size=4, dtype="bfloat16")
    assert len(calls) == n + 1  # syncing the controls does not re-measure through their observers
    assert (c["preset"].value, c["G"].value, c["context"].value, c["batch_size"].value, c["dtype"].value) == (
        "Llama 2 70B", 16, 4096, 4, "bfloat16")
    assert tuple(c["G"].options) == (1, 2, 4, 8, 16, 32, 64)
    assert (ex.preset, ex.G, ex.context, ex.batch_size, ex.dtype) == ("Llama 2 70B", 16, 4096, 4, "bfloat16")
    assert "G=16 of H=64" in c["status"].value  # the status line follows too
    ex.set(preset="Mistral 7B")  # back to H=32: options shrink, G resets to the model's own
    assert tuple(c["G"].options) == (1, 2, 4, 8, 16, 32) and c["G"].value == ex.G == 8


def test_explorer_shows_refusal_in_the_widget_not_an_exception():
    ex = DecodeExplorer(preset="Llama 2 70B", context=32768, batch_size=64)
    assert ex.message.startswith("Timing refused:") and ex.time_figure is None
    assert ex.kv_figure is not None  # the KV size still shows


@pytest.mark.parametrize("bad,match", [
    (dict(G=3), "G=3"), (dict(context=1000), "context"), (dict(batch_size=3), "batch_size"),
    (dict(preset="GPT-9"), "GPT-9"), (dict(dtype="int8"), "int8"), (dict(colour=1), "colour"),
])
def test_explorer_rejects_bad_settings(monkeypatch, bad, match):
    monkeypatch.setattr("gqa_lib.viz.widgets.measure_decode_per_group", _fake_measure())
    ex = DecodeExplorer()
    with pytest.raises(ValueError, match=match):
        ex.set(**bad)


def _state(ex):
    return (ex.preset, ex.G, ex.context, ex.batch_size, ex.dtype, ex.message)


@pytest.mark.parametrize("bad", [
    dict(context=2048.0), dict(context=True), dict(context=-2048), dict(context="2048"),
    dict(batch_size=True), dict(batch_size=1.0), dict(batch_size=0),
    dict(G=True), dict(G=8.0), dict(G="8"), dict(G=-4),
])
def test_explorer_refuses_non_integer_sizes_and_keeps_the_state(monkeypatch, bad):
    calls = []
    monkeypatch.setattr("gqa_lib.viz.widgets.measure_decode_per_group", _fake_measure(calls))
    ex = DecodeExplorer(preset="Mistral 7B", G=4, context=1024, batch_size=2, dtype="bfloat16")
    before, n_calls = _state(ex), len(calls)
    (field, value), = bad.items()
    with pytest.raises(ValueError, match=rf"{field}\b.*{value!r}".replace("(", r"\(")):
        ex.set(**bad)
    with pytest.raises(ValueError, match=field):  # a good change alongside is not applied either
        ex.set(dtype="float32", **bad)
    assert _state(ex) == before and len(calls) == n_calls  # nothing the reader set is lost, nothing re-timed
    ex.set(context=2048)  # and later calls still work
    assert ex.context == 2048 and ex.G == 4 and calls[-1][1:4] == (2, 2048, "bfloat16")


def test_explorer_G_must_divide_H_and_numpy_integers_are_sizes(monkeypatch):
    monkeypatch.setattr("gqa_lib.viz.widgets.measure_decode_per_group", _fake_measure())
    ex = DecodeExplorer(preset="Mistral 7B")
    for g in (3, 64):
        with pytest.raises(ValueError, match=rf"Mistral 7B: (G={g}.*n_heads=32|n_heads=32.*G={g})"):
            ex.set(G=g)
    assert ex.G == 8
    ex.set(G=np.int64(16), context=np.int32(512), batch_size=np.int64(4))
    assert (ex.G, ex.context, ex.batch_size) == (16, 512, 4)
    assert all(type(v) is int for v in (ex.G, ex.context, ex.batch_size))


@pytest.mark.parametrize("bad,match", [
    (dict(preset=["Mistral 7B"]), r"\['Mistral 7B'\]"), (dict(preset=None), "None"),
    (dict(dtype=["float32"]), r"\['float32'\]"), (dict(dtype=torch.int8), "torch.int8"), (dict(dtype=None), "None"),
    (dict(device="tpu"), "tpu"), (dict(device="meta"), "meta"),
])
def test_explorer_constructor_names_bad_values(monkeypatch, bad, match):
    monkeypatch.setattr("gqa_lib.viz.widgets.measure_decode_per_group", _fake_measure())
    with pytest.raises(ValueError, match=match):
        DecodeExplorer(**bad)


def test_explorer_accepts_a_torch_dtype_and_a_preset_object(monkeypatch):
    monkeypatch.setattr("gqa_lib.viz.widgets.measure_decode_per_group", _fake_measure())
    ex = DecodeExplorer(dtype=torch.bfloat16)
    assert ex.dtype == "bfloat16"  # the name the dtype dropdown shows
    ex.set(preset=PRESETS["Llama 2 70B"])
    assert ex.preset == "Llama 2 70B" and ex.G == 8
    with pytest.raises(ValueError, match="tiny"):
        ex.set(preset=TINY)  # not one of the book's presets: no slider position for it


@pytest.mark.parametrize("kwargs,match", [
    (dict(groups=[64]), r"G=64.*n_heads=32"), (dict(groups=[3]), r"n_heads=32.*G=3"), (dict(groups=[True]), "G.*bool"),
    (dict(groups=[2.0]), r"G.*2\.0"), (dict(groups=[0]), r"G.*0"), (dict(groups=[]), "groups"),
    (dict(groups=8), "groups.*8"),
    (dict(preset="GPT-9"), "GPT-9"), (dict(preset=42), "42"), (dict(dtype="int8"), "int8"),
    (dict(dtype=torch.int8), "torch.int8"), (dict(dtype=["x"]), r"\['x'\]"),
    (dict(batch_size=-1), "batch_size.*-1"), (dict(batch_size=True), "batch_size.*True"),
    (dict(context=0), "context.*0"), (dict(context=2.5), r"context.*2\.5"),
    (dict(repeats=0), "repeats.*0"), (dict(max_bytes=-5), "max_bytes.*-5"),
    (dict(spare_positions=-1), "spare_positions.*-1"), (dict(num_threads=0), "num_threads.*0"),
    (dict(device="tpu"), "tpu"),
])
def test_measure_names_bad_arguments(kwargs, match):
    args = dict(preset=TINY, batch_size=1, context=16, repeats=1) | kwargs
    with pytest.raises(ValueError, match=match):
        measure_decode_per_group(**args)


def test_measure_labels_each_G_with_its_own_head_count(monkeypatch):
    import gqa_lib.viz.widgets as widgets

    seen = []

    def attention(q, k, v, causal):
        seen.append(k.shape[1])
        return widgets_attention(q, k, v, causal=causal)

    widgets_attention = widgets.grouped_attention
    monkeypatch.setattr("gqa_lib.viz.widgets.grouped_attention", attention)
    ms = measure_decode_per_group(TINY, batch_size=1, context=16, groups=[1, 32, 4], repeats=1)
    assert list(ms) == [1, 32, 4] and sorted(set(seen)) == [1, 4, 32]


def test_measure_reads_a_strided_slice_of_a_longer_cache(monkeypatch):
    """As in generate(): K/V are the first `context` positions of a cache allocated for 64 more."""
    import gqa_lib.viz.widgets as widgets

    real, seen = widgets.grouped_attention, {}

    def attention(q, k, v, causal):
        seen[k.shape[1]] = (tuple(k.shape), k.stride(), k.untyped_storage().nbytes(), k.is_contiguous())
        return real(q, k, v, causal=causal)

    monkeypatch.setattr("gqa_lib.viz.widgets.grouped_attention", attention)
    B, H, T, D = 2, TINY.n_heads, 24, TINY.head_dim
    measure_decode_per_group(TINY, batch_size=B, context=T, groups=[1, 8, 32], repeats=1, device="cpu")
    max_len = T + 64
    assert sorted(seen) == [1, 8, 32]
    for g, (shape, stride, storage_bytes, contiguous) in seen.items():
        generate_cache = KVCache(1, B, g, max_len, D)  # what generate() allocates for G heads
        k_read = generate_cache.update(0, torch.zeros(B, g, T, D), torch.zeros(B, g, T, D))[0]
        assert shape == tuple(k_read.shape) == (B, g, T, D)
        assert stride == k_read.stride() and not contiguous  # positions past `context` are skipped
        assert storage_bytes == B * H * max_len * D * 4  # one MHA-sized cache of context + 64 positions
    seen.clear()
    measure_decode_per_group(TINY, batch_size=B, context=T, groups=[32], repeats=1, device="cpu", spare_positions=0)
    assert seen[32][3]  # no spare positions: the whole cache, contiguous


def test_measure_times_on_the_readers_threads_and_labels_them(monkeypatch):
    from gqa_lib.speed.timing import Timing

    threads = []

    def fake_quick_time(fn, repeats=3, num_threads=None):
        fn()
        threads.append(num_threads)
        return Timing(median_s=1e-3, iqr_s=0.0, runs=repeats)

    monkeypatch.setattr("gqa_lib.viz.widgets.quick_time", fake_quick_time)
    measure_decode_per_group(TINY, batch_size=1, context=16, groups=[1, 32], repeats=1, device="cpu")
    assert threads == [torch.get_num_threads()] * 2  # passed explicitly, never the Timer's default of one
    threads.clear()
    measure_decode_per_group(TINY, batch_size=1, context=16, groups=[8], repeats=1, device="cpu", num_threads=1)
    assert threads == [1]

    calls = []
    monkeypatch.setattr("gqa_lib.viz.widgets.measure_decode_per_group", _fake_measure(calls))
    monkeypatch.setattr("gqa_lib.viz.widgets.timing_threads", lambda n=None: 3 if n is None else n)
    ex = DecodeExplorer(preset="Mistral 7B", device="cpu")
    assert calls[-1][-1] == 3 and "3 threads" in ex.time_figure.layout.title.text
    monkeypatch.setattr("gqa_lib.viz.widgets.timing_threads", lambda n=None: 5 if n is None else n)
    ex.set(G=4)  # the reader changed torch's thread count: re-timed on 5 threads and labelled so
    assert calls[-1][-1] == 5 and "5 threads" in ex.time_figure.layout.title.text


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize("impl", ["grouped_attention", "grouped_matmul_attention"])
def test_memory_guard_counts_what_is_allocated_at_once(monkeypatch, dtype, impl):
    """K/V are built in the target dtype (no fp32 copy first): the measured peak stays within the guard's estimate."""
    from gqa_lib.core import attention
    from gqa_lib.viz.widgets import _decode_inputs, _memory_needed, _memory_parts

    torch_dtype = getattr(torch, dtype)
    elem = torch.tensor([], dtype=torch_dtype).element_size()
    B, T = 2, 64
    parts = _memory_parts(TINY, B, T, elem)
    assert _memory_needed(TINY, B, T, elem) == sum(parts.values())
    q, k, v = _decode_inputs(TINY, B, T, torch_dtype, torch.device("cpu"))
    assert k.dtype == v.dtype == q.dtype == torch_dtype
    assert k.nbytes + v.nbytes == parts["k_v"] and q.nbytes <= parts["q"]
    del q, k, v

    monkeypatch.setattr("gqa_lib.viz.widgets.grouped_attention", getattr(attention, impl))
    with LiveTensorBytes() as tracker:
        measure_decode_per_group(TINY, B, T, dtype, "cpu", groups=[1, 8, 32], repeats=1)
    assert parts["k_v"] <= tracker.peak <= sum(parts.values())
    if torch.cuda.is_available():  # the same bound on the CUDA allocator's own peak
        measure_decode_per_group(TINY, B, T, dtype, "cuda", groups=[1, 8, 32], repeats=1)  # cuBLAS workspaces etc.
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        measure_decode_per_group(TINY, B, T, dtype, "cuda", groups=[1, 8, 32], repeats=1)
        torch.cuda.synchronize()
        assert torch.cuda.max_memory_allocated() - start <= sum(parts.values()) + 2**20  # + 512-byte rounding, lse


def test_static_display_shows_a_note_not_dead_sliders(monkeypatch):
    monkeypatch.setattr("gqa_lib.viz.widgets.measure_decode_per_group", _fake_measure())
    monkeypatch.setenv("GQA_BOOK_STATIC", "1")
    shown, displayed = [], []
    monkeypatch.setattr("gqa_lib.viz.widgets.show", lambda fig: shown.append(fig))
    monkeypatch.setattr("IPython.display.display", lambda obj: displayed.append(obj))
    ex = DecodeExplorer()
    ex.display()
    assert shown == [] and len(displayed) == 1 and "Jupyter or Colab" in displayed[0].data
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

    # room for the prompt of 8 and decode_step_model's cache of 64 more positions (as generate() allocates)
    cfg = TransformerConfig(vocab_size=16, max_seq_len=8 + 64, d_model=16, n_layers=1, n_heads=4, n_kv_heads=2, d_ff=32)
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


# -- the precomputed explorer (chapter 5's sliders on the website) ---------------------------------------------


def _explorer_sweep(heads, contexts=(64, 128), batch=1, dtype="float32", head_dim=128, device="test CPU", **extra):
    """A sweep result with distinct made-up times (ms = G + context / 1000) and the right kv_bytes."""
    elem = 4 if dtype == "float32" else 2
    rows = [{"context": c, "G": g, "ms": g + c / 1000, "kv_bytes": 2 * batch * g * c * head_dim * elem}
            for c in contexts for g in bench.divisors(heads)]
    return {"benchmark": "sweep", "device": device, "rows": rows,
            "settings": {"batch": batch, "heads": heads, "head_dim": head_dim, "dtype": dtype}, **extra}


def test_explorer_data_equals_the_presets_formulas_and_the_sweeps_rows():
    sweeps = [_explorer_sweep(32, note="measured when this chapter ran"), _explorer_sweep(28), _explorer_sweep(64),
              _explorer_sweep(32, contexts=(1024,), batch=4, dtype="bfloat16", device="GPU"),  # a reference, H=32
              _explorer_sweep(16, head_dim=256, device="other shape")]  # no explorer model has this shape: ignored
    data = decode_explorer_data(sweeps)
    assert [m["name"] for m in data["models"]] == list(EXPLORER_MODELS)
    for m in data["models"]:
        p = PRESETS[m["name"]]
        assert (m["H"], m["G0"], m["layers"], m["D"]) == (p.n_heads, p.n_kv_heads, p.n_layers, p.head_dim)
        assert m["groups"] == [g for g in range(1, p.n_heads + 1) if p.n_heads % g == 0]
        measured = [s for s in sweeps if s["settings"]["heads"] == p.n_heads and s["settings"]["head_dim"] == p.head_dim]
        assert [e["device"] for e in m["sweeps"]] == [s["device"] for s in measured]
        for entry, sweep in zip(m["sweeps"], measured):
            elem = 4 if sweep["settings"]["dtype"] == "float32" else 2
            B = sweep["settings"]["batch"]
            assert entry["note"] == sweep.get("note", "committed reference sweep")
            assert (entry["batch"], entry["dtype"]) == (B, sweep["settings"]["dtype"])
            assert entry["contexts"] == sorted({r["context"] for r in sweep["rows"]})
            for r in sweep["rows"]:
                c, j = entry["contexts"].index(r["context"]), m["groups"].index(r["G"])
                assert entry["ms"][c][j] == r["ms"]
                # one sequence, every layer, K and V: 2 * layers * G * D * bytes per token
                assert entry["kvSeq"][c][j] == 2 * p.n_layers * r["G"] * p.head_dim * elem * r["context"]
                assert entry["kvStep"][c][j] == r["kv_bytes"]  # what the measured one-layer step reads
    assert len(data["models"][0]["sweeps"]) == 2 and len(data["models"][2]["sweeps"]) == 1


def test_explorer_data_one_sweep_serves_every_model_of_its_shape():
    data = decode_explorer_data([_explorer_sweep(64)], models=["Llama 2 70B", "Llama 3.1 70B", PRESETS["Qwen2.5 72B"]])
    assert [len(m["sweeps"]) for m in data["models"]] == [1, 1, 1]
    assert data["models"][0]["sweeps"][0]["ms"] == data["models"][1]["sweeps"][0]["ms"]


def _without(sweep, context, g):
    sweep["rows"] = [r for r in sweep["rows"] if (r["context"], r["G"]) != (context, g)]
    return sweep


def _with_row(sweep, **row):
    sweep["rows"].append(row)
    return sweep


@pytest.mark.parametrize("sweeps, models, match", [
    ([], EXPLORER_MODELS, "at least one sweep"),
    (None, EXPLORER_MODELS, "list of sweep results"),
    ([_explorer_sweep(32)], EXPLORER_MODELS, "Qwen2.5 7B's shape H=28"),  # a model no sweep measured
    ([_explorer_sweep(32)], ["Llama 9 7B"], "unknown model preset 'Llama 9 7B'"),
    ([_explorer_sweep(32)], "Llama 2 7B", "list of model presets"),
    ([_explorer_sweep(32)], [], "at least one model preset"),
    ([_explorer_sweep(32)], ["Llama 2 7B", "Llama 2 7B"], "more than once"),
    ([_without(_explorer_sweep(32), 128, 8)], ["Llama 2 7B"], r"no time for \(context, G\) \[\(128, 8\)\]"),
    ([_with_row(_explorer_sweep(32), context=64, G=3, ms=1.0)], ["Llama 2 7B"], r"G=\[3\] do not divide H=32"),
    ([_with_row(_explorer_sweep(32), context=64, G=8, ms=1.0)], ["Llama 2 7B"], "two rows for context 64, G=8"),
    ([{**_explorer_sweep(32), "rows": [{**r, "ms": 0.0} for r in _explorer_sweep(32)["rows"]]}], ["Llama 2 7B"], "positive time"),
    ([{**_explorer_sweep(32), "rows": [{**r, "ms": float("nan")} for r in _explorer_sweep(32)["rows"]]}], ["Llama 2 7B"],
     "positive time"),
    ([{**_explorer_sweep(32), "rows": [{"context": 64, "G": 1}]}], ["Llama 2 7B"], "needs context, G and ms"),
    ([{**_explorer_sweep(32), "rows": []}], ["Llama 2 7B"], "has no rows"),
    ([{**_explorer_sweep(32), "rows": [{**r, "kv_bytes": 1} for r in _explorer_sweep(32)["rows"]]}], ["Llama 2 7B"],
     "kv_bytes 1 at context 64, G=1"),
    ([{"device": "x", "rows": []}], ["Llama 2 7B"], "'device', 'settings' and 'rows'"),
    ([{**_explorer_sweep(32), "settings": {"heads": 32}}], ["Llama 2 7B"], "settings need batch, heads"),
    ([_explorer_sweep(32, dtype="float64")], ["Llama 2 7B"], "dtype must be one of"),
    ([{**_explorer_sweep(32), "settings": {**_explorer_sweep(32)["settings"], "batch": 0}}], ["Llama 2 7B"], "batch must be"),
])
def test_explorer_data_refuses_bad_input(sweeps, models, match):
    with pytest.raises(ValueError, match=match):
        decode_explorer_data(sweeps, models)
    with pytest.raises(ValueError, match=match):  # checked when the explorer is made, not when it is displayed
        precomputed_explorer(sweeps, models)


def test_explorer_html_embeds_exactly_the_data_and_draws_into_its_own_div():
    sweeps = [_explorer_sweep(32, device="GPU </script><b>"), _explorer_sweep(28), _explorer_sweep(64)]
    page = decode_explorer_html(sweeps, div_id="ex-1")
    assert page.count('id="ex-1"') == 1 and "getElementById('ex-1')" in page
    start = page.index('<script type="application/json" data-explorer="data">') + len(
        '<script type="application/json" data-explorer="data">')
    embedded = page[start:page.index("</script>", start)]
    assert "</" not in embedded  # a device name cannot end the script element early
    assert json.loads(embedded) == decode_explorer_data(sweeps)
    for name in ("model", "device", "context", "G", "kv-seq", "ms", "ms-model", "plot"):
        assert f'data-explorer="{name}"' in page
    shown = PrecomputedExplorer(sweeps)._repr_mimebundle_()
    assert "gqa-decode-explorer" in shown["text/html"] and "text/plain" in shown
    assert decode_explorer_html(sweeps) != decode_explorer_html(sweeps)  # a fresh div id each time


def test_measure_explorer_sweeps_rows_cover_every_shape_context_and_g():
    tiny28 = dataclasses.replace(PRESETS["Qwen2.5 7B"], name="tiny28", head_dim=8)
    tiny32b = dataclasses.replace(TINY, name="tiny32b")  # TINY's shape: shares its sweep
    sweeps = measure_explorer_sweeps([TINY, tiny28, tiny32b], contexts=[16, 8, 16], batch_size=2, device="cpu",
                                     min_run_time=0.001, rounds=1)
    assert [(s["settings"]["heads"], s["settings"]["head_dim"]) for s in sweeps] == [(32, 8), (28, 8)]
    for s in sweeps:
        H = s["settings"]["heads"]
        assert s["settings"]["batch"] == 2 and s["settings"]["dtype"] == "float32"
        assert s["device"].startswith("CPU (") and s["device"].endswith(", 1 thread)")  # one thread by default
        assert s["note"] == "measured when this chapter ran"
        assert sorted((r["context"], r["G"]) for r in s["rows"]) == [(c, g) for c in (8, 16) for g in bench.divisors(H)]
        for r in s["rows"]:
            assert r["ms"] > 0 and r["kv_bytes"] == 2 * 2 * r["G"] * r["context"] * 8 * 4
    data = decode_explorer_data(sweeps, models=[TINY, tiny28, tiny32b])
    assert [len(m["sweeps"]) for m in data["models"]] == [1, 1, 1]


def test_measure_explorer_sweeps_times_on_the_threads_it_names_and_leaves_the_count(monkeypatch):
    from gqa_lib.speed import timing

    real = timing.time_call
    seen = []

    def spy(fn, min_run_time=0.3, num_threads=None):  # the timer of every sweep call, on the threads it is given
        seen.append(timing.timing_threads(num_threads))
        return real(fn, min_run_time=min_run_time, num_threads=num_threads)

    monkeypatch.setattr(timing, "time_call", spy)
    before = torch.get_num_threads()
    one = measure_explorer_sweeps([TINY], contexts=[8], device="cpu", min_run_time=0.001, rounds=1)
    n_one = len(seen)
    every = measure_explorer_sweeps([TINY], contexts=[8], device="cpu", min_run_time=0.001, rounds=1, num_threads=None)
    assert n_one > 0 and set(seen[:n_one]) == {1} and set(seen[n_one:]) == {before}
    assert torch.get_num_threads() == before
    assert one[0]["device"].endswith(", 1 thread)") and every[0]["device"].endswith(f", {before} threads)") or before == 1


@pytest.mark.parametrize("kwargs, match", [
    (dict(contexts=[]), "at least one context"),
    (dict(contexts=[0]), "context must be"),
    (dict(contexts=5), "list of token counts"),
    (dict(batch_size=0), "batch_size must be"),
    (dict(dtype="int8"), "dtype must be one of"),
    (dict(models=[]), "at least one model preset"),
    (dict(device="meta"), "CPU or a CUDA device"),
    (dict(num_threads=0), "num_threads must be"),
])
def test_measure_explorer_sweeps_refuses_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        measure_explorer_sweeps(**{"models": [TINY], "contexts": [8], "device": "cpu", **kwargs})


def test_measure_explorer_sweeps_refuses_what_does_not_fit(monkeypatch):
    monkeypatch.setattr("gqa_lib.viz.widgets.available_memory_bytes", lambda device: 2**20)
    with pytest.raises(SizeRefused, match="more than half of the"):
        measure_explorer_sweeps(["Llama 2 70B"], contexts=[4096], device="cpu")
